"""``ladder train`` for real: two CPU ranks over gloo, ZeRO 0-3, checkpoints, signals, divergence.

Each stage trains the tiny LM for K steps once without interruption (loss falls, every rank ends with
the same parameters, metrics carry the interface keys) and once interrupted at step j < K and resumed:
the resumed curve must be the uninterrupted one. Stages 0 and 1 resume from the uninterrupted run's
own step-j checkpoint (as if it had been killed after logging step K); stage 2 is stopped by SIGTERM
(plain local processes), stage 3 by SIGUSR2 (under mpirun). A one-rank run gets a second signal while
the checkpoint the first asked for is written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import needs_mpi
from launcher.config.run import load_run_config
from launcher.policy import ExitCode
from launcher.run.metrics import read_metrics
from launcher.run.runtime import Schedule, make_family

REPO = Path(__file__).resolve().parent.parent
K, J = 8, 4  # steps of a run; the checkpoint the copied-checkpoint resumes start from
COMMON = (
    "train.max_steps=8",
    "train.global_batch_tokens=2048",
    "train.checkpoint_every=4",
    "train.val_every=4",
    "train.val_batches=2",
    "nproc=2",
    "wandb.mode=disabled",
)
KEYS = {"step", "tokens", "flops", "train_loss", "lr", "tokens_per_s", "mfu", "time"}


def ladder_train(
    run_dir: Path, *overrides: str, stop_with: int | None = None, then: int | None = None, env: dict | None = None
):
    """``ladder train`` as a user runs it; with ``stop_with``, that signal as soon as step 1 is logged, and
    with ``then``, that one as soon as the checkpoint it asked for is being written."""
    command = [sys.executable, "-m", "launcher.cli", "train", *COMMON, *overrides, f"run_dir={run_dir}"]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.Popen(
        command, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if stop_with is not None:
        wait_for(proc, lambda: (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text())
        proc.send_signal(stop_with)
    if then is not None:
        wait_for(proc, (run_dir / "checkpoints").exists, poll_s=0.0005)
        proc.send_signal(then)
    output = proc.communicate(timeout=300)[0]
    return proc.returncode, output


def wait_for(proc: subprocess.Popen, condition, poll_s: float = 0.01) -> None:
    deadline = time.monotonic() + 240
    while not condition():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(poll_s)


def state(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())


def losses(run_dir: Path) -> dict[int, tuple[float, float | None]]:
    return {r["step"]: (r["train_loss"], r.get("val_loss")) for r in read_metrics(run_dir / "metrics.jsonl")}


def check_uninterrupted(run_dir: Path, stage: int, code: int, output: str, peak: float | None = None) -> None:
    assert code == ExitCode.COMPLETED, output
    final = state(run_dir)
    assert (final["status"], final["exit_code"], final["step"], final["checkpoint_step"]) == ("completed", 0, K, K)
    digests = final["param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1], f"ZeRO-{stage}: ranks ended with different parameters"
    run = load_run_config([*COMMON, f"deepspeed=zero{stage}"])
    flops_per_token = make_family(run).flops_per_token()
    schedule = Schedule.make(run.train)
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, K + 1))
    for r in records:
        assert KEYS <= set(r), r
        assert r["tokens"] == 2048 * r["step"] and r["flops"] == flops_per_token * r["tokens"]
        assert r["lr"] == pytest.approx(schedule(r["step"] - 1), rel=1e-6)  # as the optimizer saw it
        assert r["tokens_per_s"] > 0
        assert ("val_loss" in r) == (r["step"] % 4 == 0)
        expected_mfu = None if peak is None else r["tokens_per_s"] * flops_per_token / (peak * 2)
        assert r["mfu"] == pytest.approx(expected_mfu)
    curve = [r["train_loss"] for r in records]
    assert curve[-1] < 0.8 * curve[0], curve
    assert records[-1]["val_loss"] < records[3]["val_loss"]
    assert "rendezvous: interface=default address=127.0.0.1" in output and "world_size=2" in output
    assert "Traceback" not in output


def check_resumed(resumed: Path, reference: Path, from_step: int, code: int, output: str) -> None:
    assert code == ExitCode.COMPLETED, output
    final = state(resumed)
    assert (final["status"], final["resumed_from"], final["step"]) == ("completed", from_step, K)
    want, got = losses(reference), losses(resumed)
    assert sorted(got) == list(range(1, K + 1))
    for step in range(from_step + 1, K + 1):
        assert got[step][0] == pytest.approx(want[step][0], abs=1e-6), (step, got[step], want[step])
        assert (got[step][1] is None) == (want[step][1] is None)
        assert got[step][1] is None or got[step][1] == pytest.approx(want[step][1], abs=1e-6)
    assert final["param_digests"] == state(reference)["param_digests"]


def copy_checkpoint(source: Path, target: Path, step: int) -> None:
    """``target`` as a run killed after logging step K whose last complete checkpoint is ``step``."""
    tag = f"step_{step:08d}"
    (target / "checkpoints").mkdir(parents=True)
    shutil.copytree(source / "checkpoints" / tag, target / "checkpoints" / tag)
    (target / "checkpoints" / "latest").write_text(tag)
    shutil.copy(source / "metrics.jsonl", target / "metrics.jsonl")


@needs_mpi
@pytest.mark.mpi
def test_zero0_trains_logs_mirrors_to_wandb_offline_and_resumes_exactly(tmp_path):
    secret = "0123456789abcdef0123456789abcdef01234567"
    code, output = ladder_train(
        tmp_path / "a",
        "deepspeed=zero0",
        "wandb.mode=offline",
        "cluster.device_peak_flops=1e12",
        env={"WANDB_API_KEY": secret},
    )
    check_uninterrupted(tmp_path / "a", 0, code, output, peak=1e12)
    assert list((tmp_path / "a" / "wandb").glob("offline-run-*/run-*.wandb")), "no offline W&B run"
    for path in (tmp_path / "a").rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), f"API key written to {path}"
    assert (tmp_path / "a" / "config.yaml").read_text().startswith("model:")

    copy_checkpoint(tmp_path / "a", tmp_path / "b", J)
    code, output = ladder_train(tmp_path / "b", "deepspeed=zero0", "cluster.device_peak_flops=1e12")
    check_resumed(tmp_path / "b", tmp_path / "a", J, code, output)
    raw = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    steps = [r.get("step", f"resumed from {r.get('resumed_from')}") for r in raw]
    assert steps == [*range(1, K + 1), f"resumed from {J}", *range(J + 1, K + 1)]  # appended, never truncated


@needs_mpi
@pytest.mark.mpi
def test_zero1_trains_and_resumes_exactly(tmp_path):
    code, output = ladder_train(tmp_path / "a", "deepspeed=zero1")
    check_uninterrupted(tmp_path / "a", 1, code, output)
    copy_checkpoint(tmp_path / "a", tmp_path / "b", J)
    code, output = ladder_train(tmp_path / "b", "deepspeed=zero1")
    check_resumed(tmp_path / "b", tmp_path / "a", J, code, output)


def interrupted_then_resumed(tmp_path: Path, stage: int, sig: int, *overrides: str) -> None:
    code, output = ladder_train(tmp_path / "a", f"deepspeed=zero{stage}", *overrides)
    check_uninterrupted(tmp_path / "a", stage, code, output)

    code, output = ladder_train(tmp_path / "b", f"deepspeed=zero{stage}", *overrides, stop_with=sig)
    assert code == ExitCode.REQUEUE, output
    stopped = state(tmp_path / "b")
    assert (stopped["status"], stopped["exit_code"]) == ("requeue", 75)
    assert 1 <= stopped["step"] < K and stopped["checkpoint_step"] == stopped["step"]
    assert signal.Signals(sig).name in stopped["message"]
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text() == f"step_{stopped['step']:08d}"

    code, output = ladder_train(tmp_path / "b", f"deepspeed=zero{stage}", *overrides)
    check_resumed(tmp_path / "b", tmp_path / "a", stopped["step"], code, output)


def test_zero2_sigterm_on_local_processes_requeues_and_resumes_the_same_curve(tmp_path):
    interrupted_then_resumed(tmp_path, 2, signal.SIGTERM, "cluster.step_launcher=torchrun")


@needs_mpi
@pytest.mark.mpi
def test_zero3_sigusr2_under_mpirun_requeues_and_resumes_the_same_curve(tmp_path):
    interrupted_then_resumed(tmp_path, 3, signal.SIGUSR2)


def test_non_finite_loss_stops_the_run_as_diverged(tmp_path):
    code, output = ladder_train(tmp_path, "train.lr=1e30", "nproc=1")
    assert code == ExitCode.DIVERGED, output
    final = state(tmp_path)
    assert (final["status"], final["exit_code"]) == ("diverged", 3)
    assert final["message"].startswith("non-finite training loss at step")
    assert final["step"] <= K and not (tmp_path / "checkpoints" / "latest").exists()


def test_a_second_signal_while_the_checkpoint_is_written_changes_nothing(tmp_path):
    code, output = ladder_train(
        tmp_path, "nproc=1", "train.checkpoint_every=100", stop_with=signal.SIGUSR2, then=signal.SIGTERM
    )
    assert code == ExitCode.REQUEUE, output
    stopped = state(tmp_path)
    assert (stopped["status"], stopped["exit_code"], stopped["checkpoint_step"]) == ("requeue", 75, stopped["step"])
    assert stopped["message"] == f"stopped at step {stopped['step']} by SIGUSR2"  # the first signal's stop
    assert (tmp_path / "checkpoints" / "latest").read_text() == f"step_{stopped['step']:08d}"

    code, output = ladder_train(tmp_path, "nproc=1", "train.checkpoint_every=100")  # the same config resumes
    assert code == ExitCode.COMPLETED, output
    final = state(tmp_path)
    assert (final["status"], final["resumed_from"], final["step"]) == ("completed", stopped["step"], K)
    assert sorted(losses(tmp_path)) == list(range(1, K + 1))
