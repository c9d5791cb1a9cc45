"""A rank's shutdown ends every gloo/c10d thread before the interpreter starts to finalize.

A gloo worker thread (``ProcessGroupGloo::runLoop``) that still lets go of a finished collective's
tensors while Python finalizes takes the GIL, which ends the thread inside a noexcept frame: the rank
aborts with exit 134 after a completed run (issue 13, "The gloo exit"). Each test here runs two real
ranks of ``ladder train`` (``launcher.run.runtime.main``, as the CLI calls it) through the real local
launcher; this file is also the rank program: it reads the rank's own threads from
``/proc/self/task/*/comm`` just before ``close_process_group`` runs and again after ``main`` has
returned (the moment the interpreter would start to finalize), and writes both to a JSON file.
``bench/gloo_exit_loop.py`` counts the exit codes of many runs; this checks the cause on every run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import needs_mpi

# Threads torch.distributed starts: gloo's workers and its TCP transport loop, the TCPStore's server
# (rank 0). None may outlive the shutdown path.
DIST_THREAD_PREFIXES = ("pt_gloo", "gloo", "pt_tcpstore", "pt_nccl", "c10d")
COMMON = ["model=gpt_neox/tiny", "wandb.mode=disabled"]


def thread_names() -> list[str]:
    names = []
    for comm in Path("/proc/self/task").glob("*/comm"):
        try:
            names.append(comm.read_text().strip())
        except OSError:  # a thread that ended while we looked
            pass
    return sorted(names)


def dist_threads(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(DIST_THREAD_PREFIXES)]


def rank_main(out: Path, overrides: list[str]) -> int:
    """One rank: ``ladder train``'s own main, its threads seen before and after its shutdown path."""
    from launcher.run import runtime

    seen: dict = {}
    close = runtime.close_process_group

    def observed_close() -> None:
        seen["before_close"] = thread_names()
        close()

    runtime.close_process_group = observed_close
    code = runtime.main(overrides)
    seen["after_main"] = thread_names()
    seen["exit_code"] = code
    rank = os.environ.get("RANK") or os.environ.get("OMPI_COMM_WORLD_RANK", "0")
    (out / f"threads.rank{rank}.json").write_text(json.dumps(seen))
    return code


def run_two_ranks(tmp_path: Path, step_launcher: str, *overrides: str) -> list[dict]:
    from launcher.run import local_launch

    out = tmp_path / "threads"
    out.mkdir()
    command = [sys.executable, __file__, str(out), *COMMON, f"run_dir={tmp_path / 'run'}", *overrides]
    code = local_launch.launch(2, command, step_launcher)
    ranks = [json.loads((out / f"threads.rank{r}.json").read_text()) for r in range(2)]
    return [dict(r, launcher_exit_code=code) for r in ranks]


def check_no_dist_thread_left(ranks: list[dict], expected_code: int) -> None:
    for rank, seen in enumerate(ranks):
        assert seen["exit_code"] == seen["launcher_exit_code"] == expected_code, seen
        # the probe sees gloo's threads while the groups exist (so an empty list below means something)
        assert "pt_gloo_runloop" in seen["before_close"], f"rank {rank}: {seen['before_close']}"
        assert dist_threads(seen["after_main"]) == [], (
            f"rank {rank}: torch.distributed threads outlive the shutdown path: {seen['after_main']}"
        )


def test_plain_processes_zero0_leave_no_gloo_thread_behind(tmp_path):
    ranks = run_two_ranks(
        tmp_path, "torchrun", "train.max_steps=2", "deepspeed=zero0", "cluster.step_launcher=torchrun"
    )
    check_no_dist_thread_left(ranks, 0)
    assert json.loads((tmp_path / "run" / "state.json").read_text())["status"] == "completed"


@needs_mpi
@pytest.mark.mpi
def test_mpirun_zero3_leaves_no_gloo_thread_behind(tmp_path):
    ranks = run_two_ranks(tmp_path, "mpirun", "train.max_steps=2", "deepspeed=zero3", "cluster.step_launcher=mpirun")
    check_no_dist_thread_left(ranks, 0)


def test_a_run_that_stops_early_also_leaves_no_gloo_thread_behind(tmp_path):
    """Diverged: the loop returns with the engine still built; the same shutdown path must free it."""
    ranks = run_two_ranks(tmp_path, "torchrun", "train.lr=1e30", "train.max_steps=8", "cluster.step_launcher=torchrun")
    check_no_dist_thread_left(ranks, 3)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(rank_main(Path(sys.argv[1]), sys.argv[2:]))
