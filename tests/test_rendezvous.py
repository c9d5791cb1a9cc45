"""Rendezvous: every launcher's variables, ports, errors, timeouts, and real ranks under mpirun."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import needs_mpi
from launcher.errors import UserError
from launcher.run.rendezvous import (
    MPI_SOURCES,
    DistEnv,
    connect,
    derive_port,
    discover,
    expand_hostlist,
    expand_tasks_per_node,
    interface_address,
    resolve,
)

REPO = Path(__file__).resolve().parent.parent
HOST = socket.gethostname()


def openmpi_env(rank: int, size: int = 4) -> dict[str, str]:
    """What Open MPI's mpirun gives rank ``rank`` of ``size`` on one node."""
    return {
        "OMPI_COMM_WORLD_RANK": str(rank),
        "OMPI_COMM_WORLD_SIZE": str(size),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(rank),
        "OMPI_COMM_WORLD_LOCAL_SIZE": str(size),
        "OMPI_COMM_WORLD_NODE_RANK": str(rank),
        "PMIX_RANK": str(rank),
        "PMIX_NAMESPACE": "1284440065",
    }


def slurm_step_env(rank: int, size: int = 8, per_node: str = "4(x2)") -> dict[str, str]:
    """What srun gives task ``rank`` of a two-node step on Frontier."""
    return {
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank % 4),
        "SLURM_NODEID": str(rank // 4),
        "SLURM_NTASKS": str(size),
        "SLURM_STEP_NUM_TASKS": str(size),
        "SLURM_STEP_TASKS_PER_NODE": per_node,
        "SLURM_JOB_ID": "1234567",
        "SLURM_STEP_ID": "2",
        "SLURM_JOB_NODELIST": "frontier[00012-00015]",
        "SLURM_STEP_NODELIST": "frontier[00013-00014]",
    }


# ------------------------------------------------------------------------------------ host lists


@pytest.mark.parametrize(
    "spec, hosts",
    [
        ("n[1-3,5],m7", ["n1", "n2", "n3", "n5", "m7"]),
        ("frontier[00012-00015]", ["frontier00012", "frontier00013", "frontier00014", "frontier00015"]),
        ("vm", ["vm"]),
        ("a1,b[08-10]", ["a1", "b08", "b09", "b10"]),
        ("rack[1-2]-n[1,3]", ["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"]),
        ("h[7]", ["h7"]),
    ],
)
def test_hostlist_forms(spec, hosts):
    assert expand_hostlist(spec) == hosts


@pytest.mark.parametrize("spec", ["n[1-3", "n1-3]", "n[3-1]", "n[a-b]"])
def test_hostlist_rejects_malformed(spec):
    with pytest.raises(UserError, match="host list"):
        expand_hostlist(spec)


def test_tasks_per_node():
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert expand_tasks_per_node("42") == [42]


# ---------------------------------------------------------------------------- each launcher's variables


def test_no_launcher_is_a_single_process():
    dist = discover({"PATH": "/usr/bin", "SLURM_JOB_ID": "5"})
    assert (dist.source, dist.rank, dist.world_size, dist.master_addr) == ("single", 0, 1, "127.0.0.1")
    assert resolve({}).master_port is not None


def test_torchrun():
    env = {
        "RANK": "5",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "8",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "node7",
        "MASTER_PORT": "29600",
        **slurm_step_env(1),
    }
    dist = resolve(env)
    assert dist == DistEnv(5, 1, 8, 4, "node7", 29600, "torchrun", None, "MASTER_ADDR", None)


def test_torchrun_without_master_names_the_variable():
    with pytest.raises(UserError, match="^MASTER_ADDR: not set"):
        discover({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(UserError, match="^MASTER_PORT: not set"):
        discover({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h"})


def test_open_mpi_needs_rank_zero_to_say_the_master():
    dist = discover(openmpi_env(3))
    assert (dist.source, dist.rank, dist.local_rank, dist.world_size, dist.local_world_size) == ("openmpi", 3, 3, 4, 4)
    assert dist.master_addr is None and dist.source in MPI_SOURCES
    assert dist.job_step == ("", "1284440065")  # the PMIx namespace names this mpirun


def test_open_mpi_missing_variable_is_named():
    env = openmpi_env(1)
    del env["OMPI_COMM_WORLD_SIZE"]
    with pytest.raises(UserError, match="^OMPI_COMM_WORLD_SIZE: not set"):
        discover(env)


def test_master_addr_overrides_the_broadcast():
    dist = resolve({**openmpi_env(2), "MASTER_ADDR": "10.1.2.3", "SLURM_JOB_ID": "99"}, port_base=40000, port_span=100)
    assert (dist.master_addr, dist.master_from) == ("10.1.2.3", "MASTER_ADDR")
    assert dist.master_port == derive_port("99", "1284440065", 40000, 100)


def test_mpich():
    env = {"PMI_RANK": "2", "PMI_SIZE": "3", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "1"}
    dist = discover(env)
    assert (dist.source, dist.rank, dist.world_size, dist.local_rank, dist.local_world_size) == ("mpich", 2, 3, 0, 1)
    del env["MPI_LOCALRANKID"]
    with pytest.raises(UserError, match="no local rank: expected MPI_LOCALRANKID"):
        discover(env)


def test_pmix_under_srun_takes_sizes_from_the_step():
    env = {**slurm_step_env(6), "PMIX_RANK": "6", "PMIX_NAMESPACE": "slurm.pmix.1234567.2"}
    dist = discover(env)
    assert (dist.source, dist.rank, dist.world_size, dist.local_rank, dist.local_world_size) == ("pmix", 6, 8, 2, 4)
    assert dist.master_addr is None  # MPI ranks: rank 0 broadcasts its address
    assert dist.job_step == ("1234567", "slurm.pmix.1234567.2")


def test_pmix_alone_names_what_is_missing():
    with pytest.raises(UserError, match="PMIX_RANK is set but no world size: expected SLURM_NTASKS"):
        discover({"PMIX_RANK": "0"})


def test_slurm_step():
    dist = resolve(slurm_step_env(5), port_base=30000, port_span=1000)
    assert (dist.source, dist.rank, dist.world_size, dist.local_rank, dist.local_world_size) == ("slurm", 5, 8, 1, 4)
    assert (dist.master_addr, dist.master_from) == ("frontier00013", "SLURM_STEP_NODELIST")
    assert dist.master_port == derive_port("1234567", "2", 30000, 1000)
    env = slurm_step_env(0)
    del env["SLURM_STEP_NODELIST"]
    assert resolve(env).master_addr == "frontier00012"  # the job's first node


def test_slurm_batch_script_is_not_a_step():
    """sbatch's batch shell has SLURM_PROCID=0 and SLURM_NTASKS=N but no step: it is rank 0 of nothing."""
    env = slurm_step_env(0)
    del env["SLURM_STEP_ID"]
    assert discover(env).source == "single"


def test_mpirun_inside_sbatch_trusts_mpi_over_inherited_slurm_variables():
    outer = {
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_TASKS": "1",
        "SLURM_STEP_TASKS_PER_NODE": "1",
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_NODELIST": "n[1-2]",
    }
    dists = [discover({**outer, **openmpi_env(rank)}) for rank in range(4)]
    assert [(d.source, d.rank, d.world_size, d.local_rank) for d in dists] == [("openmpi", r, 4, r) for r in range(4)]
    assert dists[0].job_step == ("77", "1284440065")


def test_inconsistent_mpi_variables_are_an_error():
    env = {**openmpi_env(1), "PMIX_RANK": "0"}
    with pytest.raises(UserError, match="inconsistent launcher variables: OMPI_COMM_WORLD_RANK=1 but PMIX_RANK=0"):
        discover(env)


def test_rank_outside_the_world_is_an_error():
    with pytest.raises(UserError, match="SLURM_PROCID=8: outside a world of 8"):
        discover(slurm_step_env(8))


def jsrun_env(rank: int, tmp_path: Path, rankfile: str) -> dict[str, str]:
    path = tmp_path / "rankfile"
    path.write_text(rankfile)
    return {
        "JSM_NAMESPACE_RANK": str(rank),
        "JSM_NAMESPACE_SIZE": "12",
        "JSM_NAMESPACE_LOCAL_RANK": str(rank % 6),
        "JSM_NAMESPACE_LOCAL_SIZE": "6",
        "LSB_JOBID": "905",
        "LSB_DJOB_RANKFILE": str(path),
        "LSB_HOSTS": "batch3 " + "a01n05 " * 42 + "a01n06 " * 42,
        "PMIX_NAMESPACE": "jsm.905.3",
    }


def test_jsrun_master_is_the_first_compute_host_not_the_launch_node(tmp_path):
    env = jsrun_env(7, tmp_path, "batch3\n" + "h41n01\n" * 42 + "h41n02\n" * 42)
    dist = resolve({k: v for k, v in env.items() if k != "PMIX_NAMESPACE"}, port_base=20000, port_span=9000)
    assert (dist.source, dist.rank, dist.world_size, dist.local_rank, dist.local_world_size) == ("lsf", 7, 12, 1, 6)
    assert (dist.master_addr, dist.master_from) == ("h41n01", "LSB_DJOB_RANKFILE")
    assert dist.master_port == derive_port("905", "", 20000, 9000)


def test_lsf_host_variables_without_a_rankfile(tmp_path):
    env = jsrun_env(0, tmp_path, "")
    del env["LSB_DJOB_RANKFILE"]
    assert (discover(env).master_addr, discover(env).master_from) == ("a01n05", "LSB_HOSTS")
    env["LSB_MCPU_HOSTS"] = "batch3 1 a02n01 42 a02n02 42"
    assert (discover(env).master_addr, discover(env).master_from) == ("a02n01", "LSB_MCPU_HOSTS")


def test_jsrun_with_spectrum_mpi_variables_uses_mpi(tmp_path):
    env = {**jsrun_env(3, tmp_path, "batch3\nh1\n"), **openmpi_env(3, 12)}
    env["OMPI_COMM_WORLD_LOCAL_RANK"], env["OMPI_COMM_WORLD_LOCAL_SIZE"] = "3", "6"
    dist = discover(env)
    assert (dist.source, dist.rank, dist.world_size, dist.master_addr) == ("openmpi", 3, 12, None)
    assert dist.job_step == ("905", "1284440065")


# --------------------------------------------------------------------------------------------- ports


def test_derived_ports_stay_in_range_and_differ_between_packed_steps():
    ports = [derive_port("3141592", str(step), 29500, 20000) for step in range(200)]
    assert len(set(ports)) == 200
    assert all(29500 <= p < 49500 for p in ports)
    assert derive_port("3141592", "4", 29500, 20000) == derive_port("3141592", "4", 29500, 20000)
    names = {derive_port("88", f"prterun-vm-{i}@1", 29500, 20000) for i in range(50)}
    assert len(names) > 45 and all(29500 <= p < 49500 for p in names)
    jobs = {derive_port(str(job), "0", 29500, 20000) for job in range(1000, 1100)}
    assert len(jobs) > 90


def test_packed_steps_of_one_allocation_get_different_ports():
    steps = [resolve({**slurm_step_env(0), "SLURM_STEP_ID": str(s)}).master_port for s in range(4)]
    assert len(set(steps)) == 4


def test_slurm_without_job_id_or_port_names_the_variables():
    env = slurm_step_env(1)
    del env["SLURM_JOB_ID"]
    with pytest.raises(UserError, match="MASTER_PORT: not set, and no job/step ids .*SLURM_JOB_ID"):
        resolve(env)


# ------------------------------------------------------------------------------ interface and timeouts


def test_interface_address():
    assert interface_address("lo") == "127.0.0.1"
    with pytest.raises(UserError, match="rendezvous.interface: no IPv4 address on 'hsn9'.*interfaces here: .*lo"):
        interface_address("hsn9")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_env(rank: int, addr: str, port: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": addr,
        "MASTER_PORT": str(port),
    }


@pytest.fixture
def restore_environ():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_unreachable_master_fails_within_the_timeout(restore_environ):
    import torch.distributed  # noqa: F401 - import time is not rendezvous time

    port = free_port()
    start = time.monotonic()
    with pytest.raises(
        UserError, match=f"cannot reach master 127.0.0.1:{port} \\(master from MASTER_ADDR\\) within 1.5 s"
    ):
        connect(resolve(torchrun_env(1, "127.0.0.1", port)), "gloo", 1.5)
    assert time.monotonic() - start < 3.5


def test_rank_zero_waiting_for_missing_ranks_fails_within_the_timeout(restore_environ):
    import torch.distributed  # noqa: F401

    port = free_port()
    start = time.monotonic()
    with pytest.raises(UserError, match=f"not all ranks arrived at master 127.0.0.1:{port} .*within 1.5 s"):
        connect(resolve(torchrun_env(0, "127.0.0.1", port)), "gloo", 1.5)
    assert time.monotonic() - start < 3.5


def test_unresolvable_master_is_named(restore_environ, tmp_path):
    env = jsrun_env(1, tmp_path, "login-batch\nno-such-host.invalid\n")
    with pytest.raises(
        UserError, match="cannot resolve master host 'no-such-host.invalid' \\(from LSB_DJOB_RANKFILE\\)"
    ):
        connect(resolve(env), "gloo", 5)


# ----------------------------------------------------------------------- real ranks under Open MPI

MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]
RENDEZVOUS = [sys.executable, "-m", "launcher.run.rendezvous", "--timeout", "60"]


def mpirun(
    tmp_path: Path, nproc: int, wrapper_body: str, extra_env: dict[str, str] | None = None, args: tuple = ()
) -> str:
    """``nproc`` real ranks of ``python -m launcher.run.rendezvous`` under mpirun, each through a bash wrapper."""
    wrapper = tmp_path / "rank.sh"
    wrapper.write_text("#!/bin/bash\nset -e\n" + textwrap.dedent(wrapper_body) + '\nexec "$@"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **(extra_env or {}))
    proc = subprocess.run(
        [*MPIRUN, "-np", str(nproc), str(wrapper), *RENDEZVOUS, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("rendezvous:")]
    assert len(lines) == 1, proc.stdout  # rank 0 alone reports, after the all-reduce of all ranks
    return lines[0]


def fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


@needs_mpi
@pytest.mark.mpi
def test_mpirun_four_ranks_broadcast_over_mpi_despite_inherited_slurm_variables(tmp_path):
    """mpi4py path; every rank also carries an outer batch step's SLURM_PROCID=0 (the sbatch trap)."""
    outer = {
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_ID": "31337",
        "SLURM_JOB_NODELIST": "nowhere[1-2]",
        "SLURM_STEP_TASKS_PER_NODE": "1",
    }
    info = fields(mpirun(tmp_path, 4, "", outer, ("--interface", "lo")))
    assert info == {**info, "interface": "lo", "address": "127.0.0.1", "world_size": "4", "source": "openmpi"}


JSRUN_WRAPPER = """
export JSM_NAMESPACE_RANK=$OMPI_COMM_WORLD_RANK JSM_NAMESPACE_SIZE=$OMPI_COMM_WORLD_SIZE
export JSM_NAMESPACE_LOCAL_RANK=$OMPI_COMM_WORLD_LOCAL_RANK JSM_NAMESPACE_LOCAL_SIZE=$OMPI_COMM_WORLD_LOCAL_SIZE
"""
DROP_MPI = """
for v in $(compgen -e | grep -E '^(OMPI_|PMIX_|PMI_)'); do unset "$v"; done
"""


@needs_mpi
@pytest.mark.mpi
def test_real_ranks_with_jsrun_variables_meet_at_the_first_compute_host(tmp_path):
    rankfile = tmp_path / "rankfile"
    rankfile.write_text("batch-launch-node.invalid\n" + f"{HOST}\n" * 2 + "other-node.invalid\n" * 2)
    env = {"LSB_DJOB_RANKFILE": str(rankfile), "LSB_JOBID": "4711", "LSB_HOSTS": "batch-launch-node.invalid " + HOST}
    info = fields(mpirun(tmp_path, 2, JSRUN_WRAPPER + DROP_MPI, env, ("--port-base", "41000", "--port-span", "2000")))
    assert info == {
        **info,
        "address": HOST,
        "world_size": "2",
        "source": "lsf",
        "port": str(derive_port("4711", "", 41000, 2000)),
    }


@needs_mpi
@pytest.mark.mpi
def test_real_ranks_with_slurm_step_variables_meet_at_the_first_node(tmp_path):
    wrapper = """
    export SLURM_PROCID=$OMPI_COMM_WORLD_RANK SLURM_LOCALID=$OMPI_COMM_WORLD_LOCAL_RANK SLURM_NODEID=0
    export SLURM_NTASKS=2 SLURM_STEP_NUM_TASKS=2 SLURM_STEP_TASKS_PER_NODE=2 SLURM_JOB_ID=90210 SLURM_STEP_ID=7
    """
    info = fields(mpirun(tmp_path, 2, wrapper + DROP_MPI, {"SLURM_JOB_NODELIST": f"{HOST},nowhere[2-3]"}))
    assert info == {
        **info,
        "address": HOST,
        "world_size": "2",
        "source": "slurm",
        "port": str(derive_port("90210", "7", 29500, 20000)),
    }
