"""The job database: transitions, idempotent planning, state.json folding, and real concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import time

import pytest

from launcher.errors import UserError
from launcher.run.state import RunState
from launcher.sweep.jobdb import TRANSITIONS, JobDB, TransitionError, attempt_step, fold_run_states, reports_on
from launcher.sweep.plan import RunSpec


def spec(i: int, name: str | None = None, digest: str | None = None) -> RunSpec:
    return RunSpec(
        name=name or f"run{i}",
        sweep="s",
        family="gpt_neox",
        model="gpt_neox/tiny",
        shape={"n_layer": 1 + i % 3},
        N=1000 + i,
        N_non_embedding=500 + i,
        D=4096 * (i + 1),
        C=6 * (1000 + i) * 4096 * (i + 1),
        flops_per_token=6000,
        budget=None,
        steps=i + 1,
        global_batch_tokens=4096,
        nodes=1,
        ranks_per_run=1,
        base_overrides=("model=gpt_neox/tiny",),
        config_hash=digest or f"hash{i:04d}",
        est_node_hours=0.01,
    )


@pytest.fixture
def db(tmp_path):
    db = JobDB(tmp_path / "jobdb.sqlite")
    db.add_sweep("s", "local", {"name": "s"})
    yield db
    db.close()


def test_wal_mode_and_schema(db):
    assert db._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"sweeps", "runs", "attempts", "jobs", "events"} <= tables


def test_add_runs_is_idempotent_and_keeps_state(db, tmp_path):
    assert db.add_runs("s", [spec(i) for i in range(5)], tmp_path) == 5
    db.start("run0")
    db.finish("run0", "completed", exit_code=0)
    assert db.add_runs("s", [spec(i) for i in range(7)], tmp_path) == 2  # only the new ones
    runs = db.runs("s")
    assert [r.name for r in runs] == [f"run{i}" for i in range(7)]
    first = db.run("run0")
    assert (first.state, first.attempts, first.exit_code) == ("completed", 1, 0)
    assert first.run_dir == str(tmp_path / "runs" / "run0")
    assert first.overrides == spec(0).overrides(tmp_path)
    assert db.run("hash0001").name == "run1"


def test_renamed_config_replaces_untried_run_but_not_a_tried_one(db, tmp_path):
    db.add_runs("s", [spec(0), spec(1)], tmp_path)
    db.add_runs("s", [spec(0, digest="other0")], tmp_path)  # run0 never tried: replaced
    assert db.run("run0").config_hash == "other0"
    db.start("run1")
    with pytest.raises(UserError, match="run1 was already tried with another config"):
        db.add_runs("s", [spec(1, digest="other1")], tmp_path)
    assert db.run("run1").config_hash == "hash0001"


def test_transitions_are_validated(db, tmp_path):
    db.add_runs("s", [spec(0)], tmp_path)
    with pytest.raises(TransitionError, match="cannot go from planned to completed"):
        db.transition("run0", "completed")
    db.queue("run0", "slurm", "123", array_index=4)
    db.start("run0")  # the queued attempt starts: no new attempt
    assert db.run("run0").attempts == 1
    db.finish("run0", "timed_out", exit_code=75)
    db.queue("run0", "slurm", "124")
    db.start("run0")
    db.finish("run0", "completed", exit_code=0)
    for state in TRANSITIONS:
        if state != "completed":
            with pytest.raises(TransitionError):
                db.transition("run0", state)
    run = db.run("run0")
    assert (run.state, run.attempts, run.job_id) == ("completed", 2, "124")
    attempts = db.attempts("run0")
    assert [(a.job_id, a.array_index, a.state, a.exit_code) for a in attempts] == [
        ("123", 4, "timed_out", 75),
        ("124", None, "completed", 0),
    ]
    assert all(a.started and a.ended and a.ended >= a.started for a in attempts)
    history = [(e["from_state"], e["to_state"]) for e in db.events("run0")]
    assert history == [
        ("planned", "queued"),
        ("queued", "running"),
        ("running", "timed_out"),
        ("timed_out", "queued"),
        ("queued", "running"),
        ("running", "completed"),
    ]


def test_consecutive_failures_count_and_reset(db, tmp_path):
    db.add_runs("s", [spec(0)], tmp_path)
    for _ in range(2):
        db.start("run0")
        db.finish("run0", "failed", exit_code=1)
    assert db.run("run0").consecutive_failures == 2
    db.start("run0")
    db.finish("run0", "timed_out", exit_code=75)
    assert db.run("run0").consecutive_failures == 0


def test_a_hung_attempt_is_a_failure_that_is_retried(db, tmp_path):
    from launcher.policy import LANE_CODES, ExitCode, ending

    assert (ending(ExitCode.HUNG).state, ending(ExitCode.HUNG).retry) == ("hung", True)
    assert "4" not in LANE_CODES["ended"].split("|") + LANE_CODES["refused"].split("|")  # lanes retry it
    db.add_runs("s", [spec(0)], tmp_path)
    db.start("run0")
    db.finish("run0", "failed", exit_code=1)
    db.start("run0")
    db.finish("run0", "hung", exit_code=int(ExitCode.HUNG))
    assert (db.run("run0").state, db.run("run0").consecutive_failures) == ("hung", 2)
    db.start("run0")  # retried from hung
    db.finish("run0", "completed", exit_code=0)
    assert [a.state for a in db.attempts("run0")] == ["failed", "hung", "completed"]


def test_jobs_are_recorded(db, tmp_path):
    db.add_runs("s", [spec(0), spec(1)], tmp_path)
    db.add_job("s", "slurm", "77", "array", ["hash0000", "hash0001"], depends_on="76")
    db.set_job_state("slurm", "77", "running")
    (job,) = db.jobs("s")
    assert (job.job_id, job.kind, job.runs, job.depends_on, job.state) == (
        "77",
        "array",
        ["hash0000", "hash0001"],
        "76",
        "running",
    )


def write_state(run_dir, **state):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "state.json"), "w") as f:
        json.dump(state, f)


def test_fold_run_states(db, tmp_path):
    db.add_runs("s", [spec(i) for i in range(4)], tmp_path)
    for i in range(4):
        db.queue(f"run{i}", "slurm", str(100 + i))
    step = {"job_attempt": 1}  # the first start of each run in its job, as the lane shell numbers it
    write_state(tmp_path / "runs" / "run0", status="running", step=3, job_key="100", **step)
    write_state(tmp_path / "runs" / "run1", status="completed", step=9, exit_code=0, job_key="101", **step)
    write_state(tmp_path / "runs" / "run2", status="requeue", step=5, exit_code=75, job_key="102", **step)
    write_state(tmp_path / "runs" / "run3", status="completed", step=9, exit_code=0)  # no job: not this attempt's
    changes = fold_run_states(db, "s")
    assert sorted(changes) == [
        ("run0", "queued", "running"),
        ("run1", "queued", "completed"),
        ("run2", "queued", "timed_out"),
    ]
    assert [db.run(f"run{i}").state for i in range(4)] == ["running", "completed", "timed_out", "queued"]
    assert db.attempts("run2")[0].exit_code == 75
    assert fold_run_states(db, "s") == []  # nothing new
    # run2 is queued again; its stale state.json (job 102's) must not end it, however new the file looks
    db.queue("run2", "slurm", "200")
    future = time.time() + 3600
    os.utime(tmp_path / "runs" / "run2" / "state.json", (future, future))
    assert fold_run_states(db, "s") == []
    assert db.run("run2").state == "queued"
    # its new job's report counts, however old the file looks (another node's clock)
    write_state(tmp_path / "runs" / "run2", status="running", step=6, job_key="200", **step)
    os.utime(tmp_path / "runs" / "run2" / "state.json", (0, 0))
    assert fold_run_states(db, "s") == [("run2", "queued", "running")]


def test_a_report_belongs_to_its_step_or_a_later_one_of_the_same_job(db, tmp_path):
    db.add_runs("s", [spec(0), spec(1)], tmp_path)
    db.queue("run0", "lsf", "300", array_index=4)
    db.finish("run0", "failed", exit_code=1)
    second = db.start("run0", "lsf", "300", array_index=4)  # the job's lane started the failed step again
    attempts = db.attempts("run0")
    assert attempt_step(attempts, attempts[0]) == ("300_4", 1) and attempt_step(attempts, second) == ("300_4", 2)
    assert reports_on(RunState(job_key="300_4", job_attempt=2), attempts, second)
    assert reports_on(RunState(job_key="300_4", job_attempt=3), attempts, second)  # a later retry's
    assert not reports_on(RunState(job_key="300_4", job_attempt=1), attempts, second)  # the failed step's
    assert not reports_on(RunState(job_key="300", job_attempt=2), attempts, second)  # another job's
    assert not reports_on(RunState(status="completed"), attempts, second)  # written outside a job script
    local = db.start("run1", "local", "local:123")
    assert reports_on(RunState(status="completed"), db.attempts("run1"), local)  # the local runner's own run


def _worker(path: str, worker: int, n_runs: int, iterations: int, results) -> None:
    """Each iteration tries to take a run (a validated read-check-write) and hands it back."""
    db = JobDB(path)
    taken = rejected = 0
    for i in range(iterations):
        key = f"run{(worker + i) % n_runs}"
        try:
            db.start(key, "local", f"w{worker}-{i}")
        except TransitionError:
            rejected += 1
            continue
        taken += 1
        db.finish(key, "timed_out", exit_code=75)
    db.close()
    results.put((taken, rejected))


def test_concurrent_processes_lose_no_update(db, tmp_path):
    n_workers, n_runs, iterations = 4, 3, 200
    db.add_runs("s", [spec(i) for i in range(n_runs)], tmp_path)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(db.path), w, n_runs, iterations, results)) for w in range(n_workers)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    taken = sum(t for t, _ in outcomes)
    assert sum(t + r for t, r in outcomes) == n_workers * iterations
    runs = db.runs("s")
    # every successful take incremented its run's counter exactly once, and wrote exactly one attempt row
    assert sum(r.attempts for r in runs) == taken
    attempts = db.attempts()
    assert len(attempts) == taken
    assert all(a.state == "timed_out" and a.ended is not None for a in attempts)
    for r in runs:
        assert sorted(a.number for a in attempts if a.run == r.config_hash) == list(range(1, r.attempts + 1))
    # a run is never held twice: its attempts never overlap in time
    for r in runs:
        spans = sorted((a.started, a.ended) for a in attempts if a.run == r.config_hash)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
    events = db.events()
    assert sum(1 for e in events if e["to_state"] == "running") == taken


def _hold_write_lock(path: str, locked, seconds: float) -> None:
    db = JobDB(path)
    db._conn.execute("BEGIN IMMEDIATE")
    locked.set()
    time.sleep(seconds)
    db._conn.execute("COMMIT")
    db.close()


def test_writers_wait_for_each_other(tmp_path):
    """A writer finding the lock taken by another process waits (busy_timeout) instead of failing."""
    path = tmp_path / "jobdb.sqlite"
    JobDB(path).close()
    impatient, patient = JobDB(path, busy_timeout_s=0.1), JobDB(path, busy_timeout_s=30)
    ctx = multiprocessing.get_context("spawn")
    locked = ctx.Event()
    holder = ctx.Process(target=_hold_write_lock, args=(str(path), locked, 1.0))
    holder.start()
    assert locked.wait(60)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        impatient.add_sweep("t", "local", {})
    began = time.monotonic()
    patient.add_sweep("t", "local", {})
    assert time.monotonic() - began >= 0.3
    holder.join(60)
    assert impatient.sweep_config("t") == {}


def test_a_database_from_before_wsd_sweeps_gains_the_branch_columns(tmp_path):
    from launcher.sweep import jobdb

    v1 = jobdb._SCHEMA.replace(" role TEXT NOT NULL DEFAULT 'run', parent TEXT, fork_step INTEGER,\n   ", "")
    assert "fork_step" not in v1
    conn = sqlite3.connect(tmp_path / "jobdb.sqlite")
    conn.executescript(v1 + "; PRAGMA user_version = 1;")
    conn.execute("INSERT INTO sweeps (name) VALUES ('old')")
    conn.execute("INSERT INTO runs (config_hash, sweep, name, overrides) VALUES ('h1', 'old', 'r1', '[]')")
    conn.commit()
    conn.close()
    with JobDB(tmp_path / "jobdb.sqlite") as db:
        (run,) = db.runs("old")
        assert (run.name, run.role, run.parent, run.fork_step) == ("r1", "run", None, None)
