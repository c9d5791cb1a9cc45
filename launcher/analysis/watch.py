"""``ladder watch sweep=NAME [--once] [--interval S] [--no-sync] [--sync-timeout S]``: follow a sweep live.

On a login node (which has the internet) while the runs train on offline compute nodes. Every interval
it reads each run's ``state.json`` and ``metrics.jsonl`` (the runs' own readers) and prints a table (run,
state, step, tokens, loss, tokens/s, ETA, last write, a consistently slow node), and, unless ``--no-sync``, runs W&B's
own ``wandb sync`` on each offline run folder (``runs/<run>/wandb/offline-run-*``) whose last sync has
ended: each folder once per interval, never two syncs of one folder at once.

What it keeps, it keeps in files, so it can be killed and started again at any time:
  - ``<offline-run-*>/ladder-synced.json``, the only file it writes into a run folder: that folder was
    synced after its writer had ended (the run finished, or a later attempt has its own folder); it is
    left alone from then on.
  - ``<sweep>/watch/<folder>.lock``: a sync holds an flock on it for as long as the ``wandb sync``
    process lives (the process inherits it), so even a sync started by a killed watcher keeps a new one
    from starting a second; each sync is bounded by ``--sync-timeout`` (coreutils ``timeout``).
  - ``<sweep>/watch/sync.log``: one JSON line per sync started and ended (folder, exit status, time).
A failed sync is reported and tried again at the next interval.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from launcher.analysis.collect import parse_sweep_args
from launcher.analysis.wandb_sync import offline_run_dirs
from launcher.errors import UserError
from launcher.files import atomic_write_json
from launcher.numbers import si
from launcher.policy import FINAL
from launcher.run.metrics import METRICS_FILE, read_metrics
from launcher.run.state import RunState, read_state
from launcher.run.stragglers import consistent_straggler

MARKER = "ladder-synced.json"
WATCH_DIR = "watch"
SYNC_LOG = "sync.log"
KILL_AFTER_S = 10  # a sync that ignores timeout's SIGTERM is killed this long after


# ----------------------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class RunView:
    """One row of the table: a run as its files show it now."""

    name: str
    state: str
    step: Optional[int]
    total_steps: Optional[int]
    tokens: Optional[int]
    loss: Optional[float]
    tokens_per_s: Optional[float]
    eta_s: Optional[float]
    last_write_s: Optional[float]  # seconds since state.json or metrics.jsonl last changed
    slowest: Optional[str]  # a consistently slow node (launcher.run.stragglers), else None

    @classmethod
    def read(cls, run_dir: Path, now: float) -> RunView:
        state = read_state(run_dir, warn=True) or RunState()
        metrics = run_dir / METRICS_FILE
        records = read_metrics(metrics) if metrics.exists() else []
        last = records[-1] if records else {}
        step, total = state.step, state.total_steps
        speed = last.get("tokens_per_s")
        per_step = last["tokens"] / last["step"] if last.get("step") else None
        eta = (
            (total - step) * per_step / speed
            if speed and per_step and total is not None and step is not None and state.status == "running"
            else None
        )
        mtimes = [p.stat().st_mtime for p in (run_dir / "state.json", metrics) if p.exists()]
        return cls(
            run_dir.name,
            state.status or "planned",
            step,
            total,
            state.tokens,
            last.get("train_loss"),
            speed,
            eta,
            now - max(mtimes) if mtimes else None,
            consistent_straggler(records),
        )


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def table(name: str, views: list[RunView], syncs: dict[str, str]):
    from rich.table import Table

    out = Table(title=f"sweep {name}  ({time.strftime('%H:%M:%S')})")
    columns = ("run", "state", "step", "tokens", "loss", "tokens/s", "ETA", "last write", "slow node", "W&B")
    for column in columns:
        out.add_column(column, justify="left" if column in ("run", "state", "slow node", "W&B") else "right")
    for v in views:
        out.add_row(
            v.name,
            v.state,
            "" if v.step is None else f"{v.step}/{v.total_steps}",
            si(v.tokens) if v.tokens is not None else "",
            f"{v.loss:.4f}" if v.loss is not None else "",
            si(v.tokens_per_s) if v.tokens_per_s else "",
            duration(v.eta_s),
            f"{duration(v.last_write_s)} ago" if v.last_write_s is not None else "",
            v.slowest or "",
            syncs.get(v.name, ""),
        )
    return out


# ------------------------------------------------------------------------------------------- syncing


@dataclasses.dataclass
class Sync:
    """One ``wandb sync`` in flight, started by this watcher."""

    folder: Path
    run: str
    proc: subprocess.Popen
    started: float
    finished_writer: bool  # the folder's writer had ended when the sync began


class Syncer:
    """Starts at most one ``wandb sync`` per offline run folder per interval; marks folders done."""

    def __init__(self, sweep_dir: Path, timeout_s: float):
        self.sweep_dir, self.timeout_s = sweep_dir, timeout_s
        self.state_dir = sweep_dir / WATCH_DIR
        self.state_dir.mkdir(exist_ok=True)
        self.active: dict[Path, Sync] = {}
        self.status: dict[str, str] = {}  # run name -> what the table shows
        wandb_cli = Path(sys.executable).with_name("wandb")
        self.wandb = str(wandb_cli) if wandb_cli.exists() else shutil.which("wandb")
        if self.wandb is None:
            raise UserError("--no-sync not given, but W&B's `wandb` command is not installed here")

    def log(self, **event) -> None:
        with open(self.state_dir / SYNC_LOG, "a") as handle:
            handle.write(json.dumps({**event, "time": time.time()}) + "\n")

    def tick(self) -> None:
        """Reap ended syncs, then start one on every folder that is neither done nor being synced."""
        self.reap()
        for folder in offline_run_dirs(self.sweep_dir):
            run = folder.parent.parent.name if folder.parent.parent != self.sweep_dir else "summary"
            if (folder / MARKER).exists():
                self.status.setdefault(run, "synced")
                continue
            if folder not in self.active:
                self._start(folder, run)

    def _start(self, folder: Path, run: str) -> None:
        lock = open(self.state_dir / f"{folder.name}.lock", "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            self.status[run] = "syncing (another watcher)"
            return
        finished = writer_ended(folder)
        assert self.wandb is not None  # no sync is started without the wandb command (__init__)
        command = ["timeout", "-k", str(KILL_AFTER_S), str(self.timeout_s), self.wandb, "sync", str(folder)]
        log_path = self.state_dir / f"{folder.name}.out"
        with open(log_path, "a") as out:  # the lock's descriptor lives in the child: held while it runs
            proc = subprocess.Popen(
                command,
                env={**os.environ, "WANDB_MODE": "online"},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                pass_fds=(lock.fileno(),),
                start_new_session=True,
            )
        lock.close()
        self.active[folder] = Sync(folder, run, proc, time.time(), finished)
        self.log(event="start", run=run, folder=str(folder), pid=proc.pid)
        self.status[run] = "syncing"

    def _ended(self, sync: Sync) -> None:
        code = sync.proc.returncode
        self.log(
            event="end",
            run=sync.run,
            folder=str(sync.folder),
            pid=sync.proc.pid,
            rc=code,
            seconds=round(time.time() - sync.started, 1),
        )
        if code == 0:
            if sync.finished_writer:
                mark_synced(sync.folder, sync.started)
            self.status[sync.run] = "synced" if sync.finished_writer else f"synced {time.strftime('%H:%M:%S')}"
            return
        why = "timed out" if code == 124 else f"exit {code}"
        self.status[sync.run] = f"sync failed ({why}), retrying"
        print(
            f"ladder watch: wandb sync of {sync.folder} failed ({why}; see {self.state_dir / sync.folder.name}.out); "
            "retrying at the next interval",
            file=sys.stderr,
            flush=True,
        )

    def wait(self) -> None:
        """Let the syncs in flight end (``--once``)."""
        for sync in self.active.values():
            sync.proc.wait()
        self.reap()

    def reap(self) -> None:
        for folder, sync in list(self.active.items()):
            if sync.proc.poll() is not None:
                self._ended(sync)
                del self.active[folder]


def writer_ended(folder: Path) -> bool:
    """No process will write the offline run folder again: its run finished, a later attempt of the run
    writes a newer folder, or it is the sweep's summary run (written whole by the report)."""
    run_dir = folder.parent.parent
    state = read_state(run_dir, warn=True)
    if state is None:
        return True
    return folder != max(run_dir.glob("wandb/offline-run-*")) or state.state in FINAL


def mark_synced(folder: Path, synced_at: float) -> None:
    atomic_write_json(folder / MARKER, {"synced_at": synced_at})


# ------------------------------------------------------------------------------------------- command


def run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in (sweep_dir / "runs").glob("*") if p.is_dir())


def main(argv: list[str]) -> int:
    def options(parser):
        parser.add_argument("--once", action="store_true", help="one table (and one round of syncs), then exit")
        parser.add_argument("--interval", type=float, default=60.0, help="seconds between rounds (default 60)")
        parser.add_argument("--no-sync", action="store_true", help="the table only; never run wandb sync")
        parser.add_argument(
            "--sync-timeout",
            type=float,
            default=600.0,
            help="seconds one wandb sync may take before it is stopped and retried (default 600)",
        )

    args, sweep_dir = parse_sweep_args(
        argv, "ladder watch", "follow a sweep's runs live and sync their W&B runs", options
    )
    for flag, value in (("--interval", args.interval), ("--sync-timeout", args.sync_timeout)):
        if value <= 0:
            raise UserError(f"{flag}: must be > 0 seconds, got {value}")
    from launcher.sweep.plan import make_console

    console = make_console()
    syncer = None if args.no_sync else Syncer(sweep_dir, args.sync_timeout)
    while True:
        if syncer is not None:
            syncer.tick()
        views = [RunView.read(d, time.time()) for d in run_dirs(sweep_dir)]
        if args.once and syncer is not None:
            syncer.wait()
        console.print(table(sweep_dir.name, views, syncer.status if syncer else {}))
        if args.once:
            return 0
        time.sleep(args.interval)
