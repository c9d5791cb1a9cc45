"""One owner per folder: a second ``ladder train`` on a run_dir and a second ``ladder sweep`` in a sweep
folder are refused in one line before doing any work; a lock left by a dead process is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, tree_progress, wait_while_progressing
from launcher import cli
from launcher.errors import UserError
from launcher.locks import LOCK_FILE, FolderLock
from launcher.policy import ExitCode

ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def one_line_refusal(code: int, err: str, command: str) -> str:
    assert code == ExitCode.USAGE, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ladder {command}: error: ") and "Traceback" not in err
    return lines[0]


def test_a_second_ladder_train_on_one_run_dir_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    overrides = [
        "train.max_steps=100000",
        "train.checkpoint_every=100000",
        "train.val_every=100000",
        f"run_dir={run_dir}",
        "wandb.mode=disabled",
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", "train", *overrides],
        env=ENV,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = run_dir / "metrics.jsonl"
        wait_while_progressing(
            lambda: metrics.exists() and metrics.stat().st_size > 0,
            "the first run to log a step",
            lambda: (first.poll(), tree_progress(tmp_path)),
        )
        assert first.poll() is None, first.stderr.read()
        code = cli.main(["train", *overrides])
        line = one_line_refusal(code, capsys.readouterr().err, "train")
        assert f"run_dir: {run_dir} is in use by pid {first.pid} on {socket.gethostname()}" in line
    finally:
        first.send_signal(signal.SIGTERM)  # checkpoints and exits 75, ready to continue
        assert first.wait(timeout=600) == ExitCode.REQUEUE, first.stderr.read()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one writer: no interleaved curve
    assert (run_dir / LOCK_FILE).read_text() == ""  # released on exit
    with FolderLock(run_dir, "run_dir"):  # and free for the next one
        pass


def test_a_second_ladder_sweep_is_refused_before_calibrating(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep_dir = tmp_path / "sweeps" / "tiny"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom launcher.locks import FolderLock\n"
            "with FolderLock(sys.argv[1], 'sweep'):\n    print('held', flush=True)\n    time.sleep(600)\n",
            str(sweep_dir),
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        code = cli.main(["sweep", "sweep=tiny", f"sweeps_root={tmp_path / 'sweeps'}"])
        line = one_line_refusal(code, capsys.readouterr().err, "sweep")
        assert f"sweep: {sweep_dir} is in use by pid {holder.pid}" in line
        assert [p.name for p in sweep_dir.iterdir()] == [LOCK_FILE]  # no plan, no calibration, no database
        assert not list(Path(tmp_path).glob("**/calibration*"))
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_process_lock_is_stale_and_another_hosts_is_named(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(f"{dead.pid} {socket.gethostname()}\n")
    with FolderLock(tmp_path, "run_dir"):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    (tmp_path / LOCK_FILE).write_text("4242 login07.example.org\n")
    with pytest.raises(UserError, match="in use by pid 4242 on login07.example.org .*delete the lock file"):
        with FolderLock(tmp_path, "run_dir"):
            pass
