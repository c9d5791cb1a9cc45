"""Slurm: sbatch scripts from slurm/*.j2, runs as ``srun`` job steps, state from squeue (and sacct).

Each run is one ``srun --exact`` step, so the steps of a packed job share its nodes. Without slurmdbd
(the dev cluster) there is no sacct: squeue keeps finished jobs for MinJobAge, and after that a job is
"ended" and its runs' own records tell how they ended.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any, Optional

from launcher.errors import UserError
from launcher.schedulers.base import BatchJob, Dependency, Scheduler, Shell, Step

# Slurm job state (squeue %T, sacct State) -> adapter job state
STATES = {
    "PENDING": "queued",
    "REQUEUED": "queued",
    "REQUEUE_HOLD": "queued",
    "REQUEUE_FED": "queued",
    "RESV_DEL_HOLD": "queued",
    "SUSPENDED": "running",
    "CONFIGURING": "running",
    "RUNNING": "running",
    "COMPLETING": "running",
    "RESIZING": "running",
    "SIGNALING": "running",
    "STAGE_OUT": "running",
    "STOPPED": "running",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "NODE_FAIL": "failed",
    "BOOT_FAIL": "failed",
    "OUT_OF_MEMORY": "failed",
    "SPECIAL_EXIT": "failed",
    "CANCELLED": "cancelled",
    "REVOKED": "cancelled",
    "TIMEOUT": "timed_out",
    "DEADLINE": "timed_out",
    "PREEMPTED": "timed_out",
}
# sbatch's refusals -> the profile field to fix
_SUBMIT_ERRORS = (
    (re.compile(r"invalid account|account.*(not|invalid)", re.I), "cluster.account"),
    (re.compile(r"invalid partition", re.I), "cluster.partition"),
    (re.compile(r"invalid qos|qos", re.I), "cluster.qos"),
    (re.compile(r"time limit|walltime", re.I), "cluster.queue_bins"),
    (re.compile(r"MaxSubmit|job limit|AssocMaxJobs", re.I), "cluster.max_queued_jobs"),
    (re.compile(r"node count|nodes? .*(available|configuration)", re.I), "cluster.queue_bins"),
)


# leave out the nodes steps of this job hung on: the lane shell's $exclude (launcher/schedulers/lane.sh.j2)
EXCLUDE_HUNG = Shell('${exclude:+"--exclude=$exclude"}')


def walltime(minutes: int) -> str:
    """Slurm's --time as HH:MM:SS."""
    if minutes < 1:
        raise UserError(f"walltime: must be at least 1 minute, got {minutes}")
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


class SlurmScheduler(Scheduler):
    name = "slurm"
    template_dir = "slurm"
    default_template = "generic.sbatch.j2"
    script_suffix = ".sbatch"
    conf_variable = "SLURM_CONF"
    step_launchers = ("srun",)

    def template_env(self):
        env = super().template_env()
        env.filters["walltime"] = lambda minutes: Shell(walltime(minutes))
        return env

    def directive(self, value: Any) -> Shell:
        """A #SBATCH value: sbatch reads one pair of quotes around it and knows no escapes."""
        text = str(value)
        if "\n" in text or "'" in text:
            raise UserError(f"an #SBATCH value cannot hold a newline or a single quote: {text!r}")
        return Shell(text if re.fullmatch(r"[\w@%+=:,./-]+", text) else f"'{text}'")

    def step_argv(self, job: BatchJob, step: Step, log: str) -> tuple[str, ...]:
        p = self.profile
        argv = [
            "srun",
            "--exact",
            "--kill-on-bad-exit=1",
            f"--nodes={step.nodes}",
            f"--ntasks={step.ranks}",
            f"--cpus-per-task={p.cores_per_task}",
        ]
        if p.gpus_per_task:
            argv.append(f"--gpus-per-task={p.gpus_per_task}")
        if p.gpu_bind:
            argv.append(f"--gpu-bind={p.gpu_bind}")
        if p.cpu_bind:
            argv.append(f"--cpu-bind={p.cpu_bind}")
        argv += p.step_args
        if step.nodes > 1:
            argv += p.multinode_step_args
        argv.append(EXCLUDE_HUNG)
        argv += [f"--job-name={step.name}", f"--output={log}", "--open-mode=append"]
        return tuple(argv)

    # ------------------------------------------------------------------------------------ the commands

    def submit(self, script_path: str | os.PathLike, dependency: Optional[Dependency] = None) -> str:
        argv = ["sbatch", "--parsable"]
        if (
            dependency is not None
        ):  # a job after one that failed (a WSD trunk's, afterok) is cancelled, not left pending
            argv += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
        done = self.run_command([*argv, str(script_path)], check=False)
        first = done.stdout.strip().split(";")[0]
        if done.returncode == 0 and first.isdigit():
            return first
        message = " ".join((done.stderr + " " + done.stdout).split()) or f"exit {done.returncode}"
        for pattern, field in _SUBMIT_ERRORS:
            if pattern.search(message):
                raise UserError(f"{field}: sbatch refused the job: {message}")
        raise UserError(f"sbatch refused the job: {message}")

    def set_dependency(self, job_id: str, dependency: Dependency) -> None:
        self.run_command(["scontrol", "update", f"JobId={job_id}", f"Dependency={dependency}"])

    def status(self, job_ids: Iterable[str]) -> dict[str, str]:
        wanted = {str(j) for j in job_ids}
        if not wanted:
            return {}
        records = self._squeue()
        missing = {j for j in wanted if j not in records and j.split("_")[0] not in _array_ids(records)}
        if missing:
            records.update(self._sacct(missing))
        out: dict[str, str] = {}
        for job_id in wanted:
            if job_id in records:
                out[job_id] = records[job_id]
            elif "_" not in job_id and job_id in _array_ids(records):
                out[job_id] = _aggregate([s for k, s in records.items() if k.split("_")[0] == job_id])
            else:
                out[job_id] = "ended"
            out.update({k: s for k, s in records.items() if "_" in k and k.split("_")[0] == job_id})
        return out

    def _squeue(self) -> dict[str, str]:
        """This user's jobs that the controller still holds (finished ones for MinJobAge), by id."""
        done = self.run_command(
            ["squeue", "--me", "--noheader", "--states=all", "--array", "--format=%i|%T"], check=False
        )
        if done.returncode != 0:
            raise UserError(f"squeue failed: {' '.join(done.stderr.split()) or done.returncode}")
        records = {}
        for line in done.stdout.splitlines():  # --array: one line per array task, "123_4"
            job_id, _, state = line.strip().partition("|")
            if job_id and state:
                records[job_id] = STATES.get(state.split()[0], "running")
        return records

    def _sacct(self, job_ids: set[str]) -> dict[str, str]:
        """Finished jobs from accounting; nothing when the site (or the dev cluster) has none."""
        done = self.run_command(
            [
                "sacct",
                "--noheader",
                "--parsable2",
                "--allocations",
                "--format=JobID,State",
                f"--jobs={','.join(sorted(job_ids))}",
            ],
            check=False,
        )
        if done.returncode != 0:
            return {}
        records = {}
        for line in done.stdout.splitlines():
            job_id, _, state = line.strip().partition("|")
            if job_id and state:
                records[job_id] = STATES.get(state.split()[0], "ended")
        return records

    def cancel(self, job_ids: Iterable[str]) -> None:
        ids = sorted({str(j) for j in job_ids})
        if ids:
            done = self.run_command(["scancel", *ids], check=False)
            errors = [
                line
                for line in done.stderr.splitlines()
                if line.strip() and not re.search(r"already completed|Invalid job id", line)
            ]
            if errors:
                raise UserError(f"scancel failed: {' '.join(errors)}")

    def queued_jobs(self) -> int:
        done = self.run_command(["squeue", "--me", "--noheader", "--array", "--format=%i"], check=False)
        return len(done.stdout.split()) if done.returncode == 0 else 0


def _array_ids(records: dict[str, str]) -> set[str]:
    return {k.split("_")[0] for k in records if "_" in k}


def _aggregate(states: list[str]) -> str:
    """An array job's state from its tasks': active while any task is, else the worst ending."""
    for state in ("running", "queued", "failed", "timed_out", "cancelled", "completed"):
        if state in states:
            return state
    return "ended"
