"""Sweeps on the real dev Slurm cluster (slurm/dev-cluster/up): packed jobs over several nodes, a 2-node
DeepSpeed run, job arrays, dependencies, the walltime warning and continuation, cancel, a killed rank.

Tiny GPT-NeoX runs (sweep=tiny with fewer or longer runs); every check reads what Slurm, the job
database and the runs' own files say.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import tree_progress, wait_while_progressing
from launcher.config.cluster import ClusterProfile
from launcher.config.compose import compose
from launcher.config.validate import validate
from launcher.run.heartbeat import read_beats
from launcher.run.metrics import read_metrics
from launcher.run.state import RunState, read_state
from launcher.schedulers import get_scheduler
from launcher.schedulers.base import Dependency
from launcher.sweep.jobdb import JobDB
from launcher.sweep.submit import cancel_sweep, read_steps, submit_sweep, sync

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent
ONE_RUN = ["sweep=tiny", "sweep.budgets=[5e9]", "sweep.params=[20000]"]


class Sweep:
    """A sweep submitted to the dev cluster from a test, and what the database says of it."""

    def __init__(self, root: Path, name: str, *overrides: str, dependency: str | None = None):
        self.name, self.dir = name, root / name
        self.overrides = ["cluster=dev_slurm", f"sweeps_root={root}", f"sweep.name={name}", *overrides]
        profile = validate(ClusterProfile, compose(self.overrides)["cluster"], "cluster")
        self.scheduler = get_scheduler(profile)
        self.submitted = submit_sweep(self.overrides, Dependency.parse(dependency) if dependency else None)
        self.job_ids = [job_id for _, job_id in self.submitted]

    def sync(self):
        with JobDB(self.dir / "jobdb.sqlite") as db:
            sync(db, self.name, self.dir, self.scheduler)
            return (
                {r.name: r for r in db.runs(self.name)},
                db.jobs(self.name),
                {r.name: db.attempts(r.config_hash) for r in db.runs(self.name)},
            )

    def runs(self):
        return self.sync()[0]

    def wait_done(self, timeout: float = 240) -> dict:
        def done():
            runs, jobs, _ = self.sync()
            return all(r.state in ("completed", "diverged", "failed", "cancelled") for r in runs.values()) and all(
                j.state not in ("queued", "running") for j in jobs
            )

        wait_until(done, timeout, f"sweep {self.name} to end", progress=self.progress)
        return self.runs()

    def progress(self) -> frozenset:
        """The sweep folder as it grows: runs' metrics and state, job logs and step records."""
        return tree_progress(self.dir)

    def state(self, run: str) -> dict:
        return (read_state(self.dir / "runs" / run) or RunState()).to_json()

    def steps(self) -> dict[str, dict[str, list[tuple[int, int]]]]:
        out: dict = {}
        for path in sorted((self.dir / "jobs").glob("*.steps")):
            for key, runs in read_steps(path).items():
                out.setdefault(key, {}).update(runs)
        return out


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    every: float = 1.0,
    progress: Callable[[], object] = lambda: None,
):
    """``predicate()`` once true; ``timeout`` is how long ``progress()`` (say a sweep folder's files) may stay
    the same, not a wall time for the whole wait (a loaded machine is slow but advancing)."""
    return wait_while_progressing(predicate, what, progress, stall_s=timeout, every=every)


def slurm_job(cluster, job_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (the controller keeps ended jobs for MinJobAge)."""
    text = cluster.run("scontrol", "show", "job", "--oneliner", job_id).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


# ------------------------------------------------------------------------------------------------------


def test_dev_cluster_nodes_are_separate_hosts(dev_slurm):
    hosts = dev_slurm.run("srun", "--nodes=2", "--ntasks=4", "hostname").stdout.split()
    assert len(hosts) == 4 and len(set(hosts)) == 2 and all(re.fullmatch(r"n\d+", h) for h in hosts)
    mpi = dev_slurm.run(
        "srun",
        "--mpi=pmix",
        "--nodes=2",
        "--ntasks=2",
        sys.executable,
        "-c",
        "import socket; from mpi4py import MPI; c = MPI.COMM_WORLD; "
        "print(c.allreduce(c.Get_rank()), c.Get_size(), *sorted(c.allgather(socket.gethostname())))",
    )
    lines = mpi.stdout.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1]
    total, size, first, second = lines[0].split()
    assert (total, size) == ("1", "2") and first != second  # an MPI allreduce across two nodes
    began = time.monotonic()
    again = subprocess.run([str(REPO / "slurm/dev-cluster/up")], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already running" in again.stderr and time.monotonic() - began < 10
    assert again.stdout.strip() == f"export SLURM_CONF={dev_slurm.conf}"
    refused = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(REPO / "slurm/dev-cluster/up")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "must run as root" in refused.stderr


def test_packed_sweep_runs_as_concurrent_steps_and_the_database_agrees(dev_slurm, tmp_path):
    sweep = Sweep(tmp_path, "packed", "sweep=tiny")
    ((job, job_id),) = sweep.submitted
    assert len(job.steps) == 6 and job.nodes >= 2 and job.lanes >= 4
    runs = sweep.wait_done()
    assert {r.state for r in runs.values()} == {"completed"} and len(runs) == 6
    _, jobs, attempts = sweep.sync()
    assert [(j.job_id, j.state) for j in jobs] == [(job_id, "completed")]
    assert slurm_job(dev_slurm, job_id)["JobState"] == "COMPLETED"
    assert all([(a.job_id, a.state) for a in attempts[name]] == [(job_id, "completed")] for name in runs)
    assert {name: codes for name, codes in sweep.steps()[job_id].items()} == {name: [(1, 0)] for name in runs}
    hosts = {sweep.state(name)["hostname"] for name in runs}
    assert len(hosts) >= 2  # the runs' steps ran on different nodes
    assert all(len(read_metrics(sweep.dir / "runs" / name / "metrics.jsonl")) == runs[name].steps for name in runs)
    plain = [o for o in sweep.overrides if not o.startswith("cluster=")]  # the sweep remembers its cluster
    status = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "status", *plain, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"] == {"completed": 6}


def test_two_node_deepspeed_run_meets_through_slurm_variables(dev_slurm, tmp_path):
    sweep = Sweep(
        tmp_path,
        "ds2",
        *ONE_RUN,
        "++sweep.nodes=2",
        "++sweep.ranks_per_run=2",
        "deepspeed=zero2",
        "train.micro_batch_size=8",
    )  # 2 ranks x 8 samples x 64 tokens: the sweep's 1024-token batch
    ((job, _),) = sweep.submitted
    assert job.nodes == 2 and job.lanes == 1
    runs = sweep.wait_done()
    (name,) = runs
    assert runs[name].state == "completed"
    state = sweep.state(name)
    assert state["world_size"] == 2 and len(state["param_digests"]) == 2
    assert len(set(state["param_digests"])) == 1  # ZeRO-2 shards, yet both ranks end with the same weights
    log = (sweep.dir / "jobs" / "logs" / f"{name}.log").read_text()
    assert re.search(r"rendezvous: .*address=n\d+ .*world_size=2 source=slurm", log), log[-2000:]
    script = (sweep.dir / "jobs" / f"{job.name}.sbatch").read_text()
    assert "srun --exact --kill-on-bad-exit=1 --nodes=2 --ntasks=2" in script and "deepspeed=zero2" in script


def test_job_array_with_a_throttle(dev_slurm, tmp_path):
    sweep = Sweep(
        tmp_path, "arr", "sweep=tiny", "sweep.budgets=[5e9]", "cluster.submission=array", "cluster.array_throttle=2"
    )
    ((job, job_id),) = sweep.submitted
    assert job.array and len(job.steps) == 3
    assert "#SBATCH --array=0-2%2" in (sweep.dir / "jobs" / f"{job.name}.sbatch").read_text()
    assert slurm_job(dev_slurm, f"{job_id}_0").get("ArrayTaskThrottle") == "2"
    runs = sweep.wait_done()
    assert {r.state for r in runs.values()} == {"completed"}
    _, jobs, attempts = sweep.sync()
    assert [(j.job_id, j.kind, j.state) for j in jobs] == [(job_id, "array", "completed")]
    assert sorted(a.array_index for name in runs for a in attempts[name]) == [0, 1, 2]
    assert set(sweep.steps()) == {f"{job_id}_{i}" for i in range(3)}
    states = sweep.scheduler.status([job_id])
    assert states[job_id] == "completed" and all(states[f"{job_id}_{i}"] == "completed" for i in range(3))


def test_dependency_chain(dev_slurm, tmp_path):
    first = Sweep(tmp_path, "chain_a", *ONE_RUN)
    second = Sweep(tmp_path, "chain_b", *ONE_RUN, dependency=f"afterok:{first.job_ids[0]}")
    waiting = slurm_job(dev_slurm, second.job_ids[0])
    assert waiting["JobState"] == "PENDING"  # Reason: Dependency, or Resources while others' jobs fill the nodes
    assert waiting["Dependency"].startswith(f"afterok:{first.job_ids[0]}")
    first.wait_done()
    second.wait_done()
    a, b = slurm_job(dev_slurm, first.job_ids[0]), slurm_job(dev_slurm, second.job_ids[0])
    assert a["JobState"] == b["JobState"] == "COMPLETED"
    assert b["StartTime"] >= a["EndTime"]  # ISO times compare as strings
    assert second.sync()[1][0].depends_on == f"afterok:{first.job_ids[0]}"


def test_wsd_branches_wait_in_slurm_for_their_trunks_job(dev_slurm, tmp_path):
    sweep = Sweep(tmp_path, "wsd", "sweep=wsd_tiny", "sweep.params=[20000,60000]", "sweep.tokens=[8192,16384]")
    (trunks, trunk_id), (branches, branch_id) = sweep.submitted
    assert {s.name.endswith("-trunk") for s in trunks.steps} == {True} and len(trunks.steps) == 2
    assert {s.name.endswith("-trunk") for s in branches.steps} == {False} and len(branches.steps) == 4
    waiting = slurm_job(dev_slurm, branch_id)
    assert waiting["Dependency"].startswith(f"afterok:{trunk_id}")
    assert waiting["JobState"] == "PENDING"  # Reason: Dependency, or Resources while others' jobs fill the nodes
    runs = sweep.wait_done()
    assert {r.state for r in runs.values()} == {"completed"} and len(runs) == 6
    trunk, branch = slurm_job(dev_slurm, trunk_id), slurm_job(dev_slurm, branch_id)
    assert trunk["JobState"] == branch["JobState"] == "COMPLETED"
    assert branch["StartTime"] >= trunk["EndTime"]  # ISO times compare as strings
    _, jobs, attempts = sweep.sync()
    assert {j.job_id: j.depends_on for j in jobs} == {trunk_id: None, branch_id: f"afterok:{trunk_id}"}
    for step in branches.steps:
        assert [a.job_id for a in attempts[step.name]] == [branch_id]
        first = read_metrics(sweep.dir / "runs" / step.name / "metrics.jsonl")[0]["step"]
        assert first == runs[step.name].fork_step + 1  # the branch began at its trunk's fork, not from scratch


def test_a_stopped_trunk_continues_and_its_branches_wait_for_the_continuation(dev_slurm, tmp_path):
    """The trunk's job is warned (USR2) mid-trunk: it checkpoints and submits its continuation, and the
    branch job, which waited for it to succeed, waits for the continuation instead (scontrol update)."""
    sweep = Sweep(tmp_path, "cont", "sweep=wsd_tiny", "sweep.params=[20000]", "sweep.tokens=[8192,409600]")
    (trunks, trunk_id), (branches, branch_id) = sweep.submitted
    (trunk,) = [s.name for s in trunks.steps]
    wait_until(lambda: (sweep.state(trunk).get("checkpoint_step") or 0) >= 16, 180, "a trunk checkpoint")
    dev_slurm.run("scancel", "--signal=USR2", "--batch", trunk_id)
    runs = sweep.wait_done(timeout=300)
    assert {r.state for r in runs.values()} == {"completed"} and len(runs) == 3
    _, jobs, attempts = sweep.sync()
    (continuation,) = [j.job_id for j in jobs if j.kind == "continuation"]
    assert [(a.job_id, a.state) for a in attempts[trunk]] == [(trunk_id, "timed_out"), (continuation, "completed")]
    branch = slurm_job(dev_slurm, branch_id)
    assert branch["Dependency"] in (f"afterok:{continuation}(unfulfilled)", "(null)")  # (null) once it started
    assert branch["StartTime"] >= slurm_job(dev_slurm, continuation)["EndTime"]
    manifest = json.loads((sweep.dir / "jobs" / f"{branches.name}.json").read_text())
    assert manifest["dependency"] == f"afterok:{continuation}"
    for step in branches.steps:
        first = read_metrics(sweep.dir / "runs" / step.name / "metrics.jsonl")[0]["step"]
        assert first == runs[step.name].fork_step + 1


def test_a_job_after_a_failed_one_is_cancelled_not_left_pending(dev_slurm, tmp_path):
    """A branch job waits on its trunk's with afterok: if the trunk's job fails, Slurm cancels the branch
    job (--kill-on-invalid-dep) and its runs become cancelled, ready for the next ``ladder submit``."""
    failed = dev_slurm.run("sbatch", "--parsable", f"--output={tmp_path}/fail.out", "--wrap", "sleep 2; exit 1")
    failing = failed.stdout.strip().split(";")[0]
    after = Sweep(tmp_path, "orphan", *ONE_RUN, dependency=f"afterok:{failing}")
    wait_until(
        lambda: slurm_job(dev_slurm, after.job_ids[0]).get("JobState") == "CANCELLED", 120, "the waiting job's end"
    )
    assert slurm_job(dev_slurm, failing)["JobState"] == "FAILED"
    assert slurm_job(dev_slurm, after.job_ids[0])["Reason"] == "DependencyNeverSatisfied"
    runs = after.wait_done()
    assert {r.state for r in runs.values()} == {"cancelled"}


def test_walltime_warning_checkpoints_and_the_continuations_end_with_the_same_curve(dev_slurm, tmp_path):
    # 2-min jobs warned 90 s before their end: the controller checks limits every 30 s, so the warning
    # comes 30-60 s into each job; a run of over a minute and a half of training on an idle machine
    # (several under load) cannot end inside the first job, whatever the machine's speed
    long_run = [
        "sweep=tiny",
        "sweep.budgets=[9e11]",
        "sweep.params=[20000]",
        "train.checkpoint_every=1000",
        "train.val_every=1000",
    ]
    reference = Sweep(tmp_path, "whole", *long_run)
    cut = Sweep(tmp_path, "cut", *long_run, "cluster.walltime_min=2", "cluster.signal_before_s=90")
    ((job, first_id),) = cut.submitted
    script = (cut.dir / "jobs" / f"{job.name}.sbatch").read_text()
    assert "#SBATCH --time=00:02:00" in script and "#SBATCH --signal=B:USR2@90" in script
    runs = cut.wait_done(timeout=900)
    reference.wait_done(timeout=300)
    (name,) = runs
    assert runs[name].state == "completed"
    _, jobs, attempts = cut.sync()
    ids = [j.job_id for j in jobs]
    assert len(jobs) >= 2 and ids[0] == first_id
    assert [(j.kind, j.depends_on) for j in jobs[1:]] == [("continuation", f"afterany:{i}") for i in ids[:-1]]
    assert [(a.job_id, a.state, a.exit_code) for a in attempts[name]] == [(i, "timed_out", 75) for i in ids[:-1]] + [
        (ids[-1], "completed", 0)
    ]
    steps = cut.steps()
    assert [steps[i][name] for i in ids] == [[(1, 75)]] * (len(ids) - 1) + [[(1, 0)]]
    for i in ids[:-1]:  # each ended itself after its warning, before its time limit
        assert slurm_job(dev_slurm, i)["JobState"] == "COMPLETED"
    assert "walltime warning" in (cut.dir / "jobs" / f"{job.name}-{first_id}.out").read_text()
    state = cut.state(name)
    assert state["resumed_from"] and 0 < state["resumed_from"] < state["total_steps"]
    whole = read_metrics(reference.dir / "runs" / name / "metrics.jsonl")
    resumed = read_metrics(cut.dir / "runs" / name / "metrics.jsonl")
    assert len(whole) == len(resumed) == state["total_steps"]
    for key in ("step", "tokens", "train_loss", "lr"):
        assert [r[key] for r in resumed] == [r[key] for r in whole], key
    assert [r.get("val_loss") for r in resumed] == [r.get("val_loss") for r in whole]


def test_usr2_to_the_batch_shell_takes_the_same_path(dev_slurm, tmp_path):
    sweep = Sweep(
        tmp_path,
        "usr2",
        "sweep=tiny",
        "sweep.budgets=[3e10]",
        "sweep.params=[20000,60000]",
        "train.checkpoint_every=20",
    )
    (first_id,) = sweep.job_ids
    names = list(sweep.runs())
    wait_until(
        lambda: all((sweep.state(n).get("checkpoint_step") or 0) >= 20 for n in names),
        180,
        "a checkpoint of every run",
        progress=sweep.progress,
    )
    dev_slurm.run("scancel", "--signal=USR2", "--batch", first_id)  # the batch shell and its children
    runs = sweep.wait_done()
    assert {r.state for r in runs.values()} == {"completed"}
    _, jobs, _ = sweep.sync()
    assert len(jobs) == 2 and jobs[1].depends_on == f"afterany:{first_id}"
    steps = sweep.steps()
    assert steps[first_id] == {n: [(1, 75)] for n in names}
    assert steps[jobs[1].job_id] == {n: [(1, 0)] for n in names}
    assert all(sweep.state(n)["resumed_from"] >= 20 for n in names)


def test_cancel_leaves_runs_resumable(dev_slurm, tmp_path):
    overrides = ["sweep=tiny", "sweep.budgets=[1.2e11]", "sweep.params=[20000,60000]", "train.checkpoint_every=20"]
    sweep = Sweep(tmp_path, "cx", *overrides)
    names = list(sweep.runs())
    wait_until(
        lambda: all((sweep.state(n).get("checkpoint_step") or 0) >= 20 for n in names),
        180,
        "a checkpoint of every run",
        progress=sweep.progress,
    )
    lines = cancel_sweep(sweep.overrides)
    assert lines[0] == f"cancelled jobs: {sweep.job_ids[0]}"
    wait_until(
        lambda: (
            slurm_job(dev_slurm, sweep.job_ids[0])["JobState"] == "CANCELLED"
            and all(sweep.state(n).get("status") != "running" for n in names)
        ),
        60,
        "the job to be cancelled",
    )
    runs, jobs, _ = sweep.sync()
    assert {r.state for r in runs.values()} == {"cancelled"} and jobs[0].state == "cancelled"
    stopped = {n: sweep.state(n) for n in names}
    assert all(s["status"] == "requeue" and s["checkpoint_step"] >= 20 for s in stopped.values())
    assert len(list((sweep.dir / "jobs").glob("*.json"))) == 1  # no continuation after a cancel
    again = submit_sweep(sweep.overrides)
    assert len(again) == 1
    runs = sweep.wait_done()
    assert {r.state for r in runs.values()} == {"completed"}
    for n in names:
        assert sweep.state(n)["resumed_from"] >= stopped[n]["checkpoint_step"]


def test_a_killed_rank_fails_its_run_which_retries_from_its_checkpoint(dev_slurm, tmp_path):
    sweep = Sweep(
        tmp_path,
        "kill",
        "sweep=tiny",
        "sweep.budgets=[3e10]",
        "sweep.params=[20000]",
        "++sweep.ranks_per_run=2",
        "train.micro_batch_size=8",
        "train.checkpoint_every=20",
    )
    (job_id,) = sweep.job_ids
    (name,) = sweep.runs()
    wait_until(
        lambda: (sweep.state(name).get("checkpoint_step") or 0) >= 20, 180, "a checkpoint", progress=sweep.progress
    )
    victim = wait_until(lambda: _rank_pid(job_id, 1, name), 30, "rank 1's process")
    os.kill(victim, signal.SIGKILL)
    runs = sweep.wait_done()
    assert runs[name].state == "completed"
    (codes,) = sweep.steps()[job_id].values()
    assert len(codes) == 2 and codes[0][1] not in (0, 75) and codes[1] == (2, 0)
    _, _, attempts = sweep.sync()
    assert [(a.state, a.job_id) for a in attempts[name]] == [("failed", job_id), ("completed", job_id)]
    assert runs[name].consecutive_failures == 0
    assert sweep.state(name)["resumed_from"] >= 20


def _rank_pid(job_id: str, rank: int, run_name: str) -> int | None:
    """The pid of one rank of a run's job step, found by its environment."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = dict(v.split("=", 1) for v in (proc / "environ").read_text().split("\0") if "=" in v)
            cmdline = (proc / "cmdline").read_text()
        except OSError:
            continue
        if (
            environ.get("SLURM_JOB_ID") == job_id
            and environ.get("SLURM_PROCID") == str(rank)
            and environ.get("SLURM_STEP_ID", "batch").isdigit()
            and "train" in cmdline
            and run_name in cmdline
        ):
            return int(proc.name)
    return None


def test_a_stopped_rank_hangs_its_step_which_is_killed_and_retried_on_another_node(dev_slurm, tmp_path):
    """SIGSTOP one rank of a 2-rank run: the lane's hang watcher finds it silent for cluster.hang_timeout_s,
    the step is killed, the hang recorded in state.json, and the retry resumes from the last checkpoint on
    the job's other node (srun --exclude), where the run completes."""
    timeout_s, every = 20, 20
    sweep = Sweep(
        tmp_path,
        "hang",
        "sweep=tiny",
        "sweep.budgets=[3e10]",
        "sweep.params=[20000,60000]",
        "++sweep.ranks_per_run=2",
        "train.micro_batch_size=8",
        f"train.checkpoint_every={every}",
        "train.val_every=1000",
        f"cluster.hang_timeout_s={timeout_s}",
    )
    ((job, job_id),) = sweep.submitted
    assert job.nodes == 2 and job.lanes == 2  # two one-node runs: a node to spare for a retry
    script = (sweep.dir / "jobs" / f"{job.name}.sbatch").read_text()
    assert '${exclude:+"--exclude=$exclude"}' in script and f"--timeout-s {timeout_s}" in script
    name = max(sweep.runs(), key=lambda n: sweep.runs()[n].steps)  # the longer run is the one stopped
    run_dir = sweep.dir / "runs" / name
    beat = wait_until(
        lambda: (b := read_beats(run_dir).get(1)) is not None and b.step > every + 2 and b,
        180,
        "rank 1 past the first checkpoint",
        every=0.02,
        progress=sweep.progress,
    )
    os.kill(beat.pid, signal.SIGSTOP)
    stopped_at, stopped_step, hung_host = time.time(), beat.step, beat.host
    runs = sweep.wait_done()

    assert {r.state for r in runs.values()} == {"completed"}
    assert sweep.steps()[job_id][name] == [(1, 4), (2, 0)]  # the hung step counts as exit 4, then a retry
    _, _, attempts = sweep.sync()
    assert [(a.state, a.job_id) for a in attempts[name]] == [("hung", job_id), ("completed", job_id)]
    state = sweep.state(name)
    [hang] = state["hangs"]
    assert hang["ranks"] == [1] and hang["hosts"] == [hung_host]
    assert stopped_step <= hang["step"] <= stopped_step + 1
    detected_s = hang["at"] - stopped_at
    # silent for the timeout (silent_s is rounded to 0.1 s), found within a poll and a slow start of the watcher
    assert timeout_s <= hang["silent_s"] <= timeout_s + 5 and detected_s <= timeout_s + 10, (hang, detected_s)
    assert stopped_step - every < state["resumed_from"] <= stopped_step and state["resumed_from"] % every == 0
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == list(range(1, state["total_steps"] + 1))
    # the retry ran on the other node: srun left out the one it hung on
    retry_hosts = {b.host for b in read_beats(run_dir).values()}
    assert retry_hosts and hung_host not in retry_hosts and state["hostname"] != hung_host
    output = (sweep.dir / "jobs" / f"{job.name}-{job_id}.out").read_text()
    assert f"step 2 starts (steps of this job hung on {hung_host})" in output, output
    print(
        f"hang found {detected_s:.1f} s after SIGSTOP (timeout {timeout_s} s) on {hung_host}; retry resumed from "
        f"step {state['resumed_from']} (stopped at {stopped_step}) on {sorted(retry_hosts)}"
    )
