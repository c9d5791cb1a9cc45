"""Reruns are explicit: `ladder train` on a run_dir that holds another config refuses in one line naming the
fields that differ; the same config resumes (fields outside the run's identity may change); --force-new
moves the old run aside and starts over. Real tiny training, one rank."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from launcher.identity import identity_changes
from launcher.policy import ExitCode
from launcher.run.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
BASE = ("train.max_steps=4", "train.global_batch_tokens=1024", "train.checkpoint_every=2", "wandb.mode=disabled")


def train(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "launcher.cli", "train", *BASE, *extra, f"run_dir={run_dir}"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def test_a_rerun_resumes_refuses_or_starts_over(tmp_path):
    run_dir = tmp_path / "run"
    first = train(run_dir)
    assert first.returncode == ExitCode.COMPLETED, first.stderr
    curve = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in curve] == [1, 2, 3, 4]
    lr = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"]

    # another name, W&B group and cluster field: not the run's identity, so it resumes (already complete)
    same = train(run_dir, "wandb.group=other", "cluster.hang_timeout_s=999")
    assert same.returncode == ExitCode.COMPLETED, same.stderr
    assert json.loads((run_dir / "state.json").read_text())["resumed_from"] == 4
    assert read_metrics(run_dir / "metrics.jsonl") == curve
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["resumed_from"] == 4 and "step" not in last  # the resume marker the runtime writes

    before = files(run_dir)
    changed = train(run_dir, "train.lr=0.002", "train.max_steps=6")
    assert changed.returncode == ExitCode.USAGE
    lines = changed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in changed.stderr, changed.stderr
    assert f"train.lr {lr!r} -> 0.002" in lines[0] and "train.max_steps 4 -> 6" in lines[0]
    assert "--force-new" in lines[0] and "run_dir=" in lines[0]
    assert files(run_dir) == before  # nothing written, nothing extended

    fresh = train(run_dir, "train.lr=0.002", "train.max_steps=6", "--force-new")
    assert fresh.returncode == ExitCode.COMPLETED, fresh.stderr
    (aside,) = tmp_path.glob("run.replaced-*")
    assert files(aside) == {k: v for k, v in before.items() if k != ".ladder.lock"}  # the old run, whole
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"] == 0.002
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "state.json").read_text())["resumed_from"] is None


def test_identity_changes_name_dotted_fields_and_ignore_the_rest():
    old = {"model": {"n_layer": 2, "eps": 1e-5}, "train": {"lr": 1e-3, "steps": [1, 2]}, "seed": 0, "run_dir": "a"}
    new = {"model": {"n_layer": 4, "eps": 1e-5}, "train": {"lr": 1e-3, "steps": (1, 2)}, "seed": 1, "run_dir": "b"}
    new["wandb"] = {"name": "x"}
    assert [(n, a, b) for n, a, b in identity_changes(old, new)] == [("model.n_layer", 2, 4), ("seed", 0, 1)]
    assert [n for n, _, _ in identity_changes(old, {**old, "train": {"lr": 1e-3}})] == ["train.steps"]
