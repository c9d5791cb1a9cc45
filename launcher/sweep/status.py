"""``ladder status``: a sweep's runs and where they stand, from the job database.

The runs' own ``state.json`` files are folded in first, so the answer is current without asking the
scheduler (``sacct`` is often missing or slow); ``reconcile`` is the one place that brings the
database up to date before reading it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from launcher.arguments import command_parser
from launcher.config.cluster import ClusterProfile
from launcher.errors import UserError
from launcher.locks import FolderLock
from launcher.numbers import sci
from launcher.run.faults import run_faults
from launcher.run.metrics import METRICS_FILE, read_metrics
from launcher.run.state import RunState, read_state
from launcher.run.stragglers import consistent_straggler
from launcher.schedulers import REGISTRY, get_scheduler
from launcher.sweep.jobdb import JobDB, RunRecord, fold_run_states
from launcher.sweep.plan import compose_sweep, make_console
from launcher.sweep.rebuild import DB_FILE, rebuild, runs_on_disk
from launcher.sweep.submit import batch_profile, sync


def reconcile(db: JobDB, sweep: str, profile: ClusterProfile) -> list[tuple[str, str, str]]:
    """Fold what the runs reported (``state.json``) into the database; returns (name, old, new) changes.

    Runs on this machine (scheduler local) report only through their files. Under a batch scheduler the
    adapter's view of the jobs comes in too, with the jobs' own records (launcher.sweep.submit.sync).
    """
    profile = batch_profile(db, sweep, profile)  # `ladder status sweep=<name>` of a submitted sweep
    if profile.scheduler in REGISTRY:
        return sync(db, sweep, db.path.parent, get_scheduler(profile))
    return fold_run_states(db, sweep)


def run_status(run: RunRecord) -> dict:
    """One run as ``ladder status --json`` shows it: the database's record plus its live progress."""
    reported = read_state(run.run_dir, warn=True) or RunState()
    return {
        "name": run.name,
        "state": run.state,
        "N": run.N,
        "N_non_embedding": run.N_non_embedding,
        "D": run.D,
        "C": run.C,
        "budget": run.budget,
        "job_id": run.job_id,
        "attempts": run.attempts,
        "consecutive_failures": run.consecutive_failures,
        "exit_code": run.exit_code,
        "step": reported.step,
        "total_steps": run.steps if reported.total_steps is None else reported.total_steps,
        "message": reported.message,
        "slow_node": slow_node(run.run_dir),
        "hangs": reported.hangs,
        "rewinds": reported.rewinds,
        "config_hash": run.config_hash,
        "run_dir": run.run_dir,
    }


def slow_node(run_dir: str) -> Optional[str]:
    """The run's consistently slow node, from its curve (``launcher.run.stragglers``), or None."""
    path = Path(run_dir) / METRICS_FILE
    return consistent_straggler(read_metrics(path)) if path.exists() else None


def main(argv: list[str]) -> int:
    args = command_parser(
        "ladder status",
        "A sweep's runs and states, with the runs' own reports folded in.",
        [
            ("--json", "print the runs as JSON"),
            ("--rebuild", "make the job database again from plan.json and the runs' files (the old one moved aside)"),
        ],
    ).parse(argv)
    sweep, profile, sweep_dir = compose_sweep(args.overrides)
    name = sweep.name
    db_path = sweep_dir / DB_FILE
    if args.rebuild:
        rebuild_with_lock(sweep_dir, name)
    elif not db_path.exists():
        raise UserError(
            f"sweep={name}: no job database at {db_path}; run `ladder sweep` or `ladder submit` first "
            f"(or give sweeps_root=<dir>, or --rebuild it from the runs' files)"
        )
    elif empty_while_runs_exist(db_path, name, sweep_dir):
        rebuild_with_lock(sweep_dir, name)
    with JobDB(db_path) as db:
        changes = reconcile(db, name, profile)
        runs = [run_status(r) for r in db.runs(name)]
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["state"]] = counts.get(run["state"], 0) + 1
    if args.json:
        print(json.dumps({"sweep": name, "sweep_dir": str(sweep_dir), "counts": counts, "runs": runs}, indent=1))
        return 0
    print_status(name, runs, counts, changes)
    return 0


def empty_while_runs_exist(db_path: Path, sweep: str, sweep_dir: Path) -> bool:
    """A database that knows no run of the sweep while run folders with work in them exist: rebuild it."""
    with JobDB(db_path) as db:
        known = bool(db.runs(sweep))
    return not known and runs_on_disk(sweep_dir) > 0


def rebuild_with_lock(sweep_dir: Path, sweep: str) -> None:
    """Rebuild under the sweep folder's lock (no ``ladder sweep`` may be writing the database meanwhile)."""
    with FolderLock(sweep_dir, "sweep"):
        done = rebuild(sweep_dir, sweep)
    print(f"ladder status: {done.summary()}", file=sys.stderr)


def print_status(name: str, runs: list[dict], counts: dict[str, int], changes: list[tuple[str, str, str]]) -> None:
    from rich.table import Table

    console = make_console()
    table = Table(title=f"sweep {name}")
    for column in ("name", "state", "N", "D", "C", "step", "attempts", "hangs", "rewinds", "job"):
        table.add_column(column, justify="left" if column in ("name", "state", "job") else "right")
    colours = {
        "completed": "green",
        "running": "cyan",
        "failed": "red",
        "hung": "red",
        "diverged": "magenta",
        "timed_out": "yellow",
    }
    for r in runs:
        state = f"[{colours[r['state']]}]{r['state']}[/]" if r["state"] in colours else r["state"]
        step = "" if r["step"] is None else f"{r['step']}/{r['total_steps']}"
        table.add_row(
            r["name"],
            state,
            f"{r['N']:,}",
            f"{r['D']:,}",
            sci(r["C"]),
            step,
            str(r["attempts"]),
            str(len(r["hangs"]) or ""),
            str(len(r["rewinds"]) or ""),
            r["job_id"] or "",
        )
    console.print(table)
    for r in runs:
        if r["slow_node"]:
            console.print(f"{r['name']}: consistently slow node {r['slow_node']}")
        for fault in run_faults(r):
            console.print(f"{r['name']}: {fault.text()}", highlight=False)
    for run_name, old, new in changes:
        console.print(f"{run_name}: {old} -> {new} (reported by the run)")
    console.print(", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no runs")
