"""The cluster profile: everything a site admin changes, read from ``hydra_configs/cluster/<site>.yaml``.

Python never branches on a site's name; templates and code read these fields.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional


@dataclasses.dataclass
class QueueBin:
    """A queue-policy bin: jobs of at most ``max_nodes`` nodes may ask for ``max_walltime_min``."""

    max_nodes: int
    max_walltime_min: int


@dataclasses.dataclass
class ClusterProfile:
    name: str = "local"
    scheduler: Literal["local", "slurm", "lsf"] = "local"
    template: Optional[str] = None  # job-script template, relative to the repository's slurm/ or lsf/
    script_via_stdin: bool = False  # submit as "bsub < script": LSF reads #BSUB lines from a file argument
    # only with LSB_BSUB_PARSE_SCRIPT=Y (as on Summit)
    step_launcher: Literal["local", "mpirun", "srun", "jsrun", "torchrun"] = "local"
    allows_torchrun: bool = True
    account: Optional[str] = None
    partition: Optional[str] = None
    qos: Optional[str] = None
    queue: Optional[str] = None
    alloc_flags: Optional[str] = None
    # node shape
    devices_per_node: int = 1  # GPUs (GCDs on MI250X) per node; 1 "device" per run on a CPU-only machine
    device: str = "cpu"
    cores_per_node: int = 2
    cores_per_task: int = 1
    gpus_per_task: int = 0
    gpu_bind: Optional[str] = None
    cpu_bind: Optional[str] = None  # core binding of a step's tasks (jsrun -b, e.g. packed:7)
    cuda_aware_mpi: bool = False  # GPU buffers through MPI (jsrun --smpiargs=-gpu on Summit)
    dist_backend: Literal["gloo", "nccl"] = "gloo"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device_peak_flops: Optional[float] = None  # dense peak per device at `precision`, for MFU
    assumed_mfu: float = 0.3  # planning estimate until a calibration run measures it
    network_interface: Optional[str] = None  # rendezvous interface (Frontier hsn0, Summit ib0)
    # environment the job script sets up
    modules: list[str] = dataclasses.field(default_factory=list)
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    multinode_env: dict[str, str] = dataclasses.field(default_factory=dict)  # only for runs on >1 node
    setup: list[str] = dataclasses.field(default_factory=list)  # extra shell lines before the steps
    # queue policy and allocation
    queue_bins: list[QueueBin] = dataclasses.field(default_factory=list)
    max_eligible_jobs: int = 4
    max_queued_jobs: int = 100
    max_concurrent_steps: int = 100
    max_retries: int = 3  # a run failing this many times in a row is no longer retried
    signal_before_min: int = 5  # warning signal (USR2) this long before the walltime
    allocation_node_hours: Optional[float] = None  # what is left of the allocation
    # local execution
    max_parallel_runs: int = 1
    cores_per_run: int = 1

    def __post_init__(self):
        for name in ("devices_per_node", "cores_per_node", "cores_per_task", "max_parallel_runs", "cores_per_run"):
            if getattr(self, name) < 1:
                raise ValueError(f"cluster.{name}: must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.assumed_mfu <= 1.0:
            raise ValueError(f"cluster.assumed_mfu: must be in (0, 1], got {self.assumed_mfu}")
        if self.step_launcher == "torchrun" and not self.allows_torchrun:
            raise ValueError(f"cluster.step_launcher: this site ({self.name}) forbids torchrun")
