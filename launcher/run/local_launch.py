"""``ladder train nproc=N`` without a launcher: start N local ranks of the same command and wait.

Open MPI's ``mpirun`` starts them when it is installed (and mpi4py, for the rendezvous), so the local
path exercises the same MPI rendezvous as a cluster; otherwise plain subprocesses get torchrun's
variables. Each rank gets OMP_NUM_THREADS = cores // N unless it is set: oversubscribed BLAS threads
make a 2-core run twenty times slower. SIGTERM and SIGUSR2 reach every rank (SIGTERM as SIGUSR2 under
mpirun, which would otherwise kill the ranks a few seconds later, before their checkpoint).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence

from launcher.errors import UserError

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


def launch(nproc: int, command: Sequence[str], step_launcher: str = "local") -> int:
    """Run ``command`` as ``nproc`` ranks on this machine; the exit code the ranks agreed on.

    ``step_launcher`` (cluster.step_launcher): "torchrun" asks for plain processes with torchrun's
    variables, "mpirun" insists on Open MPI, anything else takes mpirun when it is usable.
    """
    env = dict(os.environ, OMP_NUM_THREADS=threads_per_rank(nproc))
    mpirun = open_mpi_mpirun() if step_launcher != "torchrun" else None
    if step_launcher == "mpirun" and mpirun is None:
        raise UserError("cluster.step_launcher: mpirun asks for Open MPI's mpirun and mpi4py, not found here")
    if mpirun:
        command = [mpirun, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(nproc),
                   "-x", "OMP_NUM_THREADS", *command]
        return supervise([subprocess.Popen(command, env=env)], {signal.SIGTERM: signal.SIGUSR2})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(nproc):
        rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                        LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(list(command), env=rank_env))
    return supervise(procs, {})


def supervise(procs: list[subprocess.Popen], translate: dict[int, int], grace_s: float = GRACE_S) -> int:
    """Forward signals, wait for every process; the first non-zero exit code wins (128+n for signal n)."""
    def forward(signum, _frame):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(translate.get(signum, signum))

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, lambda *_: None)  # the terminal signals the ranks
    try:
        first_failure, failed_at = 0, None
        while any(proc.poll() is None for proc in procs):
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
