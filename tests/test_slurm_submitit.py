"""The same runs through submitit: its local executor, and its Slurm executor on the dev cluster (a job
array via map_array, the walltime signal checkpointing and requeueing a run that then resumes)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from launcher.run.metrics import read_metrics
from launcher.run.state import RunState, read_state
from launcher.schedulers import get_scheduler
from launcher.schedulers.base import Dependency
from launcher.schedulers.submitit_exec import fresh_folder, record, submit_runs
from launcher.sweep.jobdb import JobDB
from launcher.sweep.plan import build_plan
from launcher.sweep.submit import sync


def plan(tmp_path: Path, cluster: str, *overrides: str):
    p = build_plan([f"cluster={cluster}", f"sweeps_root={tmp_path}", "sweep=tiny", "sweep.name=sub", *overrides])
    return p, p.sweep_dir.resolve()


def test_runs_through_submitits_local_executor(tmp_path):
    p, sweep_dir = plan(tmp_path, "local", "sweep.budgets=[5e9]", "sweep.params=[20000,60000]")
    runs = [(s.name, s.overrides(sweep_dir)) for s in p.runs]
    jobs = submit_runs(runs, fresh_folder(tmp_path / "submitit"), p.cluster, cluster="local", timeout_min=10)
    assert [type(j).__name__ for j in jobs] == ["LocalJob"] * 2
    assert [j.result() for j in jobs] == [0, 0]
    for spec in p.runs:
        assert read_state(spec.run_dir(sweep_dir)).status == "completed"
        assert len(read_metrics(spec.run_dir(sweep_dir) / "metrics.jsonl")) == spec.steps


@pytest.mark.slurm
def test_submitit_slurm_array_and_requeue_on_the_walltime_signal(dev_slurm, tmp_path):
    p, sweep_dir = plan(
        tmp_path, "dev_slurm", "sweep.budgets=[3e10]", "sweep.params=[20000,60000]", "train.checkpoint_every=20"
    )
    runs = [(s.name, s.overrides(sweep_dir)) for s in p.runs]
    jobs = submit_runs(
        runs, fresh_folder(tmp_path / "submitit"), p.cluster, cluster="slurm", timeout_min=10, name="sub"
    )
    array_id = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{array_id}_0", f"{array_id}_1"]
    with JobDB(sweep_dir / "jobdb.sqlite") as db:
        db.add_sweep("sub", p.cluster.name, p.to_json())
        db.add_runs("sub", p.runs, sweep_dir)
        assert record(db, "sub", [s.config_hash for s in p.runs], jobs, "slurm") == array_id
    first = p.runs[0].run_dir(sweep_dir)
    deadline = time.monotonic() + 180
    while ((read_state(first) or RunState()).checkpoint_step or 0) < 20:
        assert time.monotonic() < deadline, "no checkpoint of the first run"
        time.sleep(1)
    dev_slurm.run("scancel", "--signal=USR2", jobs[0].job_id)  # what Slurm sends before the walltime
    assert [j.result() for j in jobs] == [0, 0]
    state = read_state(first)
    assert state.status == "completed" and (state.resumed_from or 0) >= 20
    assert "Requeued" in jobs[0].stderr() or "requeue" in (jobs[0].stdout() or "").lower() + jobs[0].stderr().lower()
    with JobDB(sweep_dir / "jobdb.sqlite") as db:
        sync(db, "sub", sweep_dir, get_scheduler(p.cluster))
        assert {r.state for r in db.runs("sub")} == {"completed"}
        assert [(j.job_id, j.kind, j.state) for j in db.jobs("sub")] == [(array_id, "submitit", "completed")]


@pytest.mark.slurm
def test_submitit_slurm_branch_waits_for_its_trunk(dev_slurm, tmp_path):
    p, sweep_dir = plan(tmp_path, "dev_slurm", "sweep=wsd_tiny", "sweep.params=[20000]", "sweep.tokens=[8192]")
    trunk, branch = sorted(p.runs, key=lambda s: s.role != "trunk")
    assert (trunk.role, branch.role, branch.parent) == ("trunk", "branch", trunk.name)
    folder = fresh_folder(tmp_path / "submitit")
    (first,) = submit_runs([(trunk.name, trunk.overrides(sweep_dir))], folder, p.cluster, timeout_min=10)
    after = Dependency("afterok", (first.job_id,))
    branch_run = [(branch.name, branch.overrides(sweep_dir))]
    (second,) = submit_runs(branch_run, folder, p.cluster, timeout_min=10, dependency=after)
    shown = dev_slurm.run("scontrol", "show", "job", second.job_id).stdout
    assert f"Dependency=afterok:{first.job_id}" in shown
    assert [first.result(), second.result()] == [0, 0]
    assert read_metrics(branch.run_dir(sweep_dir) / "metrics.jsonl")[0]["step"] == branch.fork_step + 1
