"""A real WSD sweep on this machine: the local runner trains a trunk, its branches start from the trunk's
checkpoints once they exist, a trunk killed mid-way resumes, and running the sweep again repeats nothing."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

from rich.console import Console

from launcher.run.metrics import read_metrics
from launcher.run.state import RunState, read_state
from launcher.sweep.jobdb import JobDB
from launcher.sweep.local import run_local_sweep
from launcher.sweep.plan import build_plan

SMALL = ["sweep=wsd_tiny", "sweep.params=[20000]", "sweep.tokens=[8192,65536]", "wandb.mode=disabled"]


def kill_trunk_after_its_first_checkpoint(run_dir: Path, stop: threading.Event, killed: list) -> None:
    """SIGKILL the trunk's rank (no checkpoint on the way out) once it has saved step 8 of its 51."""
    while not stop.is_set():
        state = read_state(run_dir) or RunState()
        if state.status == "running" and state.pid and (state.checkpoint_step or 0) >= 8:
            os.kill(state.pid, signal.SIGKILL)
            killed.append(state.checkpoint_step)
            return
        time.sleep(0.005)


def test_killed_trunk_resumes_and_its_branches_start_from_it(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plan = build_plan([*SMALL, f"sweeps_root={tmp_path}"])
    trunk, short, long = plan.runs
    assert (trunk.role, trunk.steps, short.fork_step, long.fork_step) == ("trunk", 51, 6, 51)
    assert (short.parent, long.parent) == (trunk.name, trunk.name)
    stop, killed = threading.Event(), []
    watcher = threading.Thread(
        target=kill_trunk_after_its_first_checkpoint, args=(trunk.run_dir(plan.sweep_dir), stop, killed)
    )
    watcher.start()
    console = Console(file=io.StringIO(), width=160)
    try:
        end = run_local_sweep(plan, console)
    finally:
        stop.set()
        watcher.join()
    log = console.file.getvalue()
    assert killed and end.exit_code == 0, log[-3000:]
    with JobDB(plan.sweep_dir / "jobdb.sqlite") as db:
        runs = {r.name: r for r in db.runs()}
        attempts = {name: db.attempts(r.config_hash) for name, r in runs.items()}
    assert {r.state for r in runs.values()} == {"completed"}
    assert runs[long.name].parent == trunk.name and runs[long.name].fork_step == 51 and runs[long.name].role == "branch"
    assert len(attempts[trunk.name]) == 2 and attempts[trunk.name][0].state == "failed"  # killed, then retried
    trunk_state = read_state(trunk.run_dir(plan.sweep_dir))
    assert trunk_state.resumed_from == killed[0] and trunk_state.step == 51
    # the long branch forks at the trunk's last step: it can only start after the resumed trunk saved it
    assert attempts[long.name][0].started >= attempts[trunk.name][1].started
    for branch in (short, long):
        records = read_metrics(branch.run_dir(plan.sweep_dir) / "metrics.jsonl")
        assert records[0]["step"] == branch.fork_step + 1 and records[-1]["step"] == branch.steps
        assert records[-1]["flops"] == branch.C  # the full-run equivalent, trunk FLOPs included
        assert len(attempts[branch.name]) == 1
    assert json.loads((plan.sweep_dir / "plan.json").read_text())["node_hours_total"] is None  # no speed known

    again = run_local_sweep(build_plan([*SMALL, f"sweeps_root={tmp_path}"]), Console(file=io.StringIO()))
    assert again.exit_code == 0
    with JobDB(plan.sweep_dir / "jobdb.sqlite") as db:
        assert {r.name: len(db.attempts(r.config_hash)) for r in db.runs()} == {n: len(a) for n, a in attempts.items()}
