"""Loss spikes for real: the test-only hook corrupts the batches of two data steps (every label set to
a byte the tiny LM never sees); the runtime must see the spikes, rewind to the checkpoint before them,
skip the data that led to them and complete; with no rewinds allowed, the run ends as diverged. The
2-rank run also has a rank made slow (a test-only hook): every record must name it as the straggler.
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.policy import ExitCode
from launcher.run.metrics import read_metrics
from launcher.run.spikes import CORRUPT_ENV, SpikeDetector
from launcher.run.stragglers import SLOW_ENV, consistent_straggler

REPO = Path(__file__).resolve().parent.parent
CORRUPT = (16, 17)  # data steps; optimizer step s reads data step s - 1 + data_offset
COMMON = (
    "model=gpt_neox/tiny",
    "train.max_steps=30",
    "train.global_batch_tokens=2048",
    "train.checkpoint_every=5",
    "train.val_every=30",
    "train.val_batches=1",
    "train.spike_window=8",
    "train.spike_patience=2",
    "wandb.mode=disabled",
)


def train(run_dir: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", **{CORRUPT_ENV: ",".join(map(str, CORRUPT))}, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", "train", *COMMON, *overrides, f"run_dir={run_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_detector_bound_streak_and_patience():
    detector = SpikeDetector(window=4, threshold=3.0, patience=2)
    for step, loss in enumerate([2.0, 2.1, 1.9, 2.0]):
        assert detector.observe(step, loss) == (False, False)
    # median 2.0, MAD 0.05: the bound is 2.0 + 3 x 1.4826 x 0.05
    assert detector.bound() == pytest.approx(2.0 + 3 * 1.4826 * 0.05)
    assert detector.observe(4, 9.0) == (True, False)
    assert detector.observe(5, 2.0) == (False, False)  # a good step ends the streak
    assert detector.observe(6, 9.0) == (True, False)
    assert detector.observe(7, 9.0) == (True, True) and detector.streak == [6, 7]
    assert list(detector.history) == [2.1, 1.9, 2.0, 2.0]  # spikes never enter the window


def test_spike_rewinds_skips_the_corrupted_batches_and_completes(tmp_path):
    run_dir = tmp_path / "run"
    result = train(run_dir, "nproc=2", env={SLOW_ENV: "1:0.2"})
    assert result.returncode == ExitCode.COMPLETED, result.stdout + result.stderr
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "completed" and state["step"] == 30
    [rewind] = state["rewinds"]
    # steps 17 and 18 read the corrupted data steps 16 and 17; the checkpoint before them is step 15
    assert (rewind["spikes"], rewind["to_step"], rewind["skipped_data_steps"]) == ([17, 18], 15, [15, 18])

    raw = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in raw if r.get("spike")] == [17]  # logged before the rewind, then superseded
    # the rewind's resume marker follows the last record logged (17; the spike at 18 rewinds unlogged)
    [marker] = [i for i, r in enumerate(raw) if "step" not in r]
    assert raw[marker]["resumed_from"] == 15 and raw[marker - 1]["step"] == 17 and raw[marker + 1]["step"] == 16
    curve = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in curve] == list(range(1, 31))
    read = [r["step"] - 1 + r["data_offset"] for r in curve]
    assert not set(read) & set(CORRUPT) and read[15:] == list(range(18, 33))  # the run goes on past them
    assert not any(r["spike"] for r in curve) and all(math.isfinite(r["train_loss"]) for r in curve)
    assert max(r["train_loss"] for r in curve[10:]) < curve[9]["train_loss"] + 0.5  # no trace of the spike
    # rank 1 sleeps 0.2 s in each forward (the test-only hook): the slowest, by far, in nearly every record
    # (the machine is shared: a record or two may catch rank 0 descheduled), and named as a slow node
    slowest = [r["slowest_rank"] for r in curve]
    assert slowest.count(1) >= 0.9 * len(curve), slowest
    assert statistics.median(r["straggler_ratio"] for r in curve) > 1.5
    assert consistent_straggler(curve).startswith(f"{socket.gethostname()} (rank 1, x")


def test_spikes_past_max_rewinds_end_as_diverged(tmp_path):
    run_dir = tmp_path / "run"
    result = train(run_dir, "train.max_rewinds=0", "train.max_steps=20")
    assert result.returncode == ExitCode.DIVERGED, result.stdout + result.stderr
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "diverged" and state["step"] == 18 and "max_rewinds" in state["message"]
