"""WSD for real (tiny LM, one CPU rank, fp32): a cooldown branch started from a constant-LR trunk's
checkpoint (train.init_from) trains exactly what an uninterrupted WSD run of its length trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.policy import ExitCode
from launcher.run.checkpoint import tag_dir
from launcher.run.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
BATCH = 2048
COMMON = (
    "train.max_steps=null",
    f"train.global_batch_tokens={BATCH}",
    f"train.warmup_tokens={BATCH}",
    "train.decay_fraction=0.25",
    "train.decay_shape=sqrt",
    "train.checkpoint_every=100",
    "train.val_every=2",
    "train.val_batches=2",
    "train.precision=fp32",
    "nproc=1",
    "wandb.mode=disabled",
)


def train(run_dir: Path, *overrides: str) -> dict[int, dict]:
    command = [sys.executable, "-m", "launcher.cli", "train", *COMMON, *overrides, f"run_dir={run_dir}"]
    done = subprocess.run(
        command, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == ExitCode.COMPLETED, done.stdout + done.stderr
    return {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl")}


def close(a: dict, b: dict) -> None:
    for key in ("train_loss", "val_loss", "lr", "tokens", "flops"):
        assert (key in a) == (key in b), (a, b)
        if key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (key, a, b)


def test_a_branch_from_its_trunk_is_the_uninterrupted_wsd_run(tmp_path):
    whole = train(tmp_path / "whole", f"train.tokens={8 * BATCH}", "train.schedule=wsd")  # cooldown: steps 7, 8
    trunk = train(
        tmp_path / "trunk", f"train.tokens={6 * BATCH}", "train.schedule=constant", "train.checkpoint_steps=[3]"
    )  # to the longest branch point; keeps the shorter one's fork
    assert sorted(trunk) == list(range(1, 7))
    for step in trunk:
        close(trunk[step], whole[step])
    long = train(
        tmp_path / "long",
        f"train.tokens={8 * BATCH}",
        "train.schedule=wsd",
        f"train.init_from={tag_dir(tmp_path / 'trunk', 6)}",
    )
    assert sorted(long) == [7, 8]
    for step in long:
        close(long[step], whole[step])
    state = json.loads((tmp_path / "long" / "state.json").read_text())
    assert (state["status"], state["resumed_from"], state["step"]) == ("completed", 6, 8)
    short = train(
        tmp_path / "short",
        f"train.tokens={4 * BATCH}",
        "train.schedule=wsd",
        f"train.init_from={tag_dir(tmp_path / 'trunk', 3)}",
    )  # the kept fork, not the trunk's latest
    assert sorted(short) == [4] and short[4]["lr"] == pytest.approx(3e-3 * 0.1, rel=1e-6)  # one step, at the floor
    assert short[4]["train_loss"] == pytest.approx(whole[4]["train_loss"], rel=1e-6)  # the same weights before it
    assert short[4]["val_loss"] != whole[4]["val_loss"]  # after its step at the floor, where the long run did not cool


def test_a_missing_trunk_checkpoint_is_one_line(tmp_path):
    command = [
        sys.executable,
        "-m",
        "launcher.cli",
        "train",
        *COMMON,
        f"train.tokens={4 * BATCH}",
        "train.schedule=wsd",
        f"train.init_from={tag_dir(tmp_path / 'trunk', 3)}",
        f"run_dir={tmp_path / 'b'}",
    ]
    done = subprocess.run(
        command, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == ExitCode.USAGE, done.stdout + done.stderr
    assert "train.init_from:" in done.stderr and "is not a complete checkpoint" in done.stderr
