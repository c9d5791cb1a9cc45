"""Packing efficiency on Frontier's queue policy: node-hours trained / node-hours allocated.

A 200-run isoFLOP sweep of one-GCD runs (4 budgets x 50 sizes, planned by ``launcher.sweep.plan`` for
cluster=frontier, so its hours come from the profile's peak x assumed MFU) is executed in simulation:

- packed: ``launcher.sweep.pack`` builds at most 4 jobs (the eligible-job limit); in each job, lanes take the
  next run when free, every run start costs the profile's run_overhead_min, the USR2 warning comes
  signal_before_min before the walltime, running runs checkpoint (1 min) and stop, and each job's
  unfinished runs are packed again into its continuation, until every run is done;
- baseline: one job per run (a whole node for a one-GCD run), continued the same way.

True run times differ from the estimates (lognormal, sigma 0.15, fixed seed), so lanes end unevenly
as in life. Allocated = nodes x (job set-up + until the last lane ends); trained = GCD-hours of
training / 8. Prints both efficiencies and their ratio. Goal: packed >= 90%.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from launcher.sweep.pack import PackedJob, PackItem, PackPolicy, one_job_per_run, pack
from launcher.sweep.plan import build_plan

SAVE_H = 1 / 60  # checkpoint at the warning
SIGMA = 0.15


def sweep_overrides() -> list[str]:
    sizes = [f"{30e6 * (1.2e9 / 30e6) ** (i / 49):.3g}" for i in range(50)]
    return [
        "sweep=isoflop_frontier",
        "cluster=frontier",
        "sweep.name=pack_bench",
        "sweep.nodes=1",
        "sweep.ranks_per_run=1",
        "sweep.budgets=[1e17,3e17,1e18,3e18]",
        "sweep.params_per_budget=[]",
        f"sweep.params=[{','.join(sizes)}]",
        "sweep.min_steps=1",
        "sweep.global_batch_tokens=524288",
    ]


@dataclasses.dataclass
class Run:
    name: str
    est_h: float  # the plan's estimate of the whole run
    true_h: float  # what it really takes
    left_h: float  # true hours still to train

    def item(self) -> PackItem:  # the packer sees the estimate scaled by the progress state.json reports
        return PackItem(self.name, self.est_h * self.left_h / self.true_h)


def run_job(job: PackedJob, runs: dict[str, Run], policy: PackPolicy) -> tuple[float, float, list[str]]:
    """Simulate one job: (node-hours allocated, GCD-hours trained, runs left for the continuation)."""
    warn = job.walltime_min / 60 - policy.signal_h - policy.job_overhead_h  # on the lanes' clock
    queue = [i.name for i in job.items]
    lanes = [(0.0, k) for k in range(job.lanes)]
    heapq.heapify(lanes)
    trained, left, ends = 0.0, [], []
    while queue:
        free, k = heapq.heappop(lanes)
        if free >= warn:
            ends.append(free)
            continue_lanes = [t for t, _ in lanes]
            ends += continue_lanes
            lanes = []
            break
        run = runs[queue.pop(0)]
        start = free + policy.run_overhead_h - SAVE_H  # start-up; the save is the rest of the overhead
        if start >= warn:
            left.append(run.name)
            heapq.heappush(lanes, (warn, k))
            continue
        done = min(run.left_h, warn - start)
        trained += done
        run.left_h -= done
        if run.left_h > 1e-9:
            left.append(run.name)
        heapq.heappush(lanes, (start + done + SAVE_H, k))
    ends += [t for t, _ in lanes]
    left += queue
    elapsed = policy.job_overhead_h + max(ends, default=0.0)
    return job.nodes * elapsed, trained, left


def execute(
    runs: dict[str, Run], first: list[PackedJob], policy: PackPolicy, continue_policy: PackPolicy, repack
) -> tuple[float, float, int, int]:
    """Run jobs and their continuation chains until every run is done.

    Returns node-hours allocated, GCD-hours trained, jobs, and the longest chain of jobs (each waits
    for the one before it: the sweep's wall-clock time is at least that many walltimes).
    """
    pending = [(job, 1) for job in first]
    allocated, trained, count, chain = 0.0, 0.0, 0, 0
    while pending:
        job, depth = pending.pop()
        a, t, left = run_job(job, runs, policy)
        allocated, trained, count, chain = allocated + a, trained + t, count + 1, max(chain, depth)
        if left:
            pending += [(j, depth + 1) for j in repack([runs[n].item() for n in left], continue_policy)]
    return allocated, trained, count, chain


def main() -> int:
    t0 = time.perf_counter()
    plan = build_plan(sweep_overrides())
    policy = PackPolicy.from_profile(plan.cluster)
    dpn = policy.devices_per_node
    rng = random.Random(2024)
    est = {r.name: r.est_node_hours * dpn / r.ranks_per_run for r in plan.runs}
    true = {n: h * rng.lognormvariate(0.0, SIGMA) for n, h in est.items()}

    def fresh() -> dict[str, Run]:
        return {n: Run(n, est[n], true[n], true[n]) for n in est}

    runs = fresh()
    packed = execute(
        runs, pack([r.item() for r in runs.values()], policy), policy, dataclasses.replace(policy, max_jobs=1), pack
    )
    runs = fresh()
    single = execute(runs, one_job_per_run([r.item() for r in runs.values()], policy), policy, policy, one_job_per_run)
    work = sum(true.values()) / dpn
    print(
        f"sweep: {len(plan.runs)} runs of 1 GCD on {plan.cluster.name} ({sum(est.values()):.0f} GCD-hours estimated, "
        f"{work * dpn:.0f} true); bins {[(b.max_nodes, b.max_walltime_min) for b in policy.bins]}, "
        f"{policy.max_jobs} eligible jobs, {policy.max_lanes} steps per job"
    )
    for label, (allocated, trained, jobs, chain) in (("packed", packed), ("one job per run", single)):
        assert abs(trained / dpn - work) < 1e-6 * work, "every run must finish"
        print(
            f"{label:>16}: {jobs:4d} jobs (longest chain {chain:2d}), {allocated:8.1f} node-hours allocated, "
            f"efficiency {work / allocated:6.1%}"
        )
    ratio = single[0] / packed[0]
    print(
        f"packed / one job per run: {work / packed[0]:.1%} vs {work / single[0]:.1%} "
        f"({ratio:.1f}x fewer node-hours); goal >= 90%: {'met' if work / packed[0] >= 0.9 else 'NOT met'}"
    )
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
