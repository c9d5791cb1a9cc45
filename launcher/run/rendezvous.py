"""Rank, world size and master address for torch.distributed, from whichever launcher started us.

Every launcher speaks its own dialect (torchrun, Open MPI, MPICH, PMIx, Slurm's srun, LSF's jsrun).
``discover`` reads them in a fixed order of trust: torchrun's own variables, then MPI's, then the
scheduler's. MPI wins over the scheduler because ``mpirun`` inside a Slurm job inherits the outer
SLURM_PROCID (0 on every rank); a scheduler's variables that disagree with MPI's are ignored, ones
that agree fill what MPI leaves out. A batch script is not a job step: Slurm counts only with
SLURM_STEP_ID.

The master address comes from MASTER_ADDR when set; else, for MPI-started ranks, rank 0 broadcasts
its own address (on ``rendezvous.interface``, e.g. hsn0 or ib0) and a port over mpi4py; else from the
scheduler's first compute host. Ports are derived from the job and step ids, so several runs packed
into one allocation do not collide. ``connect`` joins the ranks within ``rendezvous.timeout_s`` and
proves the group with one all-reduce.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import os
import re
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Literal, Optional, overload

from launcher.errors import UserError
from launcher.policy import ExitCode

# How long collectives may wait once the ranks have met (a slow checkpoint write must not kill a run);
# the meeting itself is bounded by rendezvous.timeout_s.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
LOOPBACK = "127.0.0.1"
MPI_SOURCES = ("openmpi", "mpich", "pmix")


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """Where this rank stands and how to reach rank 0."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: Optional[str]  # None until resolve() has asked rank 0 over MPI
    master_port: Optional[int]
    source: str  # torchrun | openmpi | mpich | pmix | slurm | lsf | single
    interface: Optional[str] = None
    master_from: str = ""  # the variable (or mechanism) the address came from, for error messages
    job_step: Optional[tuple[str, str]] = None  # scheduler job and step ids the port is derived from


@dataclasses.dataclass(frozen=True)
class _Ranks:
    """What one launcher's variables say; local fields may be missing (None) for some launchers."""

    source: str
    rank: int
    world_size: Optional[int]
    local_rank: Optional[int]
    local_world_size: Optional[int]
    variable: str  # the rank variable, named in consistency errors
    master_host: Optional[str] = None
    master_from: str = ""
    job_step: Optional[tuple[str, str]] = None


# ---------------------------------------------------------------------------------------------- parsing


@overload
def _int(env: Mapping[str, str], name: str, required: Literal[True] = True) -> int: ...
@overload
def _int(env: Mapping[str, str], name: str, required: bool) -> Optional[int]: ...
def _int(env: Mapping[str, str], name: str, required: bool = True) -> Optional[int]:
    value = env.get(name)
    if value is None or value == "":
        if required:
            raise UserError(f"{name}: not set (needed by the launcher variables present in the environment)")
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}: expected an integer, got {value!r}") from None


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> Optional[str]:
    return next((env[n] for n in names if env.get(n)), None)


def expand_hostlist(spec: str) -> list[str]:
    """Slurm's compressed host list: ``n[1-3,5],m7`` -> n1 n2 n3 n5 m7; zero padding is kept."""
    hosts: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(spec + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise UserError(f"host list {spec!r}: unbalanced brackets")
        if char == "," and depth == 0:
            if spec[start:i].strip():
                hosts.extend(_expand_host(spec[start:i].strip(), spec))
            start = i + 1
    if depth:
        raise UserError(f"host list {spec!r}: unbalanced brackets")
    return hosts


def _expand_host(expr: str, spec: str) -> list[str]:
    match = re.fullmatch(r"([^\[\]]*)\[([^\[\]]+)\](.*)", expr)
    if not match:
        return [expr]
    prefix, ranges, rest = match.groups()
    heads = []
    for item in ranges.split(","):
        lo, _, hi = item.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise UserError(f"host list {spec!r}: bad range {item!r}")
        heads += [f"{prefix}{i:0{len(lo)}d}" for i in range(int(lo), int(hi or lo) + 1)]
    return [head + tail for head in heads for tail in _expand_host(rest, spec)]


def expand_tasks_per_node(spec: str) -> list[int]:
    """Slurm's SLURM_TASKS_PER_NODE: ``2(x3),1`` -> [2, 2, 2, 1]."""
    counts = []
    for item in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item.strip())
        if not match:
            raise UserError(f"SLURM_TASKS_PER_NODE: cannot read {spec!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def lsf_first_compute_host(env: Mapping[str, str]) -> tuple[Optional[str], str]:
    """First compute host of an LSF job and the variable it came from.

    The first host LSF lists is the launch (batch) node, where jsrun does not place ranks: skip it.
    """
    rankfile = env.get("LSB_DJOB_RANKFILE")
    if rankfile:
        try:
            with open(rankfile) as handle:
                hosts = [line.strip() for line in handle if line.strip()]
        except OSError as exc:
            raise UserError(f"LSB_DJOB_RANKFILE: cannot read {rankfile}: {exc.strerror}") from None
        return (hosts[1] if len(hosts) > 1 else None), "LSB_DJOB_RANKFILE"
    if env.get("LSB_MCPU_HOSTS"):
        hosts = env["LSB_MCPU_HOSTS"].split()[::2]  # "launch 1 h1 42 h2 42"
        return (hosts[1] if len(hosts) > 1 else None), "LSB_MCPU_HOSTS"
    if env.get("LSB_HOSTS"):
        hosts = env["LSB_HOSTS"].split()
        return next((h for h in hosts[1:] if h != hosts[0]), None), "LSB_HOSTS"
    return None, ""


# ------------------------------------------------------------------------------ one reader per launcher


def _read_torchrun(env: Mapping[str, str]) -> Optional[_Ranks]:
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    rank, world = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    local_rank = _int(env, "LOCAL_RANK")
    local_world = _int(env, "LOCAL_WORLD_SIZE", required=False) or world
    if not env.get("MASTER_ADDR"):
        raise UserError("MASTER_ADDR: not set (RANK and WORLD_SIZE are, as torchrun sets them)")
    _int(env, "MASTER_PORT")
    return _Ranks("torchrun", rank, world, local_rank, local_world, "RANK", env["MASTER_ADDR"], "MASTER_ADDR")


def _mpi_job_step(env: Mapping[str, str]) -> Optional[tuple[str, str]]:
    """An MPI launch is named by its PMIx namespace (unique per mpirun/srun step) within the job."""
    job = _scheduler_job(env)
    step = _first(env, ("PMIX_NAMESPACE", "SLURM_STEP_ID"))
    return (job or "", step or "") if (job or step) else None


def _scheduler_job(env: Mapping[str, str]) -> Optional[str]:
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    if env.get("LSB_JOBID"):  # members of an LSF job array share LSB_JOBID
        return env["LSB_JOBID"] + (f"[{env['LSB_JOBINDEX']}]" if env.get("LSB_JOBINDEX", "0") != "0" else "")
    return None


def _read_openmpi(env: Mapping[str, str]) -> Optional[_Ranks]:
    if "OMPI_COMM_WORLD_RANK" not in env:
        return None
    return _Ranks(
        "openmpi",
        _int(env, "OMPI_COMM_WORLD_RANK"),
        _int(env, "OMPI_COMM_WORLD_SIZE"),
        _int(env, "OMPI_COMM_WORLD_LOCAL_RANK"),
        _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE"),
        "OMPI_COMM_WORLD_RANK",
        job_step=_mpi_job_step(env),
    )


def _read_mpich(env: Mapping[str, str]) -> Optional[_Ranks]:
    if "PMI_RANK" not in env:
        return None
    return _Ranks(
        "mpich",
        _int(env, "PMI_RANK"),
        _int(env, "PMI_SIZE"),
        _int(env, "MPI_LOCALRANKID", required=False),
        _int(env, "MPI_LOCALNRANKS", required=False),
        "PMI_RANK",
        job_step=_mpi_job_step(env),
    )


def _read_pmix(env: Mapping[str, str]) -> Optional[_Ranks]:
    """PMIx names only the rank; the launcher that set it (srun --mpi=pmix, jsrun) gives the rest."""
    if "PMIX_RANK" not in env:
        return None
    return _Ranks("pmix", _int(env, "PMIX_RANK"), None, None, None, "PMIX_RANK", job_step=_mpi_job_step(env))


def _read_slurm(env: Mapping[str, str]) -> Optional[_Ranks]:
    if "SLURM_PROCID" not in env or "SLURM_STEP_ID" not in env:
        return None  # no step id: a batch script, which is rank 0 of nothing
    world = _int(env, "SLURM_STEP_NUM_TASKS", required=False) or _int(env, "SLURM_NTASKS")
    local_world = None
    per_node = _first(env, ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"))
    if per_node:
        counts = expand_tasks_per_node(per_node)
        node = _int(env, "SLURM_NODEID", required=False) or 0
        local_world = counts[node] if node < len(counts) else None
    variable = next((n for n in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST") if env.get(n)), "")
    hosts = expand_hostlist(env[variable]) if variable else []
    job_step = (env["SLURM_JOB_ID"], env["SLURM_STEP_ID"]) if env.get("SLURM_JOB_ID") else None
    return _Ranks(
        "slurm",
        _int(env, "SLURM_PROCID"),
        world,
        _int(env, "SLURM_LOCALID"),
        local_world,
        "SLURM_PROCID",
        hosts[0] if hosts else None,
        variable,
        job_step,
    )


def _read_lsf(env: Mapping[str, str]) -> Optional[_Ranks]:
    if "JSM_NAMESPACE_RANK" not in env:
        return None
    host, variable = lsf_first_compute_host(env)
    job = _scheduler_job(env)
    job_step = (job, env.get("PMIX_NAMESPACE", "")) if job else None
    return _Ranks(
        "lsf",
        _int(env, "JSM_NAMESPACE_RANK"),
        _int(env, "JSM_NAMESPACE_SIZE"),
        _int(env, "JSM_NAMESPACE_LOCAL_RANK"),
        _int(env, "JSM_NAMESPACE_LOCAL_SIZE"),
        "JSM_NAMESPACE_RANK",
        host,
        variable,
        job_step,
    )


READERS: tuple[Callable[[Mapping[str, str]], Optional[_Ranks]], ...] = (
    _read_torchrun,
    _read_openmpi,
    _read_mpich,
    _read_pmix,
    _read_slurm,
    _read_lsf,
)


def discover(env: Mapping[str, str] = os.environ, interface: Optional[str] = None) -> DistEnv:
    """This rank's place from the launcher variables in ``env``; master_addr stays None where MPI must say it.

    Raises UserError naming a missing or inconsistent variable.
    """
    found = [r for r in (read(env) for read in READERS) if r is not None]
    if not found:
        return DistEnv(0, 0, 1, 1, LOOPBACK, None, "single", interface, "a single process")
    primary = found[0]
    if primary.source == "torchrun":
        return _dist_env(primary, [], env, interface)
    helpers = []
    for other in found[1:]:
        same_size = None in (other.world_size, primary.world_size) or other.world_size == primary.world_size
        if other.rank == primary.rank and same_size:
            helpers.append(other)
        elif other.source in MPI_SOURCES:
            raise UserError(
                f"inconsistent launcher variables: {primary.variable}={primary.rank} but {other.variable}={other.rank}"
            )
        # else: a scheduler's variables inherited from an outer step (mpirun inside sbatch): not ours
    return _dist_env(primary, helpers, env, interface)


def _dist_env(primary: _Ranks, helpers: list[_Ranks], env: Mapping[str, str], interface: Optional[str]) -> DistEnv:
    def pick(field: str):
        return next((getattr(r, field) for r in [primary, *helpers] if getattr(r, field) is not None), None)

    world, local_rank, local_world = pick("world_size"), pick("local_rank"), pick("local_world_size")
    if world is None:
        raise UserError(
            f"{primary.variable} is set but no world size: expected SLURM_NTASKS or "
            f"JSM_NAMESPACE_SIZE from the launcher that set it"
        )
    if not 0 <= primary.rank < world:
        raise UserError(f"{primary.variable}={primary.rank}: outside a world of {world}")
    if local_rank is None:
        raise UserError(
            f"{primary.variable} is set but no local rank: expected MPI_LOCALRANKID, "
            f"SLURM_LOCALID or JSM_NAMESPACE_LOCAL_RANK"
        )
    if local_world is None:
        raise UserError(
            f"{primary.variable} is set but no local world size: expected MPI_LOCALNRANKS, "
            f"SLURM_STEP_TASKS_PER_NODE or JSM_NAMESPACE_LOCAL_SIZE"
        )
    if not 0 <= local_rank < local_world:
        raise UserError(f"local rank {local_rank} outside a node of {local_world} ranks ({primary.source} variables)")
    job_step = pick("job_step")
    addr, master_from = None, ""
    if env.get("MASTER_ADDR"):
        addr, master_from = env["MASTER_ADDR"], "MASTER_ADDR"
    elif primary.source not in MPI_SOURCES:
        addr, master_from = primary.master_host, primary.master_from
        if addr is None:
            raise UserError(
                f"no master address for {primary.source} ranks: set MASTER_ADDR, or "
                + ("SLURM_JOB_NODELIST" if primary.source == "slurm" else "LSB_DJOB_RANKFILE")
            )
    port = _int(env, "MASTER_PORT", required=False)
    return DistEnv(
        primary.rank, local_rank, world, local_world, addr, port, primary.source, interface, master_from, job_step
    )


# ------------------------------------------------------------------------------------- address and port


def derive_port(job_id: str, step_id: str, base: int, span: int) -> int:
    """A port in [base, base + span) that only this job step uses.

    Numbered steps of one job get consecutive ports (no two steps of a job collide until ``span`` steps);
    other step names (PMIx namespaces) are hashed.
    """
    job_hash = zlib.crc32(job_id.encode())
    if step_id.isdigit():
        return base + (job_hash + int(step_id)) % span
    return base + zlib.crc32(f"{job_id}/{step_id}".encode()) % span


def interface_address(name: str) -> str:
    """The IPv4 address of a network interface (SIOCGIFADDR, else ``ip -o -4 addr``)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
        return socket.inet_ntoa(packed[20:24])
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["ip", "-o", "-4", "addr", "show", "dev", name], capture_output=True, text=True, timeout=10
        ).stdout
        match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)", out)
        if match:
            return match.group(1)
    except (OSError, subprocess.SubprocessError):
        pass
    names = ", ".join(n for _, n in socket.if_nameindex())
    raise UserError(
        f"rendezvous.interface: no IPv4 address on {name!r} on {socket.gethostname()}; interfaces here: {names}"
    )


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
            return True
        except OSError:
            return False


def pick_port(job_step: Optional[tuple[str, str]], base: int, span: int) -> int:
    """Rank 0's choice: the derived port, or the next free one after it; any free port without job ids."""
    if job_step is None:
        with socket.socket() as sock:
            sock.bind(("", 0))
            return sock.getsockname()[1]
    first = derive_port(*job_step, base, span)
    for offset in range(min(span, 256)):
        port = base + (first - base + offset) % span
        if _port_free(port):
            return port
    raise UserError(f"rendezvous.port_base: no free port near {first} in [{base}, {base + span})")


def resolve(
    env: Mapping[str, str] = os.environ, interface: Optional[str] = None, port_base: int = 29500, port_span: int = 20000
) -> DistEnv:
    """``discover`` plus a master address and port for every rank (over mpi4py when MPI started us)."""
    dist = discover(env, interface)
    if dist.master_addr is None:
        return _broadcast_master(dist, port_base, port_span)
    if dist.master_port is not None:
        return dist
    if dist.source == "single":
        return dataclasses.replace(dist, master_port=pick_port(None, port_base, port_span))
    if dist.job_step is None:
        raise UserError(
            f"MASTER_PORT: not set, and no job/step ids to derive it from "
            f"({'SLURM_JOB_ID' if dist.source == 'slurm' else 'LSB_JOBID'})"
        )
    return dataclasses.replace(dist, master_port=derive_port(*dist.job_step, port_base, port_span))


def _broadcast_master(dist: DistEnv, port_base: int, port_span: int) -> DistEnv:
    """Rank 0 tells every rank its address on the chosen interface and a port it checked is free."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise UserError(
            f"{dist.source} started these ranks but mpi4py is not installed: "
            f"pip install mpi4py, or set MASTER_ADDR and MASTER_PORT"
        ) from None
    comm = MPI.COMM_WORLD
    if (comm.Get_rank(), comm.Get_size()) != (dist.rank, dist.world_size):
        raise UserError(
            f"inconsistent ranks: the launcher variables say rank {dist.rank} of {dist.world_size}, "
            f"MPI says {comm.Get_rank()} of {comm.Get_size()}"
        )
    answer: tuple[str, str, int] | None = None
    if dist.rank == 0:
        try:
            if dist.interface:
                addr = interface_address(dist.interface)
            else:  # one node: loopback; several: this host's name
                addr = LOOPBACK if dist.local_world_size == dist.world_size else socket.gethostname()
            answer = ("ok", addr, pick_port(dist.job_step, port_base, port_span))
        except UserError as exc:
            answer = ("error", str(exc), 0)
    status, addr, port = comm.bcast(answer, root=0)
    if status == "error":
        raise UserError(addr)
    return dataclasses.replace(dist, master_addr=addr, master_port=port, master_from="mpi4py broadcast from rank 0")


# ----------------------------------------------------------------------------------------------- connect


def export_torch_env(dist: DistEnv) -> None:
    """torchrun's variables for everything downstream (DeepSpeed reads LOCAL_RANK, RANK ...)."""
    os.environ.update(
        RANK=str(dist.rank),
        LOCAL_RANK=str(dist.local_rank),
        WORLD_SIZE=str(dist.world_size),
        LOCAL_WORLD_SIZE=str(dist.local_world_size),
        MASTER_ADDR=str(dist.master_addr),
        MASTER_PORT=str(dist.master_port),
    )
    if dist.interface:  # collectives' own sockets, not only the rendezvous, use the chosen network
        os.environ.setdefault("GLOO_SOCKET_IFNAME", dist.interface)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", dist.interface)


def _where(dist: DistEnv) -> str:
    return f"{dist.master_addr}:{dist.master_port} (master from {dist.master_from})"


def wait_reachable(dist: DistEnv, deadline: float, timeout_s: float) -> None:
    """A non-zero rank waits until rank 0 listens; a clear message when it never does."""
    assert dist.master_port is not None  # resolve() has set rank 0's address
    last = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UserError(
                f"rendezvous: cannot reach master {_where(dist)} within {timeout_s:g} s (rendezvous.timeout_s): {last}"
            )
        try:
            with socket.create_connection((dist.master_addr, dist.master_port), timeout=min(remaining, 2.0)):
                return
        except socket.gaierror:
            raise UserError(
                f"rendezvous: cannot resolve master host {dist.master_addr!r} (from {dist.master_from})"
            ) from None
        except OSError as exc:
            last = exc.strerror or str(exc)
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def _print_now(line: str) -> None:
    print(line, flush=True)


def collective_device():
    """Where the tensors of the joined group's collectives must live: the rank's GPU under NCCL, else the CPU."""
    import torch
    import torch.distributed as torch_dist

    if torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def connect(dist: DistEnv, backend: str, timeout_s: float, log: Callable[[str], None] = _print_now) -> None:
    """Join all ranks into torch.distributed's default group within ``timeout_s``, then one all-reduce."""
    import torch
    import torch.distributed as torch_dist

    assert dist.master_addr is not None and dist.master_port is not None  # resolve() has set them
    export_torch_env(dist)
    start = time.monotonic()
    deadline = start + timeout_s
    if dist.rank != 0:
        wait_reachable(dist, deadline, timeout_s)
    try:
        store = torch_dist.TCPStore(
            dist.master_addr,
            dist.master_port,
            dist.world_size,
            is_master=dist.rank == 0,
            timeout=datetime.timedelta(seconds=max(deadline - time.monotonic(), 1.0)),
            wait_for_workers=True,
        )
    except (RuntimeError, OSError) as exc:  # torch's DistNetworkError / DistStoreError are RuntimeErrors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        who = "not all ranks arrived at" if dist.rank == 0 else "cannot join"
        raise UserError(
            f"rendezvous: {who} master {_where(dist)} within {timeout_s:g} s (rendezvous.timeout_s): {reason}"
        ) from None
    store.set_timeout(COLLECTIVE_TIMEOUT)
    # torch's functional collectives take ``group=group.WORLD`` as a default argument, bound at import:
    # imported after the group exists (torch._dynamo imports them lazily) they would keep it alive past
    # destroy_process_group, and with it its worker threads
    import torch.distributed.nn

    device = None
    if backend == "nccl":  # NCCL's collectives run on the rank's own GPU, chosen before the group exists
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    torch_dist.init_process_group(
        backend,
        store=store,
        rank=dist.rank,
        world_size=dist.world_size,
        timeout=COLLECTIVE_TIMEOUT,
        device_id=device,
    )
    probe = torch.ones(1, device=collective_device())
    torch_dist.all_reduce(probe)
    if int(probe.item()) != dist.world_size:
        raise RuntimeError(f"rendezvous: pre-flight all-reduce gave {probe.item()}, expected {dist.world_size}")
    if dist.rank == 0:
        log(
            f"rendezvous: interface={dist.interface or 'default'} address={dist.master_addr} "
            f"port={dist.master_port} world_size={dist.world_size} source={dist.source} "
            f"all-reduce ok in {time.monotonic() - start:.1f} s"
        )


def main(argv: list[str] | None = None) -> int:
    """Rendezvous plus the pre-flight all-reduce and nothing else: checks a site's launcher and network."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m launcher.run.rendezvous", description=main.__doc__)
    parser.add_argument("--interface", default=None, help="network interface of rank 0 (hsn0, ib0); default loopback")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds the ranks may take to meet")
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--port-base", type=int, default=29500)
    parser.add_argument("--port-span", type=int, default=20000)
    args = parser.parse_args(argv)
    dist = resolve(os.environ, args.interface, args.port_base, args.port_span)
    connect(dist, args.backend, args.timeout)
    import torch.distributed as torch_dist

    torch_dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"rendezvous: error: {exc}", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
