"""`ladder status`: the job database's runs, with the runs' own state.json folded in first."""

from __future__ import annotations

import json
import os
import time

from launcher.cli import main as ladder
from launcher.sweep.jobdb import JobDB
from launcher.sweep.local import record_plan
from launcher.sweep.plan import build_plan
from launcher.sweep.submit import sync


def recorded_sweep(tmp_path):
    plan = build_plan(["sweep=tiny", f"sweeps_root={tmp_path}"])
    with JobDB(plan.sweep_dir / "jobdb.sqlite") as db:
        record_plan(db, plan)
    return plan


def report(run_dir, **state):
    """What `ladder train` leaves in its run directory (the contract in launcher/runtime.py)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "state.json").write_text(json.dumps(state))


def test_status_json_folds_run_states(tmp_path, capsys):
    plan = recorded_sweep(tmp_path)
    first, second = plan.runs[0], plan.runs[1]
    with JobDB(plan.sweep_dir / "jobdb.sqlite") as db:
        db.queue(first.config_hash, "slurm", "4242", array_index=0)
        db.queue(second.config_hash, "slurm", "4243")
    report(
        first.run_dir(plan.sweep_dir),
        status="running",
        step=3,
        total_steps=first.steps,
        exit_code=None,
        job_key="4242_0",
        job_attempt=1,
    )
    report(
        second.run_dir(plan.sweep_dir),
        status="completed",
        step=second.steps,
        total_steps=second.steps,
        exit_code=0,
        job_key="4243",
        job_attempt=1,
    )
    assert ladder(["status", "sweep=tiny", f"sweeps_root={tmp_path}", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sweep"] == "tiny" and data["counts"] == {"running": 1, "completed": 1, "planned": len(plan.runs) - 2}
    runs = {r["name"]: r for r in data["runs"]}
    assert list(runs) == [s.name for s in plan.runs]
    for spec in plan.runs:
        r = runs[spec.name]
        assert {"name", "state", "N", "D", "C", "job_id", "attempts"} <= set(r)
        assert (r["N"], r["D"], r["C"]) == (spec.N, spec.D, spec.C)
    assert (runs[first.name]["state"], runs[first.name]["job_id"], runs[first.name]["attempts"]) == (
        "running",
        "4242",
        1,
    )
    assert (runs[first.name]["step"], runs[first.name]["total_steps"]) == (3, first.steps)
    assert (runs[second.name]["state"], runs[second.name]["job_id"]) == ("completed", "4243")
    assert all(
        r["state"] == "planned" and r["attempts"] == 0 and r["job_id"] is None
        for name, r in runs.items()
        if name not in (first.name, second.name)
    )
    with JobDB(plan.sweep_dir / "jobdb.sqlite") as db:  # the fold was recorded, not only shown
        assert db.run(second.config_hash).state == "completed"


def test_status_table(tmp_path, capsys):
    plan = recorded_sweep(tmp_path)
    assert ladder(["status", "sweep=tiny", f"sweeps_root={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert all(spec.name in out for spec in plan.runs)
    assert f"{len(plan.runs)} planned" in out


def test_status_without_a_database_says_what_to_do(tmp_path, capsys):
    assert ladder(["status", "sweep=tiny", f"sweeps_root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "no job database at" in err and "ladder sweep" in err and len(err.strip().splitlines()) == 1


class Scheduler:
    """The adapter's view of the jobs, as the test sets it (what squeue or bjobs would say)."""

    name = "slurm"

    def __init__(self):
        self.states: dict[str, str] = {}

    def status(self, job_ids):
        return {j: self.states.get(j, "ended") for j in job_ids}


def test_sync_matches_reports_to_attempts_by_their_numbers_not_by_clocks(tmp_path):
    plan = recorded_sweep(tmp_path)
    run = plan.runs[0]
    run_dir = run.run_dir(plan.sweep_dir)
    scheduler = Scheduler()

    def synced(mtime: float, **state) -> str:
        """The run's state after a sync that finds ``state`` in its state.json, the file stamped ``mtime``."""
        report(run_dir, **state)
        os.utime(run_dir / "state.json", (mtime, mtime))
        sync(db, "tiny", plan.sweep_dir, scheduler)
        return db.run(run.config_hash).state

    ahead, behind = time.time() + 3600, 0.0  # a compute node's clock far ahead of the login node's, or behind
    with JobDB(plan.sweep_dir / "jobdb.sqlite") as db:
        db.add_job("tiny", "slurm", "4242", "packed", [run.config_hash])
        db.queue(run.config_hash, "slurm", "4242")
        scheduler.states["4242"] = "running"
        # an earlier job's report is not this attempt's, however new its file looks
        assert synced(ahead, status="completed", exit_code=0, job_key="4000", job_attempt=1) == "queued"
        # the job's own steps' reports count, however old their files look
        assert synced(behind, status="running", job_key="4242", job_attempt=1) == "running"
        assert synced(behind, status="failed", exit_code=1, job_key="4242", job_attempt=1) == "failed"
        assert synced(behind, status="running", job_key="4242", job_attempt=2) == "running"  # retried in the job
        assert [a.state for a in db.attempts(run.config_hash)] == ["failed", "running"]
        # the job ends without a step log: the second step's own report says how the run ended
        scheduler.states["4242"] = "completed"
        assert synced(behind, status="completed", exit_code=0, job_key="4242", job_attempt=2) == "completed"
        assert [a.state for a in db.attempts(run.config_hash)] == ["failed", "completed"]
