"""submitit on IBM LSF: ``submitit.AutoExecutor(folder, cluster="lsf")`` once scaleladder is installed.

submitit finds executors and job environments through the ``submitit`` entry-point group (keys
``executor`` and ``job_environment``, see submitit/core/plugins.py); pyproject.toml registers the two
classes below. A submitted function is pickled into the folder and run by ``python -m
submitit.core._submit`` inside the same LSF job script as a sweep's runs (lsf/*.j2 of an LSF cluster
profile, ``lsf_profile="summit"``), started by the profile's step launcher (jsrun on Summit).

Job ids: "123", and "123_4" for task 4 of array 123, from 0 as on Slurm and in scaleladder's job
scripts (LSF's element "123[5]": ``launcher.schedulers.lsf.to_lsf`` translates); submitit's files are
named after these ids, so an array element opens its own logs (bsub -o names elements only from 1).
LSF sends USR2 ``signal_delay_min`` minutes before the walltime (``bsub -wa USR2 -wt``): the job
checkpoints a ``Checkpointable`` and puts itself back in the queue with ``brequeue``, keeping its id, as
submitit does with ``scontrol requeue`` on Slurm.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import shutil
import signal
import sys
import time
import typing as tp
import uuid
from pathlib import Path

from submitit.core import core, job_environment, logger, utils

from launcher.config.cluster import ClusterProfile
from launcher.errors import UserError
from launcher.schedulers.base import BatchJob, Dependency
from launcher.schedulers.lsf import LsfScheduler, bsub_argv, commands, from_lsf, job_key, key_path, parse_bsub

# bjobs STATs after which a job will not run again (ZOMBI: killed while its host was unreachable).
FINISHED = frozenset({"DONE", "EXIT", "ZOMBI"})


def load_profile(name: str) -> ClusterProfile:
    """The cluster profile ``name`` (site layers first), composed and validated."""
    from launcher.config.compose import compose, group_options
    from launcher.config.validate import validate

    if name not in group_options("cluster"):
        raise UserError(f"lsf_profile: no cluster profile {name!r}; allowed: {', '.join(group_options('cluster'))}")
    return validate(ClusterProfile, compose([f"cluster={name}"])["cluster"], "cluster")


class LsfInfoWatcher(core.InfoWatcher):
    """One bjobs call for all registered jobs, at most every ``delay_s``; finished jobs are cached."""

    def get_state(self, job_id: str, mode: str = "standard") -> str:
        return self.get_info(job_id, mode=mode).get("State") or "UNKNOWN"

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        return self.get_state(job_id, mode=mode) in FINISHED

    def update(self) -> None:
        to_check = {x.split("_")[0] for x in self._registered - self._finished}
        if not to_check:
            return
        self._num_calls += 1
        try:
            records = commands().records(to_check)
        except UserError as exc:
            logger.get_logger().warning(f"Call #{self.num_calls} - bjobs failed ({exc}), status may be inaccurate.")
        else:
            self._info_dict.update(
                {
                    from_lsf(r.job_id): {
                        "State": r.stat,
                        "ExitCode": "" if r.exit_code is None else str(r.exit_code),
                        "ExitReason": r.exit_reason,
                    }
                    for r in records.values()
                }
            )
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)


class LsfJob(core.Job[core.R]):
    _cancel_command = "bkill"
    watcher = LsfInfoWatcher(delay_s=60)

    def cancel(self, check: bool = True) -> None:
        """bkill the job (the adapter names task 4 of an array, "123_4", as LSF's element "123[5]")."""
        try:
            commands().cancel([self.job_id])
        except UserError:
            if check:
                raise

    def _interrupt(self, timeout: bool = False) -> None:
        """Send the walltime warning now, as LSF would (for tests of checkpointing)."""
        commands().signal([self.job_id], "USR2")


class LsfJobEnvironment(job_environment.JobEnvironment):
    """Inside an LSF job: ids from LSB_JOBID / LSB_JOBINDEX, ranks from jsrun (JSM_NAMESPACE_*) or Open MPI."""

    _env = {"job_id": "LSB_JOBID"}

    @staticmethod
    def _int(jsm: str, open_mpi: str, default: int) -> int:
        """jsrun's variable, else Open MPI's (mpirun inside a generic LSF job), else ``default``."""
        for name in (jsm, open_mpi):
            if os.environ.get(name, "").isdigit():
                return int(os.environ[name])
        return default

    @property
    def array_job_id(self) -> tp.Optional[str]:
        return os.environ["LSB_JOBID"] if self.array_task_id else None

    @property
    def array_task_id(self) -> tp.Optional[str]:
        """The task from 0 ("123_4" is LSF's element 5); None outside an array (LSF sets LSB_JOBINDEX=0)."""
        return job_key(os.environ).partition("_")[2] or None

    @property
    def num_tasks(self) -> int:
        return self._int("JSM_NAMESPACE_SIZE", "OMPI_COMM_WORLD_SIZE", 1)

    @property
    def global_rank(self) -> int:
        return self._int("JSM_NAMESPACE_RANK", "OMPI_COMM_WORLD_RANK", 0)

    @property
    def local_rank(self) -> int:
        return self._int("JSM_NAMESPACE_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", 0)

    @property
    def _local_size(self) -> int:
        return max(1, self._int("JSM_NAMESPACE_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", 1))

    @property
    def num_nodes(self) -> int:
        return math.ceil(self.num_tasks / self._local_size)

    @property
    def node(self) -> int:
        return self.global_rank // self._local_size

    @property
    def hostnames(self) -> list[str]:
        """Compute hosts in rank order, from LSB_DJOB_RANKFILE without its first line (the launch node)."""
        rankfile = os.environ.get("LSB_DJOB_RANKFILE")
        if not rankfile or not Path(rankfile).exists():
            return [self.hostname]
        hosts = [line.strip() for line in Path(rankfile).read_text().splitlines()[1:] if line.strip()]
        return list(dict.fromkeys(hosts)) or [self.hostname]

    def _handle_signals(self, paths: utils.JobPaths, submission: utils.DelayedSubmission) -> None:
        """As submitit, but act on the first USR2 only: LSF may signal the task both directly and
        through the job script, and a second checkpoint-and-requeue would requeue twice."""
        super()._handle_signals(paths, submission)
        sig = self._usr_sig()
        act = signal.getsignal(sig)
        assert callable(act)  # submitit's handler, installed just above

        def once(signum, frame):
            signal.signal(signum, signal.SIG_IGN)
            act(signum, frame)

        signal.signal(sig, once)

    def _requeue(self, countdown: int) -> None:
        commands().requeue([self.job_id])
        logger.get_logger().info(f"Requeued job {self.job_id} ({countdown} remaining timeouts)")


class _SubmititJob(LsfScheduler):
    """The LSF adapter writing a submitit job: the site's template with one command instead of runs."""

    def __init__(self, profile: ClusterProfile, extra: dict[str, tp.Any]):
        super().__init__(profile)
        self.extra = extra

    def context(self, job: BatchJob) -> dict[str, tp.Any]:
        return self.extra


@dataclasses.dataclass
class LsfParameters:
    """What update_parameters accepts (the LSF side of submitit's generic parameters, and LSF's own)."""

    job_name: str = "submitit"
    time: int = 5  # minutes (bsub -W)
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: tp.Optional[int] = None  # default: the profile's GPUs per task, per task
    cpus_per_task: tp.Optional[int] = None  # default: the node's cores in proportion to the GPUs
    project: tp.Optional[str] = None  # bsub -P (default: the profile's account)
    queue: tp.Optional[str] = None  # bsub -q
    alloc_flags: tp.Optional[str] = None  # bsub -alloc_flags (Summit)
    setup: list[str] = dataclasses.field(default_factory=list)  # shell lines before the task starts
    signal_delay_min: tp.Optional[int] = None  # bsub -wt (default: the profile's signal_before_min)
    array_parallelism: int = 256  # bsub -J "name[1-n]%k"
    stderr_to_stdout: bool = False
    dependency: tp.Optional[str] = None  # "afterok:123[:456]" (Slurm's spelling), as #BSUB -w "done(123) && ..."


class LsfExecutor(core.PicklingExecutor):
    """LSF job executor: one job script per submission (a job array for map_array), submitted with bsub.

    Parameters
    ----------
    folder: where pickles, scripts and logs go (shared with the compute nodes).
    profile: the cluster profile: a name from hydra_configs/cluster/ ("lsf", "summit") or a ClusterProfile.
    python: the command that runs python on the compute nodes (default: this interpreter).
    """

    job_class = LsfJob

    def __init__(
        self,
        folder: tp.Union[str, Path],
        profile: tp.Union[str, ClusterProfile] = "lsf",
        max_num_timeout: int = 3,
        max_pickle_size_gb: float = 1.0,
        python: tp.Optional[str] = None,
    ) -> None:
        super().__init__(folder, max_num_timeout=max_num_timeout, max_pickle_size_gb=max_pickle_size_gb)
        if self.affinity() < 0:
            raise RuntimeError('Could not detect "bsub", are you indeed on an LSF cluster?')
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        if self.profile.scheduler != "lsf":
            raise UserError(f"lsf_profile: {self.profile.name!r} is a {self.profile.scheduler} profile, not an LSF one")
        self.python = shlex.split(python) if python else [sys.executable]
        self.parameters = dataclasses.asdict(LsfParameters())

    @classmethod
    def _equivalence_dict(cls) -> core.EquivalenceDict:
        return {
            "name": "job_name",
            "timeout_min": "time",
            "mem_gb": "mem_gb",
            "nodes": "nodes",
            "cpus_per_task": "cpus_per_task",
            "gpus_per_node": "gpus_per_node",
            "tasks_per_node": "tasks_per_node",
        }

    @classmethod
    def _valid_parameters(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(LsfParameters)}

    def _internal_update_parameters(self, **kwargs: tp.Any) -> None:
        invalid = sorted(set(kwargs) - self._valid_parameters())
        if invalid:
            raise ValueError(
                f"Unavailable parameter(s) for LSF: {invalid}; valid: {sorted(self._valid_parameters())}"
                + (" (LSF jobs here get whole nodes: no memory request)" if "mem_gb" in invalid else "")
            )
        before = dict(self.parameters)
        super()._internal_update_parameters(**kwargs)
        try:
            self._render("probe", None)  # a bad combination fails now, not at submission
        except UserError:
            self.parameters.clear()
            self.parameters.update(before)
            raise

    @classmethod
    def affinity(cls) -> int:
        return -1 if shutil.which("bsub") is None else 2

    def _num_tasks(self) -> int:
        return self.parameters["nodes"] * self.parameters["tasks_per_node"]

    @property
    def _submitit_command_str(self) -> str:
        return shlex.join([*self.python, "-u", "-m", "submitit.core._submit", str(self.folder)])

    def _launcher(self) -> tuple[str, ...]:
        """The profile's step launcher for nodes x tasks_per_node tasks of the chosen shape."""
        p, profile = self.parameters, self.profile
        gpus = profile.gpus_per_task if p["gpus_per_node"] is None else p["gpus_per_node"] // p["tasks_per_node"]
        cores = p["cpus_per_task"] or (
            profile.cores_per_node * gpus // profile.devices_per_node if gpus else profile.cores_per_task
        )
        try:
            return LsfScheduler(profile).launcher_argv(p["nodes"] * p["tasks_per_node"], p["nodes"], gpus, cores)
        except UserError as exc:
            raise UserError(f"tasks_per_node: {p['tasks_per_node']} tasks per node do not fit: {exc}") from None

    def _render(self, command: str, map_count: tp.Optional[int]) -> str:
        p = self.parameters
        paths = utils.JobPaths(self.folder)

        def log(path: Path) -> str:
            return str(path).replace("%t", "0")

        profile = dataclasses.replace(
            self.profile,
            account=p["project"] or self.profile.account,
            queue=p["queue"] or self.profile.queue,
            alloc_flags=p["alloc_flags"] or self.profile.alloc_flags,
            setup=[*self.profile.setup, *p["setup"]],
            env={**self.profile.env, "SUBMITIT_EXECUTOR": "lsf"},
        )
        signal_min = p["signal_delay_min"] or self.profile.signal_before_min
        stdout, stderr = log(paths.stdout), log(paths.stdout if p["stderr_to_stdout"] else paths.stderr)
        env = [f"{k}={v}" for k, v in sorted(profile.multinode_env.items())] if p["nodes"] > 1 else []
        context: dict[str, tp.Any] = dict(
            command=[*(["env", *env] if env else []), *self._launcher(), *shlex.split(command)],
            array_size=map_count or 0,
        )
        if map_count:  # bsub -o keeps LSF's report of every element; each element opens its own task's logs
            output = str(utils.JobPaths.get_first_id_independent_folder(self.folder) / "%j_lsf.out")
            context["logs"] = {"stdout": key_path(stdout), "stderr": key_path(stderr)}
        else:
            output, context["error"] = stdout, stderr
        job = BatchJob(
            name=p["job_name"],
            sweep="submitit",
            sweep_dir=str(self.folder),
            workdir=os.getcwd(),
            steps=(),
            lanes=1,
            nodes=p["nodes"],
            walltime_min=p["time"],
            signal_s=60 * signal_min,
            ladder=(),
            manifest="",
            output=output,
            steps_log="",
            array=bool(map_count),
            array_throttle=min(map_count or 1, p["array_parallelism"]),
            dependency=Dependency.parse(p["dependency"]) if p["dependency"] else None,
        )
        return _SubmititJob(profile, context).render(job)

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        return self._render(command, self.parameters.get("map_count"))

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        return bsub_argv(self.profile, submission_file_path)

    @staticmethod
    def _get_job_id_from_submission_command(string: tp.Union[bytes, str]) -> str:
        return parse_bsub(string.decode() if isinstance(string, bytes) else string)

    def _internal_process_submissions(
        self, delayed_submissions: list[utils.DelayedSubmission]
    ) -> list[core.Job[tp.Any]]:
        if len(delayed_submissions) == 1:
            return super()._internal_process_submissions(delayed_submissions)
        # a job array: task i (from 0; LSF's element i + 1) runs the i-th pickle, saved under the id "<job>_<i>"
        folder = utils.JobPaths.get_first_id_independent_folder(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        pickle_paths = []
        for delayed in delayed_submissions:
            pickle_path = folder / f"{uuid.uuid4().hex}.pkl"
            delayed.set_timeout(self.parameters["time"], self.max_num_timeout)
            delayed.dump(pickle_path)
            pickle_paths.append(pickle_path)
        array = LsfExecutor.__new__(LsfExecutor)  # a copy, so later submissions are not arrays
        array.__dict__.update(self.__dict__, parameters={**self.parameters, "map_count": len(pickle_paths)})
        self._throttle()
        first = array._submit_command(self._submitit_command_str)
        tasks = list(range(first.num_tasks))
        jobs: list[core.Job[tp.Any]] = [
            LsfJob(folder=self.folder, job_id=f"{first.job_id}_{i}", tasks=tasks) for i in range(len(pickle_paths))
        ]
        for job, pickle_path in zip(jobs, pickle_paths):
            job.paths.move_temporary_file(pickle_path, "submitted_pickle")
        return jobs
