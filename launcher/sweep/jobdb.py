"""The job database: one SQLite file per sweep, the only state shared by the CLI and the jobs.

Several processes write at once (the CLI folding run states, a local runner, jobs reporting their own
state), so the file runs in WAL mode with a busy timeout and every change is one ``BEGIN IMMEDIATE``
transaction: a read-check-write such as a state transition or an attempt counter never loses an update.
WAL needs shared memory, so the writers must be on one host; jobs on compute nodes report through their
``<run_dir>/state.json`` instead, which ``fold_run_states`` folds in from the login node.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from launcher.errors import UserError
from launcher.policy import ACTIVE, RETRIED, STATES
from launcher.run.state import RunState, read_state

if TYPE_CHECKING:
    from launcher.sweep.plan import RunSpec

# Where each state may go next; timed_out means checkpointed and ready to continue.
TRANSITIONS: dict[str, frozenset[str]] = {
    "planned": frozenset({"queued", "running", "cancelled"}),
    "queued": frozenset({"running", "completed", "failed", "hung", "diverged", "timed_out", "cancelled"}),
    "running": frozenset({"completed", "failed", "hung", "diverged", "timed_out", "cancelled"}),
    "timed_out": frozenset({"queued", "running", "cancelled"}),
    "failed": frozenset({"queued", "running", "cancelled"}),
    "hung": frozenset({"queued", "running", "cancelled"}),
    "cancelled": frozenset({"queued", "running"}),
    "completed": frozenset(),
    "diverged": frozenset(),
}

SCHEMA_VERSION = 2
_V2_COLUMNS = ("role TEXT NOT NULL DEFAULT 'run'", "parent TEXT", "fork_step INTEGER")  # WSD trunks and branches
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY, cluster TEXT, config TEXT, created REAL, updated REAL);
CREATE TABLE IF NOT EXISTS runs (
    config_hash TEXT PRIMARY KEY, sweep TEXT NOT NULL REFERENCES sweeps(name), name TEXT NOT NULL,
    family TEXT, N INTEGER, N_non_embedding INTEGER, D INTEGER, C REAL, budget REAL, steps INTEGER,
    run_dir TEXT, overrides TEXT, est_node_hours REAL,
    state TEXT NOT NULL DEFAULT 'planned', job_id TEXT, exit_code INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0, consecutive_failures INTEGER NOT NULL DEFAULT 0,
    created REAL, updated REAL, role TEXT NOT NULL DEFAULT 'run', parent TEXT, fork_step INTEGER,
    UNIQUE (sweep, name));
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run TEXT NOT NULL REFERENCES runs(config_hash), number INTEGER,
    scheduler TEXT, job_id TEXT, array_index INTEGER, submitted REAL, started REAL, ended REAL,
    state TEXT, exit_code INTEGER);
CREATE INDEX IF NOT EXISTS attempts_run ON attempts(run);
CREATE TABLE IF NOT EXISTS jobs (
    scheduler TEXT NOT NULL, job_id TEXT NOT NULL, sweep TEXT, kind TEXT, runs TEXT, depends_on TEXT,
    state TEXT, script TEXT, submitted REAL, updated REAL, PRIMARY KEY (scheduler, job_id));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL, sweep TEXT, run TEXT, kind TEXT,
    from_state TEXT, to_state TEXT, detail TEXT);
CREATE INDEX IF NOT EXISTS events_run ON events(run);
"""


class TransitionError(UserError):
    """A state change the run's current state does not allow (e.g. completed -> running)."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One row of ``runs``: a planned run and where it stands."""

    config_hash: str
    sweep: str
    name: str
    family: str
    N: int
    N_non_embedding: int
    D: int
    C: float
    budget: Optional[float]
    steps: int
    run_dir: str
    overrides: list[str]
    est_node_hours: Optional[float]
    state: str
    job_id: Optional[str]
    exit_code: Optional[int]
    attempts: int
    consecutive_failures: int
    created: float
    updated: float
    role: str = "run"  # run | trunk | branch (a WSD sweep)
    parent: Optional[str] = None  # a branch's trunk, by name
    fork_step: Optional[int] = None  # the trunk step the branch starts from


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One row of ``attempts``: one try of a run inside one scheduler job (or one local process)."""

    id: int
    run: str
    number: int
    scheduler: str
    job_id: Optional[str]
    array_index: Optional[int]
    submitted: float
    started: Optional[float]
    ended: Optional[float]
    state: str
    exit_code: Optional[int]


@dataclasses.dataclass(frozen=True)
class Job:
    """One row of ``jobs``: a scheduler job holding one or more runs."""

    scheduler: str
    job_id: str
    sweep: str
    kind: str
    runs: list[str]
    depends_on: Optional[str]
    state: str
    script: Optional[str]
    submitted: float
    updated: float


class JobDB:
    """A sweep's job database (``<sweep_dir>/jobdb.sqlite``); open one per process."""

    def __init__(self, path: str | os.PathLike, busy_timeout_s: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so the write lock is taken before reading
        self._conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        try:
            self._open(busy_timeout_s)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise UserError(
                f"{self.path}: not a usable job database ({exc}); rebuild it from the runs' own files with "
                f"`ladder status sweep=<the sweep> --rebuild` (it moves this file aside); collect, fit and "
                "report read the runs without it"
            ) from None

    def _open(self, busy_timeout_s: float) -> None:
        """Settings, an integrity check (a truncated or overwritten file is caught here, not mid-command),
        and the tables when the file is new."""
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        verdict = self._conn.execute("PRAGMA quick_check").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(verdict)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; WAL stays consistent
        self._conn.execute("PRAGMA foreign_keys = ON")
        if self._conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            with self._write() as conn:  # the first opener creates the tables; the others find them
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        conn.execute(statement)
                elif version == 1:  # a database from before WSD sweeps: its runs are plain runs
                    for column in _V2_COLUMNS:
                        conn.execute(f"ALTER TABLE runs ADD COLUMN {column}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> JobDB:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the database's write lock from its first read."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # ------------------------------------------------------------------------------------ sweeps, runs

    def add_sweep(self, name: str, cluster: str, config: dict) -> None:
        """Record a sweep (again: its latest resolved config replaces the stored one)."""
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO sweeps (name, cluster, config, created, updated) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET cluster = excluded.cluster, config = excluded.config, "
                "updated = excluded.updated",
                (name, cluster, json.dumps(config, sort_keys=True), now, now),
            )

    def sweep_config(self, name: str) -> Optional[dict]:
        row = self._conn.execute("SELECT config FROM sweeps WHERE name = ?", (name,)).fetchone()
        return json.loads(row["config"]) if row else None

    def add_runs(self, sweep: str, specs: Iterable[RunSpec], sweep_dir: str | os.PathLike) -> int:
        """Record planned runs in one transaction; returns how many were new.

        Idempotent: a run already recorded (same config hash) is kept as it is, with its state and
        attempts. A run whose name is taken by a different config is an error once that name has been
        tried (its run_dir holds another config's checkpoints); an untried one is replaced.
        """
        now = time.time()
        rows = [
            (
                s.config_hash,
                sweep,
                s.name,
                s.family,
                s.N,
                s.N_non_embedding,
                s.D,
                float(s.C),
                None if s.budget is None else float(s.budget),
                s.steps,
                str(s.run_dir(sweep_dir)),
                json.dumps(s.overrides(sweep_dir)),
                s.est_node_hours,
                now,
                now,
                s.role,
                s.parent,
                s.fork_step,
            )
            for s in specs
        ]
        with self._write() as conn:
            stale = []
            for row in rows:
                old = conn.execute(
                    "SELECT config_hash, attempts FROM runs WHERE sweep = ? AND name = ?", (sweep, row[2])
                ).fetchone()
                if old is None or old[0] == row[0]:
                    continue
                if old[1]:
                    raise UserError(
                        f"sweep {sweep}: run {row[2]} was already tried with another config "
                        f"(hash {old[0]}); use a new sweep name (sweep.name=...) for the changed sweep"
                    )
                stale.append((old[0],))
            conn.executemany("DELETE FROM runs WHERE config_hash = ?", stale)
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO runs (config_hash, sweep, name, family, N, N_non_embedding, D, C, budget, "
                "steps, run_dir, overrides, est_node_hours, created, updated, role, parent, fork_step) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            added = conn.total_changes - before
            if added:
                conn.execute(
                    "INSERT INTO events (time, sweep, kind, detail) VALUES (?, ?, 'planned', ?)",
                    (now, sweep, f"{added} runs added"),
                )
        return added

    def runs(self, sweep: Optional[str] = None, states: Optional[Iterable[str]] = None) -> list[RunRecord]:
        """Runs in plan order (insertion), optionally of one sweep and in some states."""
        return [_run_record(r) for r in self._select("runs", sweep, states, "rowid")]

    def run(self, key: str) -> RunRecord:
        """A run by config hash or by name."""
        return _run_record(self._row(self._conn, key))

    def _row(self, conn: sqlite3.Connection, key: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM runs WHERE config_hash = ?", (key,)).fetchone()
        if row is None:
            rows = conn.execute("SELECT * FROM runs WHERE name = ?", (key,)).fetchall()
            if len(rows) > 1:
                raise UserError(f"run {key!r}: the name is in several sweeps; use its config hash")
            row = rows[0] if rows else None
        if row is None:
            raise UserError(f"run {key!r}: no such run (give a run name or config hash)")
        return row

    # ----------------------------------------------------------------------------------- transitions

    def transition(
        self, key: str, state: str, *, detail: Optional[str] = None, exit_code: Optional[int] = None
    ) -> RunRecord:
        """Move a run to ``state`` if its current state allows it (same state: nothing changes).

        An open attempt ends with it when the new state is not an active one.
        """
        with self._write() as conn:
            self._transition(conn, self._row(conn, key), state, detail=detail, exit_code=exit_code)
        return self.run(key)

    def queue(self, key: str, scheduler: str, job_id: str, array_index: Optional[int] = None) -> Attempt:
        """The run was handed to scheduler job ``job_id``: a new attempt, state queued."""
        return self._new_attempt(key, "queued", scheduler, job_id, array_index)

    def start(
        self, key: str, scheduler: str = "local", job_id: Optional[str] = None, array_index: Optional[int] = None
    ) -> Attempt:
        """The run started: its queued attempt starts, or (local runs) a new attempt starts running."""
        with self._write() as conn:
            row = self._row(conn, key)
            attempt = self._open_attempt(conn, row["config_hash"]) if row["state"] == "queued" else None
            if attempt is not None:
                self._transition(conn, row, "running")
                conn.execute(
                    "UPDATE attempts SET started = ?, state = 'running' WHERE id = ?", (time.time(), attempt["id"])
                )
                return _attempt(conn.execute("SELECT * FROM attempts WHERE id = ?", (attempt["id"],)).fetchone())
        return self._new_attempt(key, "running", scheduler, job_id, array_index)

    def finish(self, key: str, state: str, exit_code: Optional[int] = None, detail: Optional[str] = None) -> RunRecord:
        """The run's attempt ended in ``state`` (completed, failed, diverged, timed_out, cancelled)."""
        if state in ACTIVE or state == "planned":
            raise ValueError(f"finish: {state!r} is not an end state")
        return self.transition(key, state, exit_code=exit_code, detail=detail)

    def _new_attempt(
        self, key: str, state: str, scheduler: str, job_id: Optional[str], array_index: Optional[int]
    ) -> Attempt:
        with self._write() as conn:
            now = time.time()  # taken under the lock: attempts of one run never overlap in time
            row = self._row(conn, key)
            self._transition(conn, row, state, job_id=job_id, new_attempt=True)
            number = row["attempts"] + 1
            conn.execute("UPDATE runs SET attempts = ? WHERE config_hash = ?", (number, row["config_hash"]))
            cursor = conn.execute(
                "INSERT INTO attempts (run, number, scheduler, job_id, array_index, submitted, started, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row["config_hash"],
                    number,
                    scheduler,
                    job_id,
                    array_index,
                    now,
                    now if state == "running" else None,
                    state,
                ),
            )
            return _attempt(conn.execute("SELECT * FROM attempts WHERE id = ?", (cursor.lastrowid,)).fetchone())

    def _transition(
        self,
        conn: sqlite3.Connection,
        row: sqlite3.Row,
        state: str,
        *,
        detail: Optional[str] = None,
        exit_code: Optional[int] = None,
        job_id: Optional[str] = None,
        new_attempt: bool = False,
    ) -> None:
        old = row["state"]
        if state not in STATES:
            raise ValueError(f"unknown run state {state!r}; allowed: {', '.join(STATES)}")
        if state == old and not new_attempt:
            return
        if state not in TRANSITIONS[old]:
            raise TransitionError(f"run {row['name']}: cannot go from {old} to {state}")
        now = time.time()
        failures = row["consecutive_failures"]
        if state in RETRIED:  # failed or hung
            failures += 1
        elif state in ("completed", "timed_out"):  # progress was made: the failure streak ends
            failures = 0
        conn.execute(
            "UPDATE runs SET state = ?, exit_code = ?, consecutive_failures = ?, updated = ?, "
            "job_id = COALESCE(?, job_id) WHERE config_hash = ?",
            (state, exit_code if state not in ACTIVE else None, failures, now, job_id, row["config_hash"]),
        )
        if state not in ACTIVE:
            conn.execute(
                "UPDATE attempts SET state = ?, ended = ?, exit_code = ? WHERE run = ? AND ended IS NULL",
                (state, now, exit_code, row["config_hash"]),
            )
        conn.execute(
            "INSERT INTO events (time, sweep, run, kind, from_state, to_state, detail) "
            "VALUES (?, ?, ?, 'transition', ?, ?, ?)",
            (now, row["sweep"], row["config_hash"], old, state, detail),
        )

    @staticmethod
    def _open_attempt(conn: sqlite3.Connection, run_hash: str) -> sqlite3.Row:
        return conn.execute(
            "SELECT * FROM attempts WHERE run = ? AND ended IS NULL ORDER BY id DESC LIMIT 1", (run_hash,)
        ).fetchone()

    def attempts(self, key: Optional[str] = None) -> list[Attempt]:
        """Attempts of one run (hash or name), or of every run, oldest first."""
        if key is None:
            rows = self._conn.execute("SELECT * FROM attempts ORDER BY id")
        else:
            rows = self._conn.execute(
                "SELECT * FROM attempts WHERE run = ? ORDER BY id", (self._row(self._conn, key)["config_hash"],)
            )
        return [_attempt(r) for r in rows]

    def open_attempt(self, key: str) -> Optional[Attempt]:
        row = self._open_attempt(self._conn, self._row(self._conn, key)["config_hash"])
        return _attempt(row) if row else None

    # ------------------------------------------------------------------------------------------ jobs

    def add_job(
        self,
        sweep: str,
        scheduler: str,
        job_id: str,
        kind: str,
        runs: Iterable[str],
        depends_on: Optional[str] = None,
        script: Optional[str] = None,
    ) -> None:
        """Record a submitted scheduler job and the runs (config hashes) it holds."""
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO jobs (scheduler, job_id, sweep, kind, runs, depends_on, state, script, submitted, "
                "updated) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?) ON CONFLICT (scheduler, job_id) DO UPDATE "
                "SET runs = excluded.runs, depends_on = excluded.depends_on, updated = excluded.updated",
                (scheduler, str(job_id), sweep, kind, json.dumps(list(runs)), depends_on, script, now, now),
            )
            conn.execute(
                "INSERT INTO events (time, sweep, kind, detail) VALUES (?, ?, 'job', ?)",
                (now, sweep, f"{scheduler} job {job_id} ({kind}) submitted"),
            )

    def set_job_state(self, scheduler: str, job_id: str, state: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET state = ?, updated = ? WHERE scheduler = ? AND job_id = ?",
                (state, time.time(), scheduler, str(job_id)),
            )

    def jobs(self, sweep: Optional[str] = None, states: Optional[Iterable[str]] = None) -> list[Job]:
        return [
            Job(**{**dict(r), "runs": json.loads(r["runs"] or "[]")})
            for r in self._select("jobs", sweep, states, "submitted")
        ]

    def _select(self, table: str, sweep: Optional[str], states: Optional[Iterable[str]], order: str):
        """Rows of ``table`` (a name from this module, never from a user), optionally of one sweep and states."""
        query, args = f"SELECT * FROM {table} WHERE 1", []
        if sweep is not None:
            query += " AND sweep = ?"
            args.append(sweep)
        if states is not None:
            states = list(states)
            query += f" AND state IN ({','.join('?' * len(states))})"
            args += states
        return self._conn.execute(f"{query} ORDER BY {order}", args)

    def events(self, key: Optional[str] = None) -> list[dict]:
        """The history: every transition, plan and job event, oldest first."""
        if key is None:
            rows = self._conn.execute("SELECT * FROM events ORDER BY id")
        else:
            rows = self._conn.execute(
                "SELECT * FROM events WHERE run = ? ORDER BY id", (self._row(self._conn, key)["config_hash"],)
            )
        return [dict(r) for r in rows]


def _run_record(row: sqlite3.Row) -> RunRecord:
    values = dict(row)
    values["overrides"] = json.loads(values["overrides"] or "[]")
    return RunRecord(**values)


def _attempt(row: sqlite3.Row) -> Attempt:
    return Attempt(**dict(row))


def attempt_step(attempts: Sequence[Attempt], attempt: Attempt) -> tuple[str, int]:
    """An attempt as the job's lane shell names its step: the job key (``123``, ``123_4`` for array
    task 4) and which start of the run in that job it is (the step log's attempt, 1 for the first)."""
    key = attempt.job_id if attempt.array_index is None else f"{attempt.job_id}_{attempt.array_index}"
    earlier = [
        a
        for a in attempts
        if a.id <= attempt.id and a.job_id == attempt.job_id and a.array_index == attempt.array_index
    ]
    return str(key), len(earlier)


def reported_start(state: RunState, key: str) -> Optional[int]:
    """Which start of the run in job ``key`` wrote ``state`` (its job_key and job_attempt); None: another job's."""
    return state.job_attempt if state.job_key == key else None


def reports_on(state: RunState, attempts: Sequence[Attempt], attempt: Attempt) -> bool:
    """Whether a run's state.json was written by ``attempt``'s step or a later one of the same job, by
    the numbers the run wrote (compute nodes' clocks are not the login node's). A run the local runner
    started writes none: that runner is its only supervisor, so its file speaks for the open attempt."""
    if state.job_key is None:
        return attempt.scheduler == "local"
    key, start = attempt_step(attempts, attempt)
    return (reported_start(state, key) or 0) >= start


def fold_run_states(db: JobDB, sweep: str) -> list[tuple[str, str, str]]:
    """Fold every active run's ``<run_dir>/state.json`` into the database; returns (name, old, new) changes.

    Only a state file written by the run's current attempt (or a later step of its job) counts, so a
    stale file from an earlier attempt (e.g. "requeue") never ends a freshly queued attempt.
    """
    changes = []
    for run in db.runs(sweep, states=ACTIVE):
        state_file = read_state(run.run_dir, warn=True)
        attempt = db.open_attempt(run.config_hash)
        if state_file is None or attempt is None or not reports_on(state_file, db.attempts(run.config_hash), attempt):
            continue
        new = state_file.state
        if new is None or new == run.state:
            continue
        try:
            if new == "running":
                db.start(run.config_hash, attempt.scheduler, attempt.job_id, attempt.array_index)
            else:
                db.finish(run.config_hash, new, exit_code=state_file.exit_code, detail="state.json")
        except TransitionError:  # another process moved it meanwhile; its word stands
            continue
        changes.append((run.name, run.state, new))
    return changes
