"""``ladder status --rebuild``: a sweep's job database made again from what its runs left on disk.

The database is the login node's record; the runs' folders are their own: ``plan.json`` names every planned
run with its counts and overrides (``RunSpec.to_json``), each run's ``state.json`` how its last attempt ended and
``metrics.jsonl`` how far it got. A run is recorded with one attempt that ends where its files say:
the state.json's end, or, without one, completed when its curve reached its last step and timed_out
(ready to continue from its checkpoint) otherwise; a state.json still saying "running" has no process
behind it that the database could follow, so it is timed_out too and the next ``ladder sweep`` resumes it.
Earlier attempts and scheduler job ids are not on disk and are not recreated.

An unusable database file is moved aside (``jobdb.sqlite.broken-<unix time>``), never deleted.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from launcher.errors import UserError
from launcher.files import aside_path
from launcher.run.metrics import METRICS_FILE, read_metrics
from launcher.run.state import read_state
from launcher.sweep.jobdb import JobDB
from launcher.sweep.plan import PLAN_FILE, RunSpec, read_plan

DB_FILE = "jobdb.sqlite"


@dataclasses.dataclass
class Rebuilt:
    """What a rebuild recorded: each run's state and where the old file went."""

    states: dict[str, str]
    moved_aside: Optional[Path]

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for state in self.states.values():
            counts[state] = counts.get(state, 0) + 1
        told = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no runs"
        aside = f"; the old file is {self.moved_aside}" if self.moved_aside else ""
        return f"rebuilt the job database from plan.json and the runs' files: {told}{aside}"


def runs_on_disk(sweep_dir: Path) -> int:
    """How many run folders of the sweep hold a state.json or a metrics.jsonl (work a database must know)."""
    root = Path(sweep_dir) / "runs"
    if not root.is_dir():
        return 0
    return sum(1 for d in root.iterdir() if (d / "state.json").exists() or (d / METRICS_FILE).exists())


def planned_specs(sweep_dir: Path) -> tuple[dict, list[RunSpec]]:
    """plan.json and its runs as RunSpecs; a sweep without one cannot be rebuilt (the plan holds the overrides)."""
    plan = read_plan(sweep_dir)
    path = Path(sweep_dir) / PLAN_FILE
    if not plan.get("runs"):
        raise UserError(f"{path}: no planned runs to rebuild the job database from; run `ladder plan` for the sweep")
    return plan, [RunSpec.from_json(entry, f"{path}: runs[{i}]") for i, entry in enumerate(plan["runs"])]


def end_from_files(spec: RunSpec, run_dir: Path) -> tuple[str, Optional[int], str]:
    """(database state, exit code, detail) of a run from its state.json and metrics.jsonl."""
    state = read_state(run_dir, warn=True)
    if state is not None and state.state not in (None, "running"):
        return state.state, state.exit_code, "state.json"
    metrics = run_dir / METRICS_FILE
    records = read_metrics(metrics) if metrics.exists() else []
    if records and records[-1]["step"] >= spec.steps:
        return "completed", 0, "metrics.jsonl reached its last step"
    if records or state is not None:
        return "timed_out", None, "stopped part way (no process is known to hold it); resumes from its checkpoint"
    return "planned", None, ""


def move_aside(db_path: Path) -> Optional[Path]:
    """Move the database file and its WAL companions out of the way; returns the new name (None: no file)."""
    if not db_path.exists():
        return None
    aside = aside_path(db_path, "broken")
    for suffix in ("", "-wal", "-shm"):
        part = Path(f"{db_path}{suffix}")
        if part.exists():
            part.rename(f"{aside}{suffix}")
    return aside


def rebuild(sweep_dir: Path, sweep: str) -> Rebuilt:
    """A new job database for ``sweep`` in ``sweep_dir`` from plan.json and the runs' files (module docstring).
    The caller holds the sweep folder's lock."""
    sweep_dir = Path(sweep_dir)
    plan, specs = planned_specs(sweep_dir)
    moved = move_aside(sweep_dir / DB_FILE)
    states: dict[str, str] = {}
    with JobDB(sweep_dir / DB_FILE) as db:
        db.add_sweep(sweep, (plan.get("cluster") or {}).get("name", "local"), plan)
        db.add_runs(sweep, specs, sweep_dir)
        for spec in specs:
            state, exit_code, detail = end_from_files(spec, spec.run_dir(sweep_dir))
            if state != "planned":
                db.start(spec.config_hash)
                db.finish(spec.config_hash, state, exit_code=exit_code, detail=f"rebuilt: {detail}")
            states[spec.name] = state
    return Rebuilt(states, moved)
