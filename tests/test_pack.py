"""The packer: runs into jobs that respect a site's bins, step and job limits, and fill their lanes."""

from __future__ import annotations

import random

import pytest

from launcher.config.cluster import ClusterProfile, QueueBin
from launcher.config.compose import compose
from launcher.config.validate import validate
from launcher.errors import UserError
from launcher.sweep.pack import PackItem, PackPolicy, one_job_per_run, pack, pack_array


def frontier_policy(**changes) -> PackPolicy:
    raw = compose(["cluster=frontier"])["cluster"]
    return PackPolicy.from_profile(validate(ClusterProfile, {**raw, **changes}, "cluster"))


def items(n: int, hours: float | list[float], nodes: int = 1, ranks: int = 1) -> list[PackItem]:
    hs = hours if isinstance(hours, list) else [hours] * n
    return [PackItem(f"r{i:03d}", h, nodes, ranks) for i, h in enumerate(hs)]


def assert_valid(jobs, runs, policy):
    placed = [i.name for j in jobs for i in j.items]
    assert sorted(placed) == sorted(r.name for r in runs), "every run in exactly one job"
    for job in jobs:
        home = policy.bin_for(job.nodes)
        assert job.walltime_min <= home.max_walltime_min
        assert 1 <= job.lanes <= policy.max_lanes
        assert job.lanes <= len(job.items)
        nodes, ranks = job.shape
        if nodes == 1:
            assert job.nodes == -(-job.lanes // (policy.devices_per_node // ranks))
        else:
            assert job.nodes == job.lanes * nodes
    assert len(jobs) <= policy.max_jobs * len({r.shape for r in runs})


def test_small_sweep_is_one_small_job_that_fits_its_bin():
    policy = frontier_policy()
    runs = items(6, [0.2, 0.1, 0.3, 0.05, 0.2, 0.1])
    jobs = pack(runs, policy)
    assert_valid(jobs, runs, policy)
    assert len(jobs) == 1
    job = jobs[0]
    assert job.nodes == 1 and job.bin.max_nodes == 91
    # longest first, so the list schedule of the lanes is balanced
    assert [i.hours for i in job.items] == sorted((r.hours for r in runs), reverse=True)
    work = sum(r.hours + policy.run_overhead_h for r in runs)
    assert job.walltime_min >= 60 * (work / job.lanes)


def test_large_sweep_respects_step_limit_eligible_jobs_and_bins():
    policy = frontier_policy()
    rng = random.Random(0)
    runs = items(500, [rng.uniform(0.2, 3.0) for _ in range(500)])
    jobs = pack(runs, policy)
    assert_valid(jobs, runs, policy)
    assert len(jobs) == policy.max_jobs  # more work than 4 jobs hold: they continue themselves
    # 100 steps at once at most, in whole nodes: 96 lanes on 12 nodes, each busy until the warning
    assert all(j.lanes == 96 and j.nodes == 12 and j.walltime_min == 120 for j in jobs)


def test_multinode_runs_reach_the_longer_bins():
    policy = frontier_policy()
    runs = items(300, 10.0, nodes=2, ranks=16)
    jobs = pack(runs, policy)
    assert_valid(jobs, runs, policy)
    # 2-node lanes: 100 steps = 200 nodes, bin 3 (184+ nodes) gives 12 h, the fewest jobs
    assert max(j.walltime_min for j in jobs) == 720
    assert all(j.nodes >= 184 for j in jobs)


def test_shapes_pack_separately():
    policy = frontier_policy()
    runs = items(4, 0.5) + [PackItem("big", 0.5, 1, 8), PackItem("huge", 0.5, 2, 16)]
    jobs = pack(runs, policy)
    assert_valid(jobs, runs, policy)
    assert sorted(j.shape for j in jobs) == [(1, 1), (1, 8), (2, 16)]


def test_wall_time_goal_spreads_runs_over_lanes():
    raw = compose(["cluster=dev_slurm"])["cluster"]
    policy = PackPolicy.from_profile(validate(ClusterProfile, raw, "cluster"))
    runs = items(6, 0.001)
    (job,) = pack(runs, policy)
    assert job.lanes == 6 and job.nodes == 3  # two one-rank runs per 2-CPU node


def test_fixed_walltime_and_its_bin():
    policy = frontier_policy(walltime_min=30)
    jobs = pack(items(3, 5.0), policy)
    assert all(j.walltime_min == 30 for j in jobs)
    with pytest.raises(UserError, match="walltime_min"):
        pack(items(3, 1.0), frontier_policy(walltime_min=2000))


def test_array_gives_each_task_the_walltime_of_the_longest_run():
    policy = frontier_policy()
    runs = items(10, [0.1 * (i + 1) for i in range(10)])
    (job,) = pack_array(runs, policy)
    assert job.lanes == 1 and job.nodes == 1 and len(job.items) == 10
    assert job.walltime_min >= 60 * 1.0  # the 1.0 h run fits


def test_bad_shapes_are_refused():
    policy = frontier_policy()
    with pytest.raises(UserError, match="devices_per_node"):
        pack([PackItem("x", 1.0, 1, 9)], policy)
    with pytest.raises(UserError, match="at least one rank per node"):
        pack([PackItem("x", 1.0, 4, 2)], policy)
    with pytest.raises(UserError, match="largest queue bin"):
        policy.bin_for(10**6)


def test_no_bins_is_a_config_error():
    with pytest.raises(UserError, match="queue_bins"):
        PackPolicy.from_profile(ClusterProfile(name="x", scheduler="slurm"))


def test_packing_uses_node_hours_better_than_one_job_per_run():
    policy = frontier_policy()
    rng = random.Random(1)
    runs = items(120, [rng.uniform(0.1, 1.5) for _ in range(120)])

    def allocated(jobs):  # node-hours if every job ran to its last lane's end (estimates exact)
        total = 0.0
        for job in jobs:
            lanes = job.schedule(policy)
            makespan = max(sum(i.hours + policy.run_overhead_h for i in lane) for lane in lanes)
            total += job.nodes * (makespan + policy.job_overhead_h)
        return total

    used = sum(r.hours for r in runs) / policy.devices_per_node
    packed, single = used / allocated(pack(runs, policy)), used / allocated(one_job_per_run(runs, policy))
    assert single < 0.13  # a one-GCD run holds a whole 8-GCD node
    assert packed > 0.8


def test_bin_lookup_uses_upper_edges():
    policy = PackPolicy(
        devices_per_node=8,
        bins=(QueueBin(91, 120), QueueBin(183, 360), QueueBin(9408, 720)),
        max_lanes=100,
        max_jobs=4,
        run_overhead_h=0.05,
        job_overhead_h=0.03,
        signal_h=0.1,
        safety=1.25,
    )
    assert policy.bin_for(91).max_walltime_min == 120
    assert policy.bin_for(92).max_walltime_min == 360
    assert policy.min_nodes(QueueBin(183, 360)) == 92
