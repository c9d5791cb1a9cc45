"""A sweep's runs through submitit: its Slurm executor (a job array, one run per task, via ``map_array``)
or its local executor, as an alternative to packed jobs.

Each run is ``ladder train <overrides>`` started by a picklable callable in every task of its job, so
ranks meet through Slurm's variables exactly as in a packed job. On submitit's walltime signal
(USR2), the callable passes the signal to the run, which checkpoints and exits 75, and hands submitit
a fresh callable to requeue: the requeued job resumes from the checkpoint (``resume=true``).

Traps this module takes care of: once Slurm is installed, ``AutoExecutor`` picks Slurm even for local
runs, so the cluster is always named; submitit's commands need SLURM_CONF, taken from the profile;
job ids restart when a dev cluster restarts, so each call should get a fresh folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Optional

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from launcher.config.cluster import ClusterProfile
from launcher.errors import UserError
from launcher.policy import JOB_ATTEMPT_ENV, JOB_KEY_ENV, ExitCode, ending
from launcher.resources import ladder_argv
from launcher.schedulers.base import Dependency
from launcher.sweep.jobdb import JobDB


def job_step_env() -> dict[str, str]:
    """Name this step as the job database names its attempt (``launcher.sweep.jobdb.attempt_step``), the
    way the lane shells do for their steps: the run writes both into state.json (``runtime.job_step``), and
    ``ladder status`` matches that report to the attempt by them. A requeued job is a later start of the
    same job (Slurm counts them in SLURM_RESTART_COUNT)."""
    try:
        key = submitit.JobEnvironment().job_id
    except RuntimeError:  # not inside a submitit job (a direct call)
        return {}
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    attempt = 1 + (int(restarts) if restarts.isdigit() else 0)
    return {JOB_KEY_ENV: key, JOB_ATTEMPT_ENV: str(attempt)}


class TrainRun(Checkpointable):
    """``ladder train <overrides>`` as a submitit callable; returns the run's exit code (0 or 3)."""

    def __init__(self, env: Optional[dict[str, str]] = None):
        self.env = dict(env or {})
        self._child: Optional[subprocess.Popen] = None

    def __call__(self, overrides: Sequence[str]) -> int:
        argv = [*ladder_argv(), "train", *overrides]
        self._child = subprocess.Popen(argv, env={**os.environ, **job_step_env(), **self.env})
        code = self._child.wait()
        if not ending(code).finished:
            raise RuntimeError(
                f"ladder train exited {code}"
                + (" (checkpointed: submit it again to continue)" if code == ExitCode.REQUEUE else "")
            )
        return code

    def checkpoint(self, overrides: Sequence[str]) -> DelayedSubmission:
        """On submitit's walltime signal: the run checkpoints and exits, and the job is requeued."""
        child = self._child
        if child is not None and child.returncode is None:
            child.send_signal(signal.SIGUSR2)
            try:  # not child.wait(): __call__'s wait holds the Popen's lock while this handler runs
                os.waitpid(child.pid, 0)
            except ChildProcessError:
                pass
        return DelayedSubmission(TrainRun(self.env), overrides)

    def __getstate__(self) -> dict:
        return {"env": self.env, "_child": None}


def executor(
    folder: str | os.PathLike, profile: ClusterProfile, cluster: Literal["slurm", "local"] = "slurm"
) -> submitit.Executor:
    """submitit's executor for ``cluster``, named explicitly; SLURM_CONF exported when the profile names one."""
    if cluster == "slurm":
        conf = profile.scheduler_conf_path()
        if conf is not None:
            os.environ["SLURM_CONF"] = str(conf)  # submitit runs sbatch, squeue and sacct with this environment
    elif cluster != "local":
        raise UserError(f"cluster: submitit runs sweeps on 'slurm' or 'local', got {cluster!r}")
    return submitit.AutoExecutor(folder=str(folder), cluster=cluster)


def submit_runs(
    runs: Sequence[tuple[str, Sequence[str]]],
    folder: str | os.PathLike,
    profile: ClusterProfile,
    cluster: Literal["slurm", "local"] = "slurm",
    nodes: int = 1,
    ranks: int = 1,
    timeout_min: int = 60,
    name: str = "scaleladder",
    dependency: Optional[Dependency] = None,
) -> list[submitit.Job]:
    """Submit runs ``(name, overrides)`` of one shape as one job array (``map_array``), one run per task.

    On Slurm every rank is a task (``nodes`` x ``ranks / nodes``); locally a run starts its own ranks
    (``nproc``). The profile's environment goes to every run. ``dependency`` (Slurm only; say the job of
    the WSD trunk these runs branch from) reaches sbatch as ``--dependency``.
    """
    ex = executor(folder, profile, cluster)
    if cluster == "slurm":
        if ranks % nodes:
            raise UserError(f"sweep.ranks_per_run: {ranks} ranks do not split evenly over {nodes} nodes")
        setup = [f"module load {m}" for m in profile.modules] + list(profile.setup)
        ex.update_parameters(
            name=name,
            timeout_min=timeout_min,
            nodes=nodes,
            tasks_per_node=ranks // nodes,
            cpus_per_task=profile.cores_per_task,
            slurm_array_parallelism=profile.array_throttle or profile.max_eligible_jobs,
            slurm_signal_delay_s=profile.signal_before,
            slurm_setup=setup,
            **{
                f"slurm_{k}": v
                for k, v in (("partition", profile.partition), ("account", profile.account), ("qos", profile.qos))
                if v
            },
            **({"slurm_gpus_per_task": profile.gpus_per_task} if profile.gpus_per_task else {}),
            **({"slurm_additional_parameters": {"dependency": str(dependency)}} if dependency else {}),
        )
        overrides = [list(o) for _, o in runs]
    else:
        if dependency is not None:
            raise UserError(f"dependency: {dependency} needs a scheduler; submitit's local executor runs at once")
        ex.update_parameters(name=name, timeout_min=timeout_min, tasks_per_node=1)
        overrides = [[*o, f"nproc={ranks}"] for _, o in runs]
    env = {**profile.env, **(profile.multinode_env if nodes > 1 else {})}
    return ex.map_array(TrainRun(env), overrides)


def record(db: JobDB, sweep: str, run_hashes: Sequence[str], jobs: Sequence[submitit.Job], scheduler: str) -> str:
    """Record a submitit job array in the job database (as ``ladder submit`` records its jobs); returns its id."""
    array_id = str(jobs[0].job_id).split("_")[0]
    db.add_job(sweep, scheduler, array_id, "submitit", list(run_hashes))
    for index, run_hash in enumerate(run_hashes):
        db.queue(run_hash, scheduler, array_id, array_index=index)
    return array_id


def fresh_folder(root: str | os.PathLike) -> Path:
    """A new folder under ``root`` for one submission (job ids may repeat after a dev cluster restart)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    taken = {int(p.name) for p in root.iterdir() if p.name.isdigit()}
    folder = root / str(max(taken, default=0) + 1)
    folder.mkdir()
    return folder
