"""A hung rank for real: two CPU ranks of ``ladder train nproc=2``, one of them stopped with SIGSTOP.

The supervisor must notice the silent rank within the hang timeout, kill both ranks, record the hang
in state.json and start the run again from its last checkpoint, so that the run still completes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from launcher.policy import ExitCode
from launcher.run.heartbeat import Heartbeat, read_beats
from launcher.run.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S, STEPS, EVERY, STOP_AT = 20, 24, 4, 6


def start_train(run_dir: Path, *overrides: str, output=subprocess.PIPE, env: dict | None = None) -> subprocess.Popen:
    """``ladder train nproc=2`` of a tiny model with a short hang timeout, its output in a pipe (or file);
    ``overrides`` come last and win."""
    command = [
        sys.executable,
        "-m",
        "launcher.cli",
        "train",
        "model=gpt_neox/tiny",
        "nproc=2",
        f"cluster.hang_timeout_s={TIMEOUT_S}",
        f"train.max_steps={STEPS}",
        "train.global_batch_tokens=2048",
        f"train.checkpoint_every={EVERY}",
        f"train.val_every={STEPS}",
        "train.val_batches=1",
        "wandb.mode=disabled",
        f"run_dir={run_dir}",
        *overrides,
    ]
    return subprocess.Popen(
        command,
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})),
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_stopped_rank_is_detected_killed_and_retried(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_train(run_dir)
    deadline = time.monotonic() + 240
    while (beat := read_beats(run_dir).get(1)) is None or beat.step < STOP_AT:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.02)
    os.kill(beat.pid, signal.SIGSTOP)
    stopped_at, stopped_step = time.time(), beat.step
    output = proc.communicate(timeout=300)[0]

    assert proc.returncode == 0, output
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "completed" and state["step"] == STEPS
    [hang] = state["hangs"]
    assert hang["ranks"] == [1] and hang["hosts"] == [socket.gethostname()]
    assert stopped_step <= hang["step"] <= stopped_step + 1  # the beat after the stop may have been on its way
    detected_s = hang["at"] - stopped_at
    # silent for the timeout, no more than a watch interval and a slow poll later (a loaded machine)
    assert TIMEOUT_S < hang["silent_s"] <= TIMEOUT_S + 5 and detected_s <= TIMEOUT_S + 5, (hang, detected_s)
    # retried from the last checkpoint before the hang: at most one checkpoint interval of work is lost
    assert stopped_step - EVERY < state["resumed_from"] <= stopped_step and state["resumed_from"] % EVERY == 0
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, STEPS + 1))
    print(
        f"hang detected {detected_s:.1f} s after SIGSTOP (timeout {TIMEOUT_S} s); retry resumed from step "
        f"{state['resumed_from']} (stopped at {stopped_step}); run ended {state['finished_at'] - stopped_at:.1f} s "
        "after the stop"
    )


def test_a_run_that_hangs_in_every_try_ends_hung_after_max_retries(tmp_path):
    """Rank 1 stopped in each try: the ranks start cluster.max_retries times, no more, and the run ends
    hung (exit 4) with every hang recorded."""
    run_dir, tries, log = tmp_path / "run", 2, tmp_path / "train.log"
    with log.open("w") as out:
        proc = start_train(run_dir, f"cluster.max_retries={tries}", output=out)
    stopped: set[int] = set()
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        beat = read_beats(run_dir).get(1)
        if beat is not None and beat.pid not in stopped:
            os.kill(beat.pid, signal.SIGSTOP)  # the beat names this try's rank 1 (each try clears the beats)
            stopped.add(beat.pid)
        time.sleep(0.05)
    proc.wait(timeout=60)
    output = log.read_text()
    assert proc.returncode == int(ExitCode.HUNG), output
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "hung" and state["exit_code"] == int(ExitCode.HUNG)
    assert len(state["hangs"]) == tries == len(stopped) and all(h["ranks"] == [1] for h in state["hangs"])
    assert output.count("retrying the hung run") == tries - 1


def test_beats_are_written_at_most_every_interval_and_at_milestones(tmp_path):
    beats = Heartbeat(tmp_path, 0, interval_s=3600.0)
    try:
        beats.beat(1)  # the first is written (a rank's resume)
        beats.beat(2)
        assert read_beats(tmp_path)[0].step == 1
        beats.beat(3, milestone=True)  # a checkpoint
        assert read_beats(tmp_path)[0].step == 3
        beats.beat(4)
        assert read_beats(tmp_path)[0].step == 3 and beats.last is not None and beats.last[0] == 4
    finally:
        beats.close()
    every = Heartbeat(tmp_path, 1, interval_s=0.0)
    try:
        for step in (1, 2):
            every.beat(step)
            assert read_beats(tmp_path)[1].step == step
    finally:
        every.close()


def test_the_hang_timeout_must_outlast_two_heartbeat_intervals():
    done = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "train", "cluster.heartbeat_interval_s=15", "cluster.hang_timeout_s=20"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == int(ExitCode.USAGE)
    assert done.stderr.strip().splitlines() == [
        "ladder train: error: cluster.hang_timeout_s: must be at least 2 x cluster.heartbeat_interval_s (15.0 s: a "
        "healthy rank's last beat may be that old), got 20.0"
    ]
