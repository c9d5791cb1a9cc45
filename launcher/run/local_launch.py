"""``ladder train nproc=N`` without a launcher: start N local ranks of the same command and wait.

Open MPI's ``mpirun`` starts them when it is installed (and mpi4py, for the rendezvous), so the local
path exercises the same MPI rendezvous as a cluster; otherwise plain subprocesses get torchrun's
variables. Each rank gets OMP_NUM_THREADS = cores // N unless it is set: oversubscribed BLAS threads
make a 2-core run twenty times slower. SIGTERM and SIGUSR2 reach every rank (SIGTERM as SIGUSR2 under
mpirun, which would otherwise kill the ranks a few seconds later, before their checkpoint).

With a ``HangWatch`` the supervisor also reads the ranks' heartbeats (``launcher.run.heartbeat``): a rank
silent for the hang timeout gets every rank killed, the attempt recorded as hung in ``state.json``, and,
while ``tries`` are left, the ranks started again, resuming from the run's last checkpoint.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Optional

from launcher.errors import UserError
from launcher.policy import ExitCode
from launcher.run import heartbeat
from launcher.run.heartbeat import HangWatch

GRACE_S = 30.0  # after one rank fails, how long the others may take to notice before they are killed
FORWARDED = (signal.SIGTERM, signal.SIGUSR2)


def threads_per_rank(nproc: int, env: Mapping[str, str] = os.environ) -> str:
    if env.get("OMP_NUM_THREADS"):
        return env["OMP_NUM_THREADS"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return str(max(1, cores // nproc))


@functools.lru_cache(maxsize=1)
def open_mpi_mpirun() -> str | None:
    """The path of Open MPI's mpirun when it and mpi4py are usable here, else None."""
    mpirun = shutil.which("mpirun")
    if mpirun is None or importlib.util.find_spec("mpi4py") is None:
        return None
    try:
        version = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return mpirun if "Open MPI" in version else None


def launch(
    nproc: int,
    command: Sequence[str],
    step_launcher: str = "local",
    watch: Optional[HangWatch] = None,
    tries: int = 1,
) -> int:
    """Run ``command`` as ``nproc`` ranks on this machine; the exit code the ranks agreed on. The ranks
    start at most ``tries`` times (cluster.max_retries: as many as a lane shell gives a run), again only
    after a hang (``watch``); ExitCode.HUNG when the last try hung too."""
    for attempt in range(1, tries + 1):
        if watch is not None:
            heartbeat.clear(watch.run_dir)
        code = start_ranks(nproc, command, step_launcher, watch, attempt)
        if code != ExitCode.HUNG or attempt == tries:
            return code
        print(
            f"ladder train: retrying the hung run from its last checkpoint (try {attempt + 1} of {tries})",
            file=sys.stderr,
            flush=True,
        )
    return code


def start_ranks(
    nproc: int, command: Sequence[str], step_launcher: str, watch: Optional[HangWatch], attempt: int = 1
) -> int:
    """One attempt (the ``attempt``-th try of the ranks): the ranks, started and supervised.

    ``step_launcher`` (cluster.step_launcher): "torchrun" asks for plain processes with torchrun's
    variables, "mpirun" insists on Open MPI, anything else takes mpirun when it is usable.
    """
    env = dict(os.environ, OMP_NUM_THREADS=threads_per_rank(nproc))
    mpirun = open_mpi_mpirun() if step_launcher != "torchrun" else None
    if step_launcher == "mpirun" and mpirun is None:
        raise UserError("cluster.step_launcher: mpirun asks for Open MPI's mpirun and mpi4py, not found here")
    if mpirun:
        command = [
            mpirun,
            "--allow-run-as-root",
            "--oversubscribe",
            "--bind-to",
            "none",
            "-np",
            str(nproc),
            "-x",
            "OMP_NUM_THREADS",
            *command,
        ]
        return supervise(
            [subprocess.Popen(command, env=env)], {signal.SIGTERM: signal.SIGUSR2}, watch=watch, attempt=attempt
        )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(nproc):
        rank_env = dict(
            env,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(nproc),
            LOCAL_WORLD_SIZE=str(nproc),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(subprocess.Popen(list(command), env=rank_env))
    return supervise(procs, {}, watch=watch, attempt=attempt)


def supervise(
    procs: list[subprocess.Popen],
    translate: dict[int, int],
    grace_s: float = GRACE_S,
    watch: Optional[HangWatch] = None,
    attempt: int = 1,
) -> int:
    """Forward signals, wait for every process; the first non-zero exit code wins (128+n for signal n).
    A hung rank (``watch``) ends the attempt: every rank is killed, the hang recorded as the
    ``attempt``-th try's, and the exit code is ExitCode.HUNG."""

    def forward(signum, _frame):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(translate.get(signum, signum))

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, lambda *_: None)  # the terminal signals the ranks
    try:
        first_failure, failed_at, watched_at = 0, None, time.monotonic()
        while any(proc.poll() is None for proc in procs):
            if watch is not None and time.monotonic() - watched_at >= heartbeat.WATCH_EVERY_S:
                watched_at = time.monotonic()
                stuck = watch.stuck()
                if stuck:
                    end_hung(procs, watch, stuck, attempt)
                    return int(ExitCode.HUNG)
            for proc in procs:
                code = proc.poll()
                if code not in (None, 0) and not first_failure:
                    first_failure, failed_at = (128 - code if code < 0 else code), time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
            time.sleep(0.1)
        codes = [128 - p.returncode if p.returncode < 0 else p.returncode for p in procs]
        return first_failure or next((c for c in codes if c), 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def end_hung(procs: list[subprocess.Popen], watch: HangWatch, stuck: list[heartbeat.Stuck], attempt: int) -> None:
    """Kill every rank (a stopped one too: SIGKILL needs no cooperation), then record the hang."""
    for pid in watch.pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    hang = heartbeat.record_hang(watch.run_dir, stuck, attempt)
    print(f"ladder train: {heartbeat.describe(hang)}", file=sys.stderr, flush=True)
