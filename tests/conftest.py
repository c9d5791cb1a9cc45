"""Shared fixtures. ``dev_slurm``: the dev Slurm cluster of slurm/dev-cluster/ for tests marked ``slurm``."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEV_CLUSTER = REPO / "slurm" / "dev-cluster"
# the dev_slurm profile's scheduler_conf names this folder; absolute, so tests may run from any folder
os.environ.setdefault("DEV_SLURM_DIR", str(REPO / ".dev-slurm"))
# tests that start ranks with Open MPI's mpirun
needs_mpi = pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs Open MPI's mpirun")


def tree_progress(*roots: Path) -> frozenset:
    """What a run or sweep has done so far, as seen on disk: every file under ``roots`` with its size (a
    metrics line, a state.json rewrite, a log line or a job record each change it)."""
    found = set()
    for root in roots:
        for path in Path(root).rglob("*"):
            try:
                found.add((str(path), path.stat().st_size))
            except OSError:  # removed while we looked: that is progress too, seen next time
                continue
    return frozenset(found)


def wait_while_progressing(
    done: Callable[[], object], what: str, progress: Callable[[], object], stall_s: float = 300.0, every: float = 0.5
):
    """``done()``'s first truthy value, waiting as long as ``progress()`` keeps changing: a loaded machine is
    slow but advancing, so only ``stall_s`` seconds without any change is a failure (not a fixed wall time)."""
    last, changed = progress(), time.monotonic()
    while True:
        value = done()
        if value:
            return value
        now = progress()
        if now != last:
            last, changed = now, time.monotonic()
        elif time.monotonic() - changed > stall_s:
            raise AssertionError(f"no progress for {stall_s:.0f} s waiting for {what}")
        time.sleep(every)


@dataclasses.dataclass(frozen=True)
class DevCluster:
    """A running dev cluster: its state folder and the environment its commands need."""

    dir: Path
    conf: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120, check=check)


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def dev_slurm() -> DevCluster:
    """The dev cluster: started with ``up`` unless it runs already, stopped with ``down`` at the end
    only if this test run started it."""
    if os.geteuid() != 0:
        pytest.skip("the dev Slurm cluster needs root (slurm/dev-cluster/up starts slurmctld, slurmd, munged)")
    state = Path(os.environ.get("DEV_SLURM_DIR", REPO / ".dev-slurm"))
    was_running = _alive(state / "run" / "slurmctld.pid")
    up = subprocess.run([str(DEV_CLUSTER / "up")], capture_output=True, text=True, timeout=900)
    if up.returncode != 0:
        pytest.fail(f"slurm/dev-cluster/up failed: {up.stderr.strip()}")
    started = not was_running or "already running" not in up.stderr
    conf = Path(up.stdout.strip().rpartition("SLURM_CONF=")[2])
    yield DevCluster(state, conf)
    if started:
        subprocess.run([str(DEV_CLUSTER / "down")], capture_output=True, text=True, timeout=300)
