"""jsrun resource-set arithmetic against the layouts in the OLCF Summit user guide ("Resource Sets")."""

from __future__ import annotations

import dataclasses

import pytest

from launcher.config.cluster import ClusterProfile
from launcher.config.compose import compose
from launcher.config.validate import validate
from launcher.errors import UserError
from launcher.schedulers.jsrun import ResourceSets, jsrun_argv, resource_sets, resource_sets_for_nodes, rs_per_node


@pytest.fixture(scope="module")
def summit() -> ClusterProfile:
    return validate(ClusterProfile, compose(["cluster=summit"])["cluster"], "cluster")


def test_summit_whole_nodes_is_the_documented_layout(summit):
    # 6 resource sets per node, 1 rank, 7 cores and 1 GPU each, packed binding over the 7 cores
    for nodes in (1, 2, 46, 922):
        rs = resource_sets_for_nodes(summit, nodes)
        assert rs.argv() == ["jsrun", f"-n{6 * nodes}", "-a1", "-c7", "-g1", "-r6", "-bpacked:7"]
        assert rs.nodes == nodes and rs.ranks == 6 * nodes


@pytest.mark.parametrize("ranks,nodes,per_host", [(1, 1, 1), (4, 1, 4), (6, 1, 6), (7, 2, 6), (12, 2, 6), (13, 3, 6)])
def test_partial_nodes_fill_hosts_in_order(summit, ranks, nodes, per_host):
    rs = resource_sets(summit, ranks)
    assert (rs.count, rs.nodes, rs.rs_per_host) == (ranks, nodes, per_host)
    # the cores and GPUs of one host's resource sets never exceed the host
    assert rs.rs_per_host * rs.cores_per_rs <= summit.cores_per_node
    assert rs.rs_per_host * rs.gpus_per_rs <= summit.devices_per_node


def test_smpiargs_only_for_cuda_aware_mpi(summit):
    assert not any(a.startswith("--smpiargs") for a in jsrun_argv(summit, 6))
    aware = dataclasses.replace(summit, cuda_aware_mpi=True)
    assert jsrun_argv(aware, 6)[-1] == "--smpiargs=-gpu"


def test_two_gpus_per_rank_halves_the_resource_sets(summit):
    wide = dataclasses.replace(summit, gpus_per_task=2, cores_per_task=14)
    assert rs_per_node(wide) == 3
    assert jsrun_argv(wide, 6) == ["jsrun", "-n6", "-a1", "-c14", "-g2", "-r3", "-bpacked:14"]
    # the same shape asked for per step, the profile unchanged (a submitit job with 3 ranks of 2 GPUs)
    assert resource_sets(summit, 6, gpus_per_rank=2, cores_per_rank=14).argv() == jsrun_argv(wide, 6)
    whole_node = resource_sets(summit, 2, gpus_per_rank=6, cores_per_rank=42)
    assert (whole_node.nodes, whole_node.rs_per_host, whole_node.bind) == (2, 1, "packed:42")


def test_a_literal_binding_is_passed_through(summit):
    assert jsrun_argv(dataclasses.replace(summit, cpu_bind="rs"), 6)[-1] == "-brs"
    assert not any(a.startswith("-b") for a in jsrun_argv(dataclasses.replace(summit, cpu_bind=None), 6))


def test_cpu_only_resource_sets_split_the_cores():
    cpu = ClusterProfile(cores_per_node=42, cores_per_task=21, gpus_per_task=0, devices_per_node=1)
    assert resource_sets_for_nodes(cpu, 2) == ResourceSets(
        count=4, tasks_per_rs=1, cores_per_rs=21, gpus_per_rs=0, rs_per_host=2
    )


@pytest.mark.parametrize(
    "change,field",
    [
        ({"gpus_per_task": 7}, "cluster.gpus_per_task"),
        ({"cores_per_task": 8}, "cluster.cores_per_task"),  # 6 x 8 > 42 cores
    ],
)
def test_shapes_that_do_not_fit_a_node_name_the_field(summit, change, field):
    with pytest.raises(UserError, match=field):
        rs_per_node(dataclasses.replace(summit, **change))


def test_zero_ranks_or_nodes_is_refused(summit):
    with pytest.raises(UserError, match="ranks"):
        resource_sets(summit, 0)
    with pytest.raises(UserError, match="nodes"):
        resource_sets_for_nodes(summit, 0)
