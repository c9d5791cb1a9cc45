"""jsrun resource sets: how one run's ranks map onto the nodes of an LSF + JSM allocation (Summit).

A resource set (RS) is a cgroup inside one node holding some cores and GPUs; one ``jsrun`` starts
``-n`` identical resource sets, at most ``-r`` per node (OLCF Summit user guide, "Resource Sets").
Each rank gets its own RS with ``gpus_per_task`` GPUs and the ``cores_per_task`` cores beside them,
so the concurrent ``jsrun`` steps of a packed job never share a GPU, and binding the task to all of
its RS's cores (``-b packed:7``) keeps jsrun's default of one core per task from starving the
data loader. The arithmetic lives here, as a tested function, rather than in a template.
"""

from __future__ import annotations

import dataclasses
import math

from launcher.config.cluster import ClusterProfile
from launcher.errors import UserError

# Spectrum MPI's switch for CUDA-aware MPI (OLCF Summit user guide, "CUDA-Aware MPI").
CUDA_AWARE_SMPIARGS = "-gpu"


@dataclasses.dataclass(frozen=True)
class ResourceSets:
    """One jsrun step's shape: ``count`` resource sets of ``tasks_per_rs`` ranks each."""

    count: int  # -n, --nrs
    tasks_per_rs: int  # -a, --tasks_per_rs
    cores_per_rs: int  # -c, --cpu_per_rs
    gpus_per_rs: int  # -g, --gpu_per_rs
    rs_per_host: int  # -r, --rs_per_host
    bind: str | None = None  # -b, --bind (e.g. packed:7)
    smpiargs: str | None = None  # --smpiargs, only for CUDA-aware MPI

    @property
    def ranks(self) -> int:
        return self.count * self.tasks_per_rs

    @property
    def nodes(self) -> int:
        """Nodes the step occupies: resource sets never span a node."""
        return math.ceil(self.count / self.rs_per_host)

    def argv(self) -> list[str]:
        """The ``jsrun`` prefix of the step's command line, one argument per item."""
        args = [
            "jsrun",
            f"-n{self.count}",
            f"-a{self.tasks_per_rs}",
            f"-c{self.cores_per_rs}",
            f"-g{self.gpus_per_rs}",
            f"-r{self.rs_per_host}",
        ]
        if self.bind:
            args.append(f"-b{self.bind}")
        if self.smpiargs:
            args.append(f"--smpiargs={self.smpiargs}")
        return args


def rs_per_node(profile: ClusterProfile, gpus_per_rank: int | None = None, cores_per_rank: int | None = None) -> int:
    """How many one-rank resource sets fit on a node: one per ``gpus_per_rank`` GPUs, else per core group.

    The shape is the profile's (``gpus_per_task``, ``cores_per_task``) unless given.
    """
    gpus = profile.gpus_per_task if gpus_per_rank is None else gpus_per_rank
    cores = profile.cores_per_task if cores_per_rank is None else cores_per_rank
    if gpus > 0:
        per_node = profile.devices_per_node // gpus
        if per_node < 1:
            raise UserError(
                f"cluster.gpus_per_task: {gpus} GPUs per rank is more than the node's "
                f"{profile.devices_per_node} (cluster.devices_per_node)"
            )
    else:
        per_node = profile.cores_per_node // cores if cores > 0 else 0
    if per_node < 1 or per_node * cores > profile.cores_per_node:
        raise UserError(
            f"cluster.cores_per_task: {max(per_node, 1)} resource sets of {cores} cores "
            f"do not fit in cluster.cores_per_node={profile.cores_per_node}"
        )
    return per_node


def resource_sets(
    profile: ClusterProfile, ranks: int, gpus_per_rank: int | None = None, cores_per_rank: int | None = None
) -> ResourceSets:
    """The resource sets for a run of ``ranks`` ranks, one rank per resource set.

    ``cpu_bind: packed`` in the profile binds each rank to all cores of its resource set (packed:<cores>).
    """
    if ranks < 1:
        raise UserError(f"ranks: a jsrun step needs at least 1 rank, got {ranks}")
    gpus = profile.gpus_per_task if gpus_per_rank is None else gpus_per_rank
    cores = profile.cores_per_task if cores_per_rank is None else cores_per_rank
    per_node = rs_per_node(profile, gpus, cores)
    return ResourceSets(
        count=ranks,
        tasks_per_rs=1,
        cores_per_rs=cores,
        gpus_per_rs=gpus,
        rs_per_host=min(per_node, ranks),
        bind=f"packed:{cores}" if profile.cpu_bind == "packed" else profile.cpu_bind,
        smpiargs=CUDA_AWARE_SMPIARGS if profile.cuda_aware_mpi else None,
    )


def resource_sets_for_nodes(profile: ClusterProfile, nodes: int) -> ResourceSets:
    """Resource sets filling ``nodes`` whole nodes (Summit: ``-n 6*nodes -r6``)."""
    if nodes < 1:
        raise UserError(f"nodes: a jsrun step needs at least 1 node, got {nodes}")
    return resource_sets(profile, nodes * rs_per_node(profile))


def jsrun_argv(profile: ClusterProfile, ranks: int) -> list[str]:
    """The ``jsrun`` prefix that starts ``ranks`` ranks of one run."""
    return resource_sets(profile, ranks).argv()
