"""Heartbeats: how whoever supervises the ranks of a run tells a hung rank from a slow one.

Each rank replaces ``<run_dir>/heartbeat/rank<k>.json`` atomically (a ``Beat``: step, time, host, pid
and the rank's median step time so far) after an optimizer step, at most every
``cluster.heartbeat_interval_s`` and at every resume, checkpoint and rewind (so a hung run's last beat is
never older than its last checkpoint, and the hang's step bounds the work lost). A rank stuck in a collective
or on a file system stops beating; its peers stop too, a step later, inside the collective it never
joins. To tell the one from the others, a thread of each rank also touches ``rank<k>.alive`` every
ALIVE_EVERY_S: a process that is stopped, or stuck in the kernel, stops touching it, while a rank merely
waiting in a collective keeps touching it.

The supervisor clears the folder as the ranks start and watches it with ``HangWatch``: once any rank has
beaten, the attempt is hung when a rank's last beat (or, before its first, the first beat of any rank:
start-up is the rendezvous timeout's business) is older than the timeout. The stuck ranks are those no
longer alive, else (every rank waits on every other) those at the lowest step. Once the ranks are killed
the attempt is recorded as hung in ``state.json`` (``record_hang``) and retried. Two supervisors: ``ladder
train nproc=N`` (``launcher.run.local_launch``) kills its own ranks; in a batch job the lane shell
(launcher/schedulers/lane.sh.j2) starts ``ladder hang-watch`` beside each step (``watch_step``), which says
when and where the step hung, the lane kills the step the scheduler's way, and the watcher records it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import statistics
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional, TextIO

from launcher.arguments import command_parser
from launcher.files import atomic_write, atomic_write_json
from launcher.locks import forget_dead_holder
from launcher.policy import JOB_ATTEMPT_ENV, ExitCode, ending
from launcher.run.state import read_state, state_path

HEARTBEAT_DIR = "heartbeat"
TIMEOUT_FACTOR = 10.0  # default timeout: this many median step times ...
TIMEOUT_FLOOR_S = 300.0  # ... but never less (a checkpoint or a validation pass takes longer than a step)
WINDOW = 64  # step times each rank keeps for its median
ALIVE_EVERY_S = 2.0  # how often a rank's thread touches its alive file
ALIVE_STALE_S = 5 * ALIVE_EVERY_S  # an alive file older than this: the process no longer runs
WATCH_EVERY_S = 1.0  # how often a supervisor reads the heartbeats


@dataclasses.dataclass(frozen=True)
class Beat:
    """One rank's latest sign of life."""

    rank: int
    step: int
    time: float  # unix seconds
    host: str
    pid: int
    step_s: Optional[float]  # median seconds per step over the rank's recent steps; null before two beats


@dataclasses.dataclass(frozen=True)
class Stuck:
    """A rank that stopped beating: where it was and for how long it has been silent."""

    rank: int
    host: Optional[str]  # null for a rank that never beat
    step: Optional[int]
    silent_s: float


def beat_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / HEARTBEAT_DIR / f"rank{rank}.json"


def alive_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / HEARTBEAT_DIR / f"rank{rank}.alive"


def alive_age(run_dir: Path, rank: int, now: float) -> float:
    """Seconds since the rank's thread last touched its alive file (infinite without one)."""
    try:
        return now - alive_path(run_dir, rank).stat().st_mtime
    except FileNotFoundError:
        return math.inf


class Heartbeat:
    """One rank's writer; the time between beats of consecutive steps is its step time. It writes at most
    every ``interval_s`` unless a beat is a milestone. ``close`` ends the alive thread (before the
    interpreter finalizes)."""

    def __init__(self, run_dir: Path, rank: int, interval_s: float = 0.0):
        self.path = beat_path(run_dir, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rank, self.host, self.pid = rank, socket.gethostname(), os.getpid()
        self.interval_s, self.written = interval_s, -math.inf
        self.step_times: deque[float] = deque(maxlen=WINDOW)
        self.last: Optional[tuple[int, float]] = None
        self.closed = threading.Event()
        self.thread = threading.Thread(
            target=self._keep_alive, args=(alive_path(run_dir, rank),), daemon=True, name="heartbeat"
        )
        self.thread.start()

    def _keep_alive(self, path: Path) -> None:
        while True:
            path.touch()
            if self.closed.wait(ALIVE_EVERY_S):
                return

    def close(self) -> None:
        self.closed.set()
        self.thread.join()

    def beat(self, step: int, milestone: bool = False) -> None:
        """Step ``step`` is done; written now if it is a ``milestone`` or the interval has passed."""
        now = time.time()
        if self.last is not None and step == self.last[0] + 1:
            self.step_times.append(now - self.last[1])
        self.last = (step, now)
        if not milestone and now - self.written < self.interval_s:
            return
        self.written = now
        median = statistics.median(self.step_times) if self.step_times else None
        atomic_write_json(self.path, dataclasses.asdict(Beat(self.rank, step, now, self.host, self.pid, median)))


def read_beats(run_dir: Path) -> dict[int, Beat]:
    """Every rank's latest beat (a file being replaced is read as it was before)."""
    beats = {}
    for path in (Path(run_dir) / HEARTBEAT_DIR).glob("rank*.json"):
        try:
            beat = Beat(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        beats[beat.rank] = beat
    return beats


def clear(run_dir: Path) -> None:
    """Forget the beats of an earlier attempt, before its ranks start again."""
    for path in (Path(run_dir) / HEARTBEAT_DIR).glob("rank*"):
        path.unlink(missing_ok=True)


def hang_timeout(configured: Optional[float], beats: dict[int, Beat]) -> float:
    """``cluster.hang_timeout_s`` when set, else TIMEOUT_FACTOR x the ranks' median step time, at least
    TIMEOUT_FLOOR_S."""
    if configured is not None:
        return configured
    medians = [b.step_s for b in beats.values() if b.step_s is not None]
    return max(TIMEOUT_FLOOR_S, TIMEOUT_FACTOR * statistics.median(medians)) if medians else TIMEOUT_FLOOR_S


class HangWatch:
    """Which ranks of a running attempt have been silent for longer than the timeout."""

    def __init__(self, run_dir: Path, world: int, timeout_s: Optional[float]):
        self.run_dir, self.world, self.timeout_s = Path(run_dir), world, timeout_s

    def stuck(self, now: Optional[float] = None) -> list[Stuck]:
        beats = read_beats(self.run_dir)
        if not beats:
            return []
        now = time.time() if now is None else now
        timeout = hang_timeout(self.timeout_s, beats)
        first = min(b.time for b in beats.values())
        silent = {rank: now - (beats[rank].time if rank in beats else first) for rank in range(self.world)}
        if max(silent.values()) <= timeout:
            return []
        culprits = [r for r in range(self.world) if alive_age(self.run_dir, r, now) > ALIVE_STALE_S]
        if not culprits:
            lowest = min(beats[r].step if r in beats else -1 for r in range(self.world))
            culprits = [r for r in range(self.world) if (beats[r].step if r in beats else -1) == lowest]
        return [
            Stuck(r, beats[r].host if r in beats else None, beats[r].step if r in beats else None, silent[r])
            for r in culprits
        ]

    def pids(self) -> list[int]:
        """The processes of the ranks that have beaten (on this machine for a local launch)."""
        return [b.pid for b in read_beats(self.run_dir).values()]


def record_hang(run_dir: Path, stuck: list[Stuck], attempt: Optional[int]) -> dict:
    """Mark the attempt hung in ``state.json`` (its ranks are dead, so nothing else writes it); the hang
    joins the run's ``hangs`` list, which later attempts carry on. ``attempt``: which try of the ranks
    hung (``ladder train nproc=N``'s own count, or in a batch job the step's start in its job)."""
    earlier = read_state(run_dir, warn=True)
    state = earlier.to_json() if earlier else {}
    now = time.time()
    hang: dict[str, Any] = {
        "attempt": attempt,
        "job_key": state.get("job_key"),
        "ranks": [s.rank for s in stuck],
        "hosts": sorted({s.host for s in stuck if s.host}),
        "step": min((s.step for s in stuck if s.step is not None), default=None),
        "silent_s": round(max(s.silent_s for s in stuck), 1),
        "at": now,
    }
    state.update(
        status=ending(ExitCode.HUNG).status,
        exit_code=int(ExitCode.HUNG),
        hung_ranks=hang["ranks"],
        hung_hosts=hang["hosts"],
        hangs=[*state.get("hangs", []), hang],
        updated_at=now,
        finished_at=now,
        message=f"rank(s) {', '.join(map(str, hang['ranks']))} sent no heartbeat for {hang['silent_s']} s",
    )
    atomic_write(state_path(run_dir), json.dumps(state, indent=1) + "\n")
    return hang


def describe(hang: dict) -> str:
    """One line on a recorded hang, for the supervisor's log."""
    return (
        f"hung: rank(s) {hang['ranks']} on {hang['hosts'] or 'unknown hosts'} sent no heartbeat for "
        f"{hang['silent_s']} s (step {hang['step']}); ranks killed"
    )


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone (or ended, and its pid now someone else's)
        return False
    return True


def watch_step(watch: HangWatch, pid: int, out: TextIO = sys.stdout) -> int:
    """Watch the ranks of the job step ``pid`` (its launcher, srun or jsrun) until it ends: 0 when it ends
    unhung; ExitCode.HUNG when a rank goes silent. Then the hosts of the stuck ranks go to ``out`` as one
    comma-separated line (empty when unknown), which tells the lane shell to kill the step; once the step
    is gone the hang is recorded and the dead rank 0's run_dir lock record cleared (the retry may start on
    another node), unless the run ended by itself meanwhile (its state.json no longer says running: a
    checkpoint on the walltime warning, the last step), then 0."""
    clear(watch.run_dir)
    while running(pid):
        stuck = watch.stuck()
        if stuck:
            print(",".join(sorted({s.host for s in stuck if s.host})), file=out, flush=True)
            while running(pid):
                time.sleep(WATCH_EVERY_S / 10)
            if reported_status(watch.run_dir) not in (None, "running"):
                return 0
            holder = read_beats(watch.run_dir).get(0)  # rank 0 holds the run_dir's lock
            if holder is not None:
                forget_dead_holder(watch.run_dir, holder.pid, holder.host)
            attempt = os.environ.get(JOB_ATTEMPT_ENV, "")  # the lane shell's, as the run's state.json has it
            hang = record_hang(watch.run_dir, stuck, int(attempt) if attempt.isdigit() else None)
            print(f"ladder hang-watch: {watch.run_dir}: {describe(hang)}", file=sys.stderr, flush=True)
            return int(ExitCode.HUNG)
        time.sleep(WATCH_EVERY_S)
    return 0


def reported_status(run_dir: Path) -> Optional[str]:
    """The run's state.json status; None without a readable one."""
    state = read_state(run_dir, warn=True)
    return state.status if state else None


def watch_main(argv: list[str]) -> int:
    """``ladder hang-watch --pid PID --ranks N --run-dir DIR [--timeout-s S]``: ``watch_step`` for the lane
    shells (which start it with the walltime warning's USR2 ignored: the warning is the batch shell's)."""
    parser = command_parser(
        "ladder hang-watch",
        "watch the heartbeats of one job step's ranks; a lane shell starts it beside each step",
        overrides_help=None,
    )
    parser.add_argument("--pid", type=int, required=True, help="the step launcher's process (srun, jsrun)")
    parser.add_argument("--ranks", type=int, required=True, help="ranks of the step")
    parser.add_argument("--run-dir", required=True, help="the run's folder (its heartbeat/ and state.json)")
    parser.add_argument(
        "--timeout-s", type=float, default=None, help="cluster.hang_timeout_s (default: from step times)"
    )
    args = parser.parse(argv)
    return watch_step(HangWatch(Path(args.run_dir), args.ranks, args.timeout_s), args.pid)
