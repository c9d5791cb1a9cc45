"""The compute a sweep spent: a real run killed mid-way and resumed counts the steps it computed twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from launcher.analysis.report import write_report
from launcher.analysis.spent import spent_of
from launcher.numbers import sci
from models import gpt_neox
from models.gpt_neox import GPTNeoXConfig
from test_collect import make_sweep, spec

STEPS, EVERY, BATCH = 60, 5, 4096
TRAIN = [
    "model=gpt_neox/tiny",
    f"train.max_steps={STEPS}",
    f"train.checkpoint_every={EVERY}",
    "train.val_every=20",
    "wandb.mode=disabled",
    "nproc=1",
]


def train(run_dir, kill_after_lines: int | None = None) -> subprocess.CompletedProcess | int:
    argv = [sys.executable, "-m", "launcher.cli", "train", *TRAIN, f"run_dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if kill_after_lines is None:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= kill_after_lines:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # no checkpoint on the way out: a node lost
    return proc.wait()


def test_a_killed_and_resumed_run_counts_its_repeated_steps(tmp_path):
    sweep_dir = make_sweep(tmp_path, "k", [spec("k", "run", 1000, STEPS * BATCH, steps=STEPS)])
    run_dir = sweep_dir / "runs" / "run"
    assert train(run_dir, kill_after_lines=2 * EVERY + 3) == -signal.SIGKILL
    first = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert first == list(range(1, len(first) + 1)) and EVERY < len(first) < STEPS
    done = train(run_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads((run_dir / "state.json").read_text())
    resumed = state["resumed_from"]
    assert resumed is not None and resumed % EVERY == 0 and resumed <= len(first)

    per_token = gpt_neox.flops_per_token(GPTNeoXConfig(vocab_size=256, seq_len=64, n_layer=2, d_model=64, n_heads=4))
    per_step = per_token * BATCH
    s = spent_of(run_dir, "run")
    assert s.attempts == 2
    assert s.useful == STEPS * per_step
    assert s.training == (len(first) + STEPS - resumed) * per_step  # attempt 1's steps, then from the checkpoint
    assert s.recomputed == (len(first) - resumed) * per_step > 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluations = sum(1 for r in records if r.get("val_loss") is not None)
    assert evaluations >= STEPS // 20
    assert s.evaluation == evaluations * 4 * 8 * 64 * per_token / 3  # val_batches x micro-batch x seq_len, forward

    page = write_report(sweep_dir, wandb_mode="disabled").read_text()
    assert f"computed over all 2 attempts: {sci(s.training)} ({sci(s.recomputed)} recomputed by 1 runs" in page
    assert f"<b>total {sci(s.training + s.evaluation)}</b>" in page
    assert "not fine-tuning, inference" in page
    assert (sweep_dir / "plots" / "compute_spent.png").exists()
