"""The local sweep runner: record a planned sweep, train its runs on this machine, say how it ended.

``ladder sweep`` (``launcher.commands``) plans the sweep, runs it here, then collects, fits and reports.
The job database makes it resumable: completed runs are skipped by config hash, interrupted runs
(SIGINT/SIGTERM: forwarded to the runs, which checkpoint and exit 75 -> timed_out) continue from their
checkpoints when the command is started again, and a failed run is retried until it has failed
``cluster.max_retries`` times in a row. Several runs train at once within the CPU budget
(``max_parallel_runs`` × ``cores_per_run`` cores), each with OMP_NUM_THREADS = cores_per_run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path
from typing import Optional

from launcher.errors import UserError
from launcher.policy import ACTIVE, FINAL, RETRIED, exit_code_state
from launcher.run.metrics import METRICS_FILE
from launcher.run.state import RunState, read_state
from launcher.schedulers.local import LocalProcess, parallel_slots, usable_cores
from launcher.sweep.jobdb import JobDB, RunRecord, fold_run_states
from launcher.sweep.plan import Plan, RunSpec, print_plan, write_plan

POLL_S = 0.5
STOP_GRACE_S = 300.0  # how long an interrupted run may take to write its checkpoint before it is killed


def record_plan(db: JobDB, plan: Plan) -> None:
    """The sweep and its runs in the database (again: new runs are added, known ones keep their state)."""
    db.add_sweep(plan.sweep.name, plan.cluster.name, plan.to_json()["sweep"])
    db.add_runs(plan.sweep.name, plan.runs, plan.sweep_dir)


def recover(db: JobDB, sweep: str) -> list[str]:
    """After a runner died: fold what its runs reported, and mark runs left active as interrupted.

    Holding the sweep lock proves no other local runner is alive, so an active run here has no process.
    """
    fold_run_states(db, sweep)
    orphans = db.runs(sweep, states=ACTIVE)
    for run in orphans:
        db.finish(run.config_hash, "timed_out", detail="the runner that started it is gone")
    return [run.name for run in orphans]


class LocalSweepRunner:
    """Trains a plan's unfinished runs as local processes, a few at a time, recording every step in the db."""

    def __init__(self, db: JobDB, plan: Plan, console):
        self.db, self.plan, self.console = db, plan, console
        cluster = plan.cluster
        self.slots = parallel_slots(cluster.max_parallel_runs, cluster.cores_per_run)
        if self.slots < cluster.max_parallel_runs:
            console.log(
                f"{self.slots} runs at once, not cluster.max_parallel_runs={cluster.max_parallel_runs}: "
                f"only {usable_cores()} cores for {cluster.cores_per_run} per run"
            )
        self.specs = {spec.config_hash: spec for spec in plan.runs}
        self.active: dict[str, LocalProcess] = {}
        self.stop_signal: Optional[int] = None
        self.stop_sent_at: Optional[float] = None

    def pending(self) -> list[RunRecord]:
        """Runs to start: never started, interrupted, cancelled, or failed fewer than max_retries times in a row;
        a WSD branch only once its trunk's checkpoint at the fork is complete (until then it waits, planned)."""
        retries = self.plan.cluster.max_retries
        runs = [
            r
            for r in self.db.runs(self.plan.sweep.name, states=("planned", "timed_out", "cancelled", *RETRIED))
            if r.config_hash in self.specs
            and r.config_hash not in self.active
            and (r.state not in RETRIED or r.consecutive_failures < retries)
            and self.specs[r.config_hash].ready(self.plan.sweep_dir)
        ]
        return sorted(runs, key=lambda r: -self.specs[r.config_hash].trained_C)  # longest first: slots end together

    def run(self) -> bool:
        """Train until every run has ended (True) or a signal stopped the sweep (False)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with Progress(*columns, console=self.console) as progress:
                overall = progress.add_task("runs done", total=len(self.specs))
                bars: dict[str, int] = {}
                while True:
                    self._reap(progress, bars)
                    if self.stop_signal is not None:
                        self._stop_children()
                    else:
                        for run in self.pending()[: self.slots - len(self.active)]:
                            self._start(run, progress, bars)
                    self._show(progress, overall, bars)
                    if not self.active:
                        return self.stop_signal is None
                    time.sleep(POLL_S)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, _frame) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    def _start(self, run: RunRecord, progress, bars: dict[str, int]) -> None:
        spec: RunSpec = self.specs[run.config_hash]
        log = self.plan.sweep_dir / "jobs" / f"{spec.name}.log"
        proc = LocalProcess.start(
            spec.overrides(self.plan.sweep_dir), log, self.plan.cluster.cores_per_run, spec.ranks_per_run
        )
        self.db.start(run.config_hash, "local", f"local:{proc.pid}")
        self.active[run.config_hash] = proc
        how = "resumes" if run.state == "timed_out" else "retries" if run.state in RETRIED else "starts"
        self.console.log(f"{spec.name} {how} (N={spec.N:,}, D={spec.D:,}, {spec.steps} steps), log {log}")
        bars[run.config_hash] = progress.add_task(spec.name, total=spec.steps)

    def _reap(self, progress, bars: dict[str, int]) -> None:
        for digest, proc in list(self.active.items()):
            code = proc.poll()
            if code is None:
                continue
            state = exit_code_state(code)
            reported = read_state(self.db.run(digest).run_dir, warn=True) or RunState()
            if state == "failed" and reported.status == "completed":
                state = "completed"  # it finished, then a signal ended the process while it was closing down
            elif proc.stop_requested and state == "failed":
                state = "timed_out"  # stopped by us before it could checkpoint: it resumes from the last one
            run = self.db.finish(digest, state, exit_code=code)
            del self.active[digest]
            progress.remove_task(bars.pop(digest))
            note = "" if state == "completed" else f" (exit {code}; see {proc.log_path})"
            if state in RETRIED and run.consecutive_failures >= self.plan.cluster.max_retries:
                note += f"; {state} {run.consecutive_failures} times in a row, not retried (cluster.max_retries)"
            self.console.log(f"{run.name}: {state}{note}")

    def _stop_children(self) -> None:
        assert self.stop_signal is not None  # called once a signal has arrived
        if self.stop_sent_at is None:
            self.stop_sent_at = time.monotonic()
            name = signal.Signals(self.stop_signal).name
            self.console.log(f"{name}: asking {len(self.active)} running runs to checkpoint and stop")
            for proc in self.active.values():
                proc.stop()
        elif time.monotonic() - self.stop_sent_at > STOP_GRACE_S:
            for proc in self.active.values():
                proc.kill()

    def _show(self, progress, overall: int, bars: dict[str, int]) -> None:
        runs = {r.config_hash: r for r in self.db.runs(self.plan.sweep.name) if r.config_hash in self.specs}
        progress.update(overall, completed=sum(1 for r in runs.values() if r.state in FINAL))
        for digest, task in bars.items():
            record = last_record(Path(runs[digest].run_dir) / METRICS_FILE)
            if record and isinstance(record.get("train_loss"), float):
                progress.update(
                    task,
                    completed=record.get("step", 0),
                    description=f"{runs[digest].name} loss {record['train_loss']:.3f}",
                )


def last_record(path: Path, tail_bytes: int = 4096) -> Optional[dict]:
    """The last complete line of a metrics.jsonl, read from its tail only (files grow for hours)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail_bytes))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


@dataclasses.dataclass(frozen=True)
class SweepEnd:
    """How ``run_local_sweep`` ended: stopped by a signal, or with every run ended (completed or not)."""

    stop_signal: Optional[int]
    all_completed: bool

    @property
    def exit_code(self) -> int:
        """128 + the signal when stopped; else 0 when every run completed, 1 when some did not."""
        if self.stop_signal is not None:
            return 128 + self.stop_signal
        return 0 if self.all_completed else 1


def run_local_sweep(plan: Plan, console, over_budget_ok: bool = False) -> SweepEnd:
    """Record ``plan`` in its job database and train its unfinished runs here, a few at a time.

    The caller holds the sweep folder's ``launcher.locks.FolderLock`` (``ladder sweep`` takes it before
    calibrating): one local runner per sweep, since a second would train the same runs in the same folders.
    """
    if plan.cluster.scheduler != "local":
        raise UserError(
            f"cluster.scheduler: `ladder sweep` trains on this machine (scheduler local), the profile "
            f"{plan.cluster.name} uses {plan.cluster.scheduler}; use `ladder submit` there"
        )
    print_plan(plan, console)
    plan.check_budget(over_budget_ok)
    started = time.monotonic()
    with JobDB(plan.sweep_dir / "jobdb.sqlite") as db:
        write_plan(plan)
        record_plan(db, plan)
        for name in recover(db, plan.sweep.name):
            console.log(f"{name}: interrupted earlier, will resume from its checkpoint")
        runner = LocalSweepRunner(db, plan, console)
        finished = runner.run()
        runs = [r for r in db.runs(plan.sweep.name) if r.config_hash in runner.specs]
    counts = {state: sum(1 for r in runs if r.state == state) for state in sorted({r.state for r in runs})}
    summary = ", ".join(f"{n} {state}" for state, n in counts.items())
    console.log(f"sweep {plan.sweep.name}: {summary} in {time.monotonic() - started:.0f} s ({plan.sweep_dir})")
    if not finished:
        console.log("stopped; run the same `ladder sweep` command again to continue")
        return SweepEnd(runner.stop_signal, False)
    return SweepEnd(None, counts.get("completed", 0) == len(runs))
