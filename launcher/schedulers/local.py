"""Local execution: each run is a ``ladder train`` child process of this machine, a few at a time.

A child runs in its own session, so a Ctrl-C in the terminal reaches only the runner, which forwards
SIGTERM: the run checkpoints and exits 75, exactly as under a scheduler's walltime warning. A child
also gets SIGTERM when the runner dies (PR_SET_PDEATHSIG), so a killed runner leaves no orphan
training in a run directory that the next runner will resume.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

from launcher.resources import ladder_argv

PR_SET_PDEATHSIG = 1


def _detach_and_follow_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the runner's own signal handlers still stop children
        pass


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which a batch scheduler or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parallel_slots(max_parallel_runs: int, cores_per_run: int, cores: Optional[int] = None) -> int:
    """How many runs may train at once so that slots × cores_per_run stays within the cores."""
    cores = usable_cores() if cores is None else cores
    return max(1, min(max_parallel_runs, cores // cores_per_run))


class LocalProcess:
    """One ``ladder train`` child: started with its thread budget, stopped with SIGTERM, reaped by exit code."""

    def __init__(self, popen: subprocess.Popen, log_path: Path):
        self.popen = popen
        self.log_path = log_path
        self.stop_requested = False

    @classmethod
    def start(cls, overrides: list[str], log_path: Path, cores: int, ranks: int = 1) -> LocalProcess:
        """Start ``ladder train <overrides>`` on ``cores`` cores (split over ``ranks`` local ranks)."""
        threads = str(max(1, cores // ranks))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
        argv = [*ladder_argv(), "train", *overrides, *([f"nproc={ranks}"] if ranks > 1 else [])]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(argv[1:])}  # OMP_NUM_THREADS={threads}, {time.ctime()}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_detach_and_follow_parent,
            )
        return cls(popen, log_path)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> Optional[int]:
        return self.popen.poll()

    def wait(self, timeout: Optional[float] = None) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        """Ask the run to checkpoint and exit (75); ``ladder train`` passes the signal on to its local ranks."""
        self.stop_requested = True
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """The last resort: SIGKILL to the run's whole session, every local rank included."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
