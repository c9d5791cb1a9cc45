"""The cluster profile: everything a site admin changes, read from ``hydra_configs/cluster/<site>.yaml``.

Python never branches on a site's name; templates and code read these fields. The fields are grouped by
role (node shape, launch, scheduler and queue policy, job environment, local execution), one small
dataclass each with its own checks beside its fields; ``ClusterProfile`` combines them by inheritance,
so every field keeps its flat name (``cluster.max_retries=5``, ``cluster.cores_per_task`` in a template).
The defaults written here are the only defaults: a profile's YAML lists only what it sets.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Literal, Optional

from launcher.config.validate import Range


@dataclasses.dataclass
class QueueBin:
    """A queue-policy bin: jobs of at most ``max_nodes`` nodes may ask for ``max_walltime_min``."""

    max_nodes: int
    max_walltime_min: int


def _at_least_one(group: object, *names: str) -> None:
    for name in names:
        if getattr(group, name) < 1:
            raise ValueError(f"cluster.{name}: must be >= 1, got {getattr(group, name)}")


class _Checks:
    """The end of the ``__post_init__`` chain: each group checks its own fields, then passes on."""

    def __post_init__(self) -> None:
        pass


@dataclasses.dataclass
class Scheduling(_Checks):
    """Which scheduler takes the jobs, with which script template, and what every job asks it for."""

    name: str = "local"
    scheduler: Literal["local", "slurm", "lsf"] = "local"
    template: Optional[str] = None  # job-script template in slurm/ or lsf/ (a site layer's, else the shipped)
    scheduler_conf: Optional[str] = None  # the scheduler's config file (SLURM_CONF), used when it exists;
    # relative paths are from the working folder (the dev cluster's .dev-slurm/etc/slurm.conf)
    directives: list[str] = dataclasses.field(default_factory=list)  # extra job-script directives ("-C nvme")
    script_via_stdin: bool = False  # submit as "bsub < script": LSF reads #BSUB lines from a file argument
    # only with LSB_BSUB_PARSE_SCRIPT=Y (as on Summit)
    account: Optional[str] = None  # the project charged (sbatch --account, bsub -P)
    partition: Optional[str] = None  # Slurm
    qos: Optional[str] = None  # Slurm
    queue: Optional[str] = None  # LSF
    alloc_flags: Optional[str] = None  # LSF with CSM (Summit): the one -alloc_flags line

    def scheduler_conf_path(self) -> Optional[Path]:
        """The scheduler config file this profile names, if it exists (relative: to the working folder)."""
        if not self.scheduler_conf:
            return None
        path = Path(os.path.expanduser(self.scheduler_conf)).resolve()
        return path if path.is_file() else None


@dataclasses.dataclass
class NodeShape(_Checks):
    """What one node holds and how fast its devices are (a "device" is a CPU on a CPU-only machine)."""

    devices_per_node: int = 1  # GPUs (GCDs on MI250X) per node
    device: str = "cpu"
    cores_per_node: int = 2
    cores_per_task: int = 1
    gpus_per_task: Annotated[int, Range(ge=0)] = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device_peak_flops: Optional[Annotated[float, Range(gt=0)]] = None  # dense peak per device at `precision`, for MFU
    device_memory_bytes: Optional[Annotated[float, Range(gt=0)]] = None  # memory of one device (HBM; a CPU
    # "device": its share of the node's RAM), for the refusal of runs that cannot fit (launcher/run/memory.py);
    # null: unknown, not checked

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least_one(self, "devices_per_node", "cores_per_node", "cores_per_task")
        if self.cores_per_task > self.cores_per_node:
            raise ValueError(
                f"cluster.cores_per_task: must be <= cores_per_node ({self.cores_per_node}), got {self.cores_per_task}"
            )


@dataclasses.dataclass
class Launch(_Checks):
    """How a job step starts a run's ranks and how they find each other."""

    step_launcher: Literal["local", "mpirun", "srun", "jsrun", "torchrun"] = "local"
    allows_torchrun: bool = True
    gpu_bind: Optional[str] = None  # Slurm --gpu-bind
    cpu_bind: Optional[str] = None  # core binding of a step's tasks (jsrun -b, e.g. packed:7)
    cuda_aware_mpi: bool = False  # GPU buffers through MPI (jsrun --smpiargs=-gpu on Summit)
    step_args: list[str] = dataclasses.field(default_factory=list)  # extra step-launcher arguments ("--mpi=pmix")
    multinode_step_args: list[str] = dataclasses.field(default_factory=list)  # only for steps over >1 node
    import_mpi4py_first: bool = False  # mpi4py before torch in the runtime (Frontier: NIC mapping breaks otherwise)
    ladder_command: Optional[str] = None  # how a job step starts `ladder` (shell words); default: the Python
    # that rendered the script, so jobs run the environment that submitted them
    step_launch_delay_s: Annotated[float, Range(ge=0)] = (
        0.0  # pause between starting two lanes (OLCF: give Slurm time per srun)
    )
    dist_backend: Literal["gloo", "nccl"] = "gloo"
    network_interface: Optional[str] = None  # rendezvous interface (Frontier hsn0, Summit ib0)
    offline_compute: bool = False  # compute nodes have no route to the internet: runs keep W&B offline there,
    # `ladder watch` syncs from a login node
    hang_timeout_s: Optional[float] = None  # a rank silent this long is hung (launcher/run/heartbeat.py);
    # default: 10 x the run's median step time, at least 5 minutes
    heartbeat_interval_s: Annotated[float, Range(ge=0)] = 10.0  # a rank rewrites its heartbeat file at most
    # this often (and at every resume, checkpoint and rewind); 0: after every step. 10 s: a file write with
    # fsync per rank every 10 s is nothing to a parallel file system, and adds at most 10 s to finding a hang

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hang_timeout_s is not None and self.hang_timeout_s <= 0:
            raise ValueError(f"cluster.hang_timeout_s: must be > 0 seconds, got {self.hang_timeout_s}")
        if self.hang_timeout_s is not None and self.hang_timeout_s < 2 * self.heartbeat_interval_s:
            raise ValueError(
                f"cluster.hang_timeout_s: must be at least 2 x cluster.heartbeat_interval_s "
                f"({self.heartbeat_interval_s} s: a healthy rank's last beat may be that old), "
                f"got {self.hang_timeout_s}"
            )
        if self.step_launcher == "torchrun" and not self.allows_torchrun:
            raise ValueError("cluster.step_launcher: this site forbids torchrun (cluster.allows_torchrun is false)")


@dataclasses.dataclass
class JobEnvironment(_Checks):
    """What the job script sets up before its steps."""

    modules: list[str] = dataclasses.field(default_factory=list)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    multinode_env: dict[str, str] = dataclasses.field(default_factory=dict)  # only for runs on >1 node
    setup: list[str] = dataclasses.field(default_factory=list)  # extra shell lines before the steps


@dataclasses.dataclass
class QueuePolicy(_Checks):
    """What the site allows (queue bins, job limits, warning), how runs are packed, what is left to spend."""

    queue_bins: list[QueueBin] = dataclasses.field(default_factory=list)
    max_eligible_jobs: int = 4
    max_queued_jobs: int = 100
    max_concurrent_steps: int = 100
    max_retries: int = 3  # a run failing this many times in a row is no longer retried
    signal_before_min: Annotated[int, Range(ge=0)] = 5  # warning signal (USR2) this long before the walltime
    signal_before_s: Optional[Annotated[int, Range(ge=0)]] = (
        None  # the same in seconds, for warnings under a minute (short test jobs)
    )
    # packing runs into jobs (launcher/sweep/pack.py)
    submission: Literal["packed", "array"] = "packed"  # array: one run per array task
    array_throttle: Optional[int] = None  # array tasks at once (--array=0-n%k); default max_eligible_jobs
    pack_goal: Literal["node_hours", "wall_time"] = "node_hours"  # fewest node-hours, or as many lanes as fit
    walltime_min: Optional[int] = None  # every job asks for exactly this walltime instead of the estimate
    walltime_safety: float = 1.25  # estimated hours x this where a walltime must suffice
    assumed_mfu: float = 0.3  # planning estimate until a calibration run measures it
    run_overhead_min: Annotated[float, Range(ge=0)] = (
        2.0  # start-up, rendezvous, checkpoint load and save of one run in a job
    )
    job_overhead_min: Annotated[float, Range(ge=0)] = 1.0  # module loads and environment set-up of one job
    allocation_node_hours: Optional[Annotated[float, Range(ge=0)]] = None  # what is left of the allocation

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least_one(self, "max_eligible_jobs", "max_queued_jobs", "max_concurrent_steps", "max_retries")
        if not 0.0 < self.assumed_mfu <= 1.0:
            raise ValueError(f"cluster.assumed_mfu: must be in (0, 1], got {self.assumed_mfu}")
        if self.walltime_safety < 1.0:
            raise ValueError(f"cluster.walltime_safety: must be >= 1, got {self.walltime_safety}")
        if self.walltime_min is not None and self.walltime_min < 1:
            raise ValueError(f"cluster.walltime_min: must be >= 1 minute, got {self.walltime_min}")
        if self.array_throttle is not None and self.array_throttle < 1:
            raise ValueError(f"cluster.array_throttle: must be >= 1, got {self.array_throttle}")
        if self.signal_before >= 60 * min((b.max_walltime_min for b in self.queue_bins), default=10**9):
            raise ValueError(
                f"cluster.signal_before_min: the warning ({self.signal_before} s) must come "
                "within the shortest queue bin's walltime"
            )

    @property
    def signal_before(self) -> int:
        """Seconds between the walltime warning (USR2) and the walltime."""
        return self.signal_before_s if self.signal_before_s is not None else 60 * self.signal_before_min


@dataclasses.dataclass
class LocalExecution(_Checks):
    """How the local runner shares this machine between runs."""

    max_parallel_runs: int = 1
    cores_per_run: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least_one(self, "max_parallel_runs", "cores_per_run")


@dataclasses.dataclass
class ClusterProfile(LocalExecution, QueuePolicy, JobEnvironment, Launch, NodeShape, Scheduling):
    """One site's profile: every group's fields under their own names."""

    # set by composition from site_dir= / SCALELADDER_SITE_DIR, not written in a profile: the folders whose
    # slurm/ and lsf/ templates come before the shipped ones, exported to the job steps
    site_dirs: list[str] = dataclasses.field(default_factory=list)
