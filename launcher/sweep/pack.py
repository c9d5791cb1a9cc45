"""Packing: a sweep's runs into allocation-sized jobs that fit a site's queue bins and job limits.

A site gives small jobs short walltimes (Frontier: up to 91 nodes for 2 h) and lets a user have only a
few eligible jobs (4), so one job per run wastes most of a node on every one-GPU run and queues four
runs at a time. A packed job instead holds *lanes*: a lane is the slice of the allocation one run
occupies (some GPUs of a node, or whole nodes), and each lane takes the next unstarted run of its job
as soon as its previous run ends (longest first), so lanes stay busy whatever the estimates got wrong.

A job is filled with about as much work as its lanes can do before the walltime warning. Runs still
unstarted at the warning, and runs cut by it (they checkpoint), go to the job's continuation, which is
packed again from what is left: smaller when fewer runs remain. Each run keeps its own checkpoints, so
cutting a run costs one restart, not its progress.

Nothing here knows a scheduler: jobs are lanes, nodes and minutes; the adapters turn them into scripts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Literal, Optional

from launcher.config.cluster import ClusterProfile, QueueBin
from launcher.errors import UserError

WALLTIME_STEP_MIN = 5  # requested walltimes are rounded up to this


@dataclasses.dataclass(frozen=True)
class PackItem:
    """One run as the packer sees it: how long it should take and the slice of a job it needs."""

    name: str
    hours: float  # estimated wall-clock hours of the run (without start-up overhead)
    nodes: int = 1  # nodes one run spans
    ranks: int = 1  # ranks (devices) of one run, over all its nodes

    @property
    def shape(self) -> tuple[int, int]:
        return self.nodes, self.ranks


@dataclasses.dataclass(frozen=True)
class PackPolicy:
    """What a site allows and what a run costs beyond its training time, from the cluster profile."""

    devices_per_node: int
    bins: tuple[QueueBin, ...]
    max_lanes: int  # concurrent job steps per job
    max_jobs: int  # jobs submitted at once (each continues itself); more would only wait as held jobs
    run_overhead_h: float  # start-up, rendezvous, checkpoint load and save of one run
    job_overhead_h: float  # module loads and environment set-up of one job
    signal_h: float  # the walltime warning comes this early; runs checkpoint and the job ends
    safety: float  # estimates are multiplied by this where a walltime must be long enough
    fixed_walltime_min: Optional[int] = None  # every job asks for exactly this
    goal: Literal["node_hours", "wall_time"] = "node_hours"

    @classmethod
    def from_profile(cls, profile: ClusterProfile) -> PackPolicy:
        bins = tuple(sorted(profile.queue_bins, key=lambda b: b.max_nodes))
        if not bins:
            raise UserError(
                f"cluster.queue_bins: profile {profile.name} has none; give at least one "
                "{max_nodes, max_walltime_min}"
            )
        return cls(
            devices_per_node=profile.devices_per_node,
            bins=bins,
            max_lanes=profile.max_concurrent_steps,
            max_jobs=profile.max_eligible_jobs,
            run_overhead_h=profile.run_overhead_min / 60.0,
            job_overhead_h=profile.job_overhead_min / 60.0,
            signal_h=profile.signal_before / 3600.0,
            safety=profile.walltime_safety,
            fixed_walltime_min=profile.walltime_min,
            goal=profile.pack_goal,
        )

    def bin_for(self, nodes: int) -> QueueBin:
        """The queue bin a job of ``nodes`` nodes falls in (bins sorted by max_nodes)."""
        for b in self.bins:
            if nodes <= b.max_nodes:
                return b
        raise UserError(
            f"a job of {nodes} nodes is larger than the largest queue bin "
            f"({self.bins[-1].max_nodes} nodes, cluster.queue_bins)"
        )

    def min_nodes(self, b: QueueBin) -> int:
        """The smallest job in bin ``b``: one more node than the bin below it."""
        below = [x.max_nodes for x in self.bins if x.max_nodes < b.max_nodes]
        return max(below, default=0) + 1

    def walltime_min(self, b: QueueBin) -> int:
        return self.fixed_walltime_min if self.fixed_walltime_min is not None else b.max_walltime_min

    def lane_hours(self, b: QueueBin) -> float:
        """Time a lane of a job in bin ``b`` trains before the warning (start-ups of runs included)."""
        return self.walltime_min(b) / 60.0 - self.signal_h - self.job_overhead_h


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How lanes of one run shape fill nodes: several runs share a node, or one run spans nodes."""

    lanes_per_node: int  # 0 when a lane spans nodes
    nodes_per_lane: int

    @classmethod
    def of(cls, shape: tuple[int, int], devices_per_node: int) -> Geometry:
        nodes, ranks = shape
        if nodes < 1 or ranks < 1:
            raise UserError(f"a run needs >= 1 node and >= 1 rank, got {nodes} nodes and {ranks} ranks")
        if nodes == 1:
            if ranks > devices_per_node:
                raise UserError(
                    f"a run of {ranks} ranks on 1 node needs more than the "
                    f"{devices_per_node} devices of a node (cluster.devices_per_node); "
                    "give the sweep more nodes per run"
                )
            return cls(lanes_per_node=devices_per_node // ranks, nodes_per_lane=1)
        if ranks < nodes:
            raise UserError(f"a run over {nodes} nodes needs at least one rank per node, got {ranks} ranks")
        return cls(lanes_per_node=0, nodes_per_lane=nodes)

    def nodes(self, lanes: int) -> int:
        if self.lanes_per_node:
            return math.ceil(lanes / self.lanes_per_node)
        return lanes * self.nodes_per_lane

    def max_lanes(self, nodes: int) -> int:
        return nodes * self.lanes_per_node if self.lanes_per_node else nodes // self.nodes_per_lane

    def lanes_for(self, nodes: int) -> int:
        """The fewest lanes whose job has at least ``nodes`` nodes (whole nodes)."""
        return nodes * self.lanes_per_node if self.lanes_per_node else math.ceil(nodes / self.nodes_per_lane)

    def whole_nodes(self, lanes: int) -> int:
        """``lanes`` rounded down to fill whole nodes (a node's idle devices are allocated all the same)."""
        if self.lanes_per_node and lanes >= self.lanes_per_node:
            return lanes - lanes % self.lanes_per_node
        return lanes


@dataclasses.dataclass(frozen=True)
class PackedJob:
    """One job: its runs in the order lanes take them, its lanes, nodes and requested walltime."""

    items: tuple[PackItem, ...]
    lanes: int
    nodes: int
    walltime_min: int
    bin: QueueBin

    @property
    def shape(self) -> tuple[int, int]:
        return self.items[0].shape

    def schedule(self, policy: PackPolicy) -> list[list[PackItem]]:
        """The runs each lane would train if the estimates were exact (list scheduling, items in order)."""
        loads = [0.0] * self.lanes
        lanes: list[list[PackItem]] = [[] for _ in range(self.lanes)]
        for item in self.items:
            lane = min(range(self.lanes), key=loads.__getitem__)
            lanes[lane].append(item)
            loads[lane] += item.hours + policy.run_overhead_h
        return lanes


def pack(items: Iterable[PackItem], policy: PackPolicy) -> list[PackedJob]:
    """Runs -> jobs: each run shape on its own, into the queue bin that needs the fewest jobs.

    At most ``policy.max_jobs`` jobs per shape: more could not run at once under the site's eligible-job
    limit, so their runs are better placed in the first jobs' continuations.
    """
    by_shape: dict[tuple[int, int], list[PackItem]] = {}
    for item in items:
        by_shape.setdefault(item.shape, []).append(item)
    jobs: list[PackedJob] = []
    for shape, group in by_shape.items():
        jobs += _pack_shape(
            sorted(group, key=lambda i: (-i.hours, i.name)), Geometry.of(shape, policy.devices_per_node), policy
        )
    return jobs


def _pack_shape(items: Sequence[PackItem], geo: Geometry, policy: PackPolicy) -> list[PackedJob]:
    b, lanes_max = _choose_bin(items, geo, policy)
    lane_h = policy.lane_hours(b)
    work = sum(i.hours + policy.run_overhead_h for i in items)
    if policy.goal == "wall_time":
        jobs = min(policy.max_jobs, math.ceil(len(items) / lanes_max))
    else:
        jobs = min(policy.max_jobs, len(items), max(1, math.ceil(work / (lanes_max * lane_h))))
    shares = _split(items, jobs, policy.run_overhead_h)
    return [_job(share, geo, b, lanes_max, policy) for share in shares if share]


def _choose_bin(items: Sequence[PackItem], geo: Geometry, policy: PackPolicy) -> tuple[QueueBin, int]:
    """The bin whose full jobs hold the sweep's work in the fewest jobs (ties: the shortest walltime).

    A bin counts only if a job of that many lanes reaches it (the concurrent-steps limit may cap jobs
    below a big bin's smallest size) and if its lanes have time to train after the warning.
    """
    work = sum(i.hours + policy.run_overhead_h for i in items)
    best: Optional[tuple[tuple, QueueBin, int]] = None
    for b in policy.bins:
        lanes = min(policy.max_lanes, geo.max_lanes(b.max_nodes), len(items))
        lanes = lanes if policy.goal == "wall_time" else geo.whole_nodes(lanes)
        lane_h = policy.lane_hours(b)
        if lanes < 1 or lane_h <= 0 or geo.nodes(lanes) < policy.min_nodes(b):
            continue
        if policy.fixed_walltime_min is not None and policy.fixed_walltime_min > b.max_walltime_min:
            continue
        needed = math.ceil(len(items) / lanes) if policy.goal == "wall_time" else math.ceil(work / (lanes * lane_h))
        key = (max(1, needed), policy.walltime_min(b))
        if best is None or key < best[0]:
            best = (key, b, lanes)
    if best is None:
        fixed = policy.fixed_walltime_min
        if fixed is not None:
            nodes = geo.nodes(min(policy.max_lanes, geo.max_lanes(policy.bins[-1].max_nodes), len(items)))
            reach = policy.bin_for(nodes)
            raise UserError(
                f"cluster.walltime_min: {fixed} min is more than the {reach.max_walltime_min} min the "
                f"site allows jobs of up to {reach.max_nodes} nodes, and these runs fill at most "
                f"{nodes} nodes (cluster.queue_bins)"
            )
        raise UserError(
            "cluster.queue_bins: no bin leaves time to train after the walltime warning and the job's "
            "set-up (cluster.signal_before_min, cluster.job_overhead_min)"
        )
    return best[1], best[2]


def _split(items: Sequence[PackItem], jobs: int, run_overhead_h: float) -> list[list[PackItem]]:
    """Share runs (longest first) between ``jobs`` jobs, each run to the least loaded job."""
    loads = [0.0] * jobs
    shares: list[list[PackItem]] = [[] for _ in range(jobs)]
    for item in items:
        j = min(range(jobs), key=loads.__getitem__)
        shares[j].append(item)
        loads[j] += item.hours + run_overhead_h
    return shares


def _job(items: list[PackItem], geo: Geometry, b: QueueBin, lanes_max: int, policy: PackPolicy) -> PackedJob:
    """A job for ``items`` and a walltime to match.

    Goal node_hours: only as many lanes (in whole nodes) as the work keeps busy until the warning, so
    no lane idles while others train; what does not fit goes to the continuation. Less work than one
    node's lanes can hold gets that one node's lanes, and a walltime for the estimate. Goal wall_time:
    a lane per run, up to the limit.
    """
    work = sum(i.hours + policy.run_overhead_h for i in items)
    lane_h = policy.lane_hours(b)
    # a run longer than a lane is cut at the warning: in this job it keeps one lane busy, no more
    busy = max(1, math.floor(sum(min(i.hours + policy.run_overhead_h, lane_h) for i in items) / lane_h))
    if policy.goal == "wall_time":
        lanes = min(lanes_max, len(items))
    elif geo.lanes_per_node and busy < geo.lanes_per_node:
        lanes = min(lanes_max, len(items), geo.lanes_per_node)
    else:
        lanes = geo.whole_nodes(min(lanes_max, len(items), busy))
    reach = geo.lanes_for(policy.min_nodes(b))
    if lanes < reach <= min(lanes_max, len(items)):
        lanes = reach  # stay in the bin whose walltime the work was sized for
    nodes = geo.nodes(lanes)
    home = policy.bin_for(nodes)  # a small job may fall in a lower bin, with a shorter walltime
    limit = policy.walltime_min(home) if policy.fixed_walltime_min is None else policy.fixed_walltime_min
    if policy.fixed_walltime_min is not None:
        walltime = policy.fixed_walltime_min
    else:
        longest = max(i.hours for i in items) + policy.run_overhead_h
        makespan = work / lanes + longest * (lanes - 1) / lanes  # list scheduling's bound
        need_h = policy.job_overhead_h + policy.signal_h + makespan * policy.safety
        walltime = min(limit, WALLTIME_STEP_MIN * math.ceil(need_h * 60 / WALLTIME_STEP_MIN))
    return PackedJob(items=tuple(items), lanes=lanes, nodes=nodes, walltime_min=walltime, bin=home)


def one_job_per_run(items: Iterable[PackItem], policy: PackPolicy) -> list[PackedJob]:
    """The baseline packing is measured against: every run its own job of whole nodes."""
    jobs = []
    for item in items:
        geo = Geometry.of(item.shape, policy.devices_per_node)
        nodes = geo.nodes(1)
        b = policy.bin_for(nodes)
        jobs.append(_job([item], geo, b, 1, policy))
    return jobs


def pack_array(items: Iterable[PackItem], policy: PackPolicy) -> list[PackedJob]:
    """Runs -> one job array per run shape (one run per task), each task's walltime fit for the longest run."""
    by_shape: dict[tuple[int, int], list[PackItem]] = {}
    for item in items:
        by_shape.setdefault(item.shape, []).append(item)
    jobs = []
    for shape, group in by_shape.items():
        geo = Geometry.of(shape, policy.devices_per_node)
        group = sorted(group, key=lambda i: (-i.hours, i.name))
        task = _job(group[:1], geo, policy.bin_for(geo.nodes(1)), 1, policy)
        jobs.append(dataclasses.replace(task, items=tuple(group)))
    return jobs
