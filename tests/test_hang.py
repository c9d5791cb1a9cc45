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

from launcher.run.heartbeat import read_beats
from launcher.run.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S, STEPS, EVERY, STOP_AT = 20, 24, 4, 6


def test_stopped_rank_is_detected_killed_and_retried(tmp_path):
    run_dir = tmp_path / "run"
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
    ]
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
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
