"""IBM LSF: job scripts from lsf/*.j2, runs as jsrun (or mpirun) job steps, state from bjobs.

The command outputs follow IBM's LSF 10.1 command reference (bsub, bjobs -o/-json, bkill, brequeue)
and the message table LSF prints its errors from; tests/data/lsf/README.md cites each page and holds
recorded outputs, which the tests print from stand-ins on PATH (LSF cannot be installed here).

Array elements: LSF counts them from 1 ("123[5]"); this adapter, the job scripts (JOB_KEY) and the
submitit executor name them as Slurm does, by task index from 0 ("123_4" is run 4 of the array), so the
job database reads both schedulers alike; ``to_lsf`` and ``from_lsf`` are the only translation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from launcher.config.cluster import ClusterProfile
from launcher.errors import UserError
from launcher.schedulers.base import BatchJob, Dependency, Scheduler, Shell, Step
from launcher.schedulers.jsrun import resource_sets
from launcher.schedulers.slurm import _aggregate as aggregate  # scheduler-neutral; to move to base

# bjobs STAT -> adapter job state. Suspended jobs keep their allocation (still running); PSUSP is a
# pending job held by its owner or by the eligible-jobs limit; UNKWN means mbatchd lost the execution
# host for a while, not that the job stopped; ZOMBI is a job killed while its host was unreachable.
STATES = {
    "PEND": "queued",
    "PSUSP": "queued",
    "WAIT": "queued",
    "PROV": "queued",
    "RUN": "running",
    "USUSP": "running",
    "SSUSP": "running",
    "UNKWN": "running",
    "DONE": "completed",
    "EXIT": "failed",
    "ZOMBI": "cancelled",
}
# EXIT refined by the exit reason (bjobs -o exit_reason): killed at the run limit, or by a person.
EXIT_REASON_STATES = {
    "TERM_RUNLIMIT": "timed_out",
    "TERM_OWNER": "cancelled",
    "TERM_ADMIN": "cancelled",
    "TERM_FORCE_OWNER": "cancelled",
    "TERM_FORCE_ADMIN": "cancelled",
}
BJOBS_FIELDS = "jobid jobindex stat exit_code exit_reason"
# Slurm's dependency kinds (launcher.schedulers.base.Dependency) in LSF's -w conditions.
DEPENDENCY_CONDITIONS = {"after": "started", "afterok": "done", "afterany": "ended", "afternotok": "exit"}

_SUBMITTED = re.compile(r"Job <(?P<id>\d+)> is submitted to (?:default )?queue <(?P<queue>[^>]*)>")
# bsub's refusals ("<what>: <LSF message>. Job not submitted.") -> the config field to fix.
_SUBMIT_ERRORS = (
    (
        re.compile(r"No such queue|Queue name must be specified|User cannot use the queue", re.I),
        "cluster.queue",
        "unknown queue (bqueues lists them)",
    ),
    (
        re.compile(r"Queue has been closed|queue windows are closed", re.I),
        "cluster.queue",
        "the queue is closed (bqueues -l shows why and until when)",
    ),
    (
        re.compile(r"job threshold|job limit|enough job slots", re.I),
        "cluster.max_queued_jobs",
        "over the site's job limit: wait for jobs to finish, or lower cluster.max_queued_jobs",
    ),
    (
        re.compile(r"project|esub", re.I),
        "cluster.account",
        "the project was refused (bsub -P; `showusage` lists yours)",
    ),
)


@dataclasses.dataclass(frozen=True)
class LsfRecord:
    """One job (or array element) as bjobs reports it."""

    job_id: str  # "123", or "123[5]" for element 5 of array 123
    stat: str
    exit_code: Optional[int] = None
    exit_reason: str = ""

    @property
    def state(self) -> str:
        """The adapter's job state (launcher.schedulers.base.JOB_STATES) for this record."""
        if self.stat == "EXIT":
            return EXIT_REASON_STATES.get(self.exit_reason.split(":", 1)[0].strip(), "failed")
        return STATES.get(self.stat, "running")  # a state newer than this table: LSF still holds the job


FIRST_ELEMENT = 1  # LSF numbers array elements from 1 (bsub -J "name[1-n]", LSB_JOBINDEX, %I); tasks count from 0


def element_id(job_id: str, index: int | str | None) -> str:
    """LSF's own spelling of an array element ("123[5]"); index 0 or empty means not an array."""
    return f"{job_id}[{index}]" if index not in (None, "", "0", 0) else str(job_id)


def to_lsf(job_id: str) -> str:
    """The adapters' "123_4" (task 4, from 0, as Slurm and the job scripts' JOB_KEY write it) -> LSF's
    "123[5]" (element 5, from 1). The one place, with ``from_lsf``, that knows the two counts differ."""
    main, _, task = str(job_id).partition("_")
    return f"{main}[{int(task) + FIRST_ELEMENT}]" if task else main


def from_lsf(job_id: str) -> str:
    """LSF's "123[5]" -> the adapters' "123_4"."""
    found = re.fullmatch(r"(\d+)\[(\d+)\]", job_id)
    return f"{found.group(1)}_{int(found.group(2)) - FIRST_ELEMENT}" if found else job_id


def job_key(environ: Mapping[str, str]) -> str:
    """The key of the job (or array element) a process runs in, from LSB_JOBID and LSB_JOBINDEX."""
    return from_lsf(element_id(environ["LSB_JOBID"], environ.get("LSB_JOBINDEX")))


def key_path(pattern: str) -> Shell:
    """A log path as one shell word, its job tags from the job script's JOB_KEY: %j the key (``123``,
    ``123_4`` for task 4), %A the job, %a the task. LSF's own %I counts elements from 1, so a file that
    must be named by the task is opened by the job, not by bsub -o."""
    tags = {"%j": '"${JOB_KEY}"', "%A": '"${LSB_JOBID}"', "%a": '"${JOB_KEY#*_}"'}
    parts = re.split(r"(%[jAa])", str(pattern))
    return Shell("".join(tags.get(part) or shlex.quote(part) for part in parts if part))


def parse_bsub(stdout: str, stderr: str = "") -> str:
    """The job id from bsub's "Job <id> is submitted to queue <q>."; a refusal raises UserError."""
    found = _SUBMITTED.search(stdout) or _SUBMITTED.search(stderr)
    if found:
        return found.group("id")
    message = " ".join(line.strip() for line in (stderr + "\n" + stdout).splitlines() if line.strip())
    for pattern, field, advice in _SUBMIT_ERRORS:
        if pattern.search(message):
            raise UserError(f"{field}: bsub refused the job: {message} ({advice})")
    raise UserError(f"bsub refused the job: {message or 'no output'}")


def parse_bjobs_json(text: str) -> dict[str, LsfRecord]:
    """Records of ``bjobs -o "jobid jobindex stat exit_code exit_reason" -json``; unknown ids are left out."""
    try:
        records = json.loads(text)["RECORDS"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not bjobs -json output: {text[:200]!r}") from exc
    out = {}
    for rec in records:
        if "ERROR" in rec or not rec.get("STAT"):  # e.g. "Job <999> is not found": finished long ago
            continue
        code = str(rec.get("EXIT_CODE", "")).strip()
        record = LsfRecord(
            job_id=element_id(rec["JOBID"], rec.get("JOBINDEX")),
            stat=rec["STAT"],
            exit_code=int(code) if code.lstrip("-").isdigit() else None,
            exit_reason=rec.get("EXIT_REASON", ""),
        )
        out[record.job_id] = record
    return out


_NAME_INDEX = re.compile(r"\[(\d+)\]$")


def parse_bjobs_plain(text: str) -> dict[str, LsfRecord]:
    """Records of plain ``bjobs -a -w`` (header or ``-noheader``): JOBID, STAT and the [index] of JOB_NAME.

    Without a header the columns are IBM's default (JOBID USER STAT QUEUE FROM_HOST EXEC_HOST JOB_NAME
    SUBMIT_TIME); with one, they are found by name, so a site's LSB_BJOBS_FORMAT is read too. Lines that
    start with a blank continue the exec hosts of the row above.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    columns = ["JOBID", "USER", "STAT", "QUEUE", "FROM_HOST", "EXEC_HOST", "JOB_NAME"]
    if lines and lines[0].split()[0] == "JOBID":
        columns = lines.pop(0).split()
    out = {}
    for line in lines:
        if line[0].isspace() or not line.split()[0].isdigit():
            continue  # a continuation of EXEC_HOST, or "Job <999> is not found"
        cells = dict(zip(columns, line.split()))
        name_index = _NAME_INDEX.search(cells.get("JOB_NAME", ""))
        record = LsfRecord(
            job_id=element_id(cells["JOBID"], name_index.group(1) if name_index else None), stat=cells["STAT"]
        )
        out[record.job_id] = record
    return out


def parse_signal_output(text: str) -> dict[str, str]:
    """bkill / brequeue lines -> {job id: what LSF said}: "is being terminated", "Job has already finished" ..."""
    out = {}
    for line in text.splitlines():
        found = re.match(r"\s*Job <([^>]+)>:?\s*(.*?)\s*$", line)
        if found:
            out[found.group(1)] = found.group(2)
    return out


def directive_arg(value: Any) -> Shell:
    """Quote a #BSUB value the way LSF's script parser reads it: one quote character per line, no escapes.

    bsub takes whichever of ' or " comes first on a #BSUB line as that line's quote and has no escape
    character, so a value is wrapped in double quotes (as in IBM's and OLCF's examples), or in single
    quotes when it holds a double quote; a value holding both, or a newline, cannot be written.
    """
    text = str(value)
    if "\n" in text or ('"' in text and "'" in text):
        raise UserError(f"a #BSUB value cannot hold a newline or both quote characters: {text!r}")
    return Shell(f"'{text}'" if '"' in text else f'"{text}"')


def directive_words(option: str) -> Shell:
    """A whole extra directive from cluster.directives ("-alloc_flags gpumps"): the flag, then quoted values."""
    words = shlex.split(option)
    if not words or not re.fullmatch(r"-[A-Za-z_]+", words[0]):
        raise UserError(f"cluster.directives: {option!r} does not start with a bsub option such as -G")
    return Shell(" ".join([words[0], *(directive_arg(w) for w in words[1:])]))


def walltime(minutes: int) -> Shell:
    """bsub -W takes [hours:]minutes."""
    if minutes < 1:
        raise UserError(f"walltime: must be at least 1 minute, got {minutes}")
    return Shell(f"{minutes // 60}:{minutes % 60:02d}")


def warning_minutes(seconds: int) -> Shell:
    """bsub -wt counts whole minutes: a warning of under a minute comes a minute early."""
    return Shell(str(max(1, math.ceil(seconds / 60))))


def lsf_pattern(path: str) -> str:
    """A log path with LSF's own tags: the job id %J (and array element %I) for the adapters' %j, %A, %a."""
    return str(path).replace("%j", "%J").replace("%A", "%J").replace("%a", "%I")


def dependency_condition(dependency: Dependency) -> str:
    """``afterany:123:456`` -> ``ended(123) && ended(456)`` (bsub -w)."""
    condition = DEPENDENCY_CONDITIONS[dependency.kind]
    return " && ".join(f"{condition}({to_lsf(j)})" for j in dependency.job_ids)


def bsub_argv(
    profile: ClusterProfile, script_path: str | os.PathLike, dependency: Optional[Dependency] = None
) -> list[str]:
    """The bsub command line for a script: on its command line, or on stdin where LSF reads #BSUB lines
    only from there (``cluster.script_via_stdin``). LSB_NTRIES=1 unless set: a refused bsub otherwise
    retries without end ("Pending job threshold reached. Retrying in 60 seconds...")."""
    bsub = ["env", f"LSB_NTRIES={os.environ.get('LSB_NTRIES', '1')}", "bsub"]
    if dependency is not None:
        bsub += ["-w", dependency_condition(dependency)]  # the command line wins over the script's -w
    if profile.script_via_stdin:
        return ["sh", "-c", 'script=$1; shift; exec "$@" < "$script"', "sh", str(script_path), *bsub]
    return [*bsub, str(script_path)]


class LsfScheduler(Scheduler):
    """bsub / bjobs / bkill / brequeue; a site template extends lsf/base.j2 (Summit: lsf/summit.j2)."""

    name = "lsf"
    template_dir = "lsf"
    default_template = "base.j2"
    script_suffix = ".lsf"
    step_launchers = ("jsrun", "mpirun", "local")

    def template_env(self):
        env = super().template_env()
        env.filters.update(
            walltime=walltime,
            warning_minutes=warning_minutes,
            directive_words=directive_words,
            lsf_pattern=lsf_pattern,
            dependency_condition=dependency_condition,
        )
        return env

    def directive(self, value: Any) -> Shell:
        return directive_arg(value)

    def step_argv(self, job: BatchJob, step: Step, log: str) -> tuple[str, ...]:
        """jsrun with one resource set per rank; mpirun over the job's hosts; nothing for local steps."""
        return self.launcher_argv(step.ranks, step.nodes)

    def launcher_argv(
        self, ranks: int, nodes: int, gpus_per_rank: Optional[int] = None, cores_per_rank: Optional[int] = None
    ) -> tuple[str, ...]:
        """The step launcher's words for ``ranks`` ranks over ``nodes`` nodes (shape: the profile's, unless given)."""
        p = self.profile
        extra = [*p.step_args, *(p.multinode_step_args if nodes > 1 else [])]
        if p.step_launcher == "jsrun":
            rs = resource_sets(p, ranks, gpus_per_rank, cores_per_rank)
            if rs.nodes > nodes:
                raise UserError(
                    f"sweep.ranks_per_run: {ranks} ranks of {rs.gpus_per_rs} GPU(s) and {rs.cores_per_rs} "
                    f"cores need {rs.nodes} nodes of {p.name} ({rs.rs_per_host} per node), not the "
                    f"{nodes} of a run (sweep.nodes)"
                )
            return (*rs.argv(), *extra)
        if p.step_launcher == "mpirun":  # LSF-integrated Open MPI places ranks on the job's hosts
            return ("mpirun", "-np", str(ranks), "--map-by", f"ppr:{math.ceil(ranks / nodes)}:node", *extra)
        if ranks > 1:
            raise UserError(
                f"cluster.step_launcher: 'local' starts one process per step, not {ranks} ranks; use jsrun or mpirun"
            )
        return tuple(extra)

    # ------------------------------------------------------------------------------------ the commands

    def submit(self, script_path: str | os.PathLike, dependency: Optional[Dependency] = None) -> str:
        done = self.run_command(bsub_argv(self.profile, script_path, dependency), check=False)
        if done.returncode == 127:  # from env: bsub itself is missing
            raise UserError(
                f"bsub: not found on PATH; cluster={self.profile.name} needs LSF's commands (run from a login node)"
            )
        return parse_bsub(done.stdout, done.stderr)

    def set_dependency(self, job_id: str, dependency: Dependency) -> None:
        """bmod -w: a pending job's new dependency condition."""
        self.run_command(["bmod", "-w", dependency_condition(dependency), to_lsf(job_id)])

    def status(self, job_ids: Iterable[str]) -> dict[str, str]:
        """States by the ids asked for; an array also by task ("123_4"), and aggregated under its own id."""
        wanted = {str(j) for j in job_ids}
        if not wanted:
            return {}
        records = {from_lsf(k): r.state for k, r in self.records(wanted).items()}
        out: dict[str, str] = {}
        for job_id in wanted:
            tasks = {k: s for k, s in records.items() if k.split("_")[0] == job_id and "_" in k}
            if job_id in records:
                out[job_id] = records[job_id]
            elif tasks:
                out[job_id] = aggregate(list(tasks.values()))
            else:
                out[job_id] = "ended"  # bjobs forgets finished jobs after CLEAN_PERIOD
            out.update(tasks)
        return out

    def records(self, job_ids: Iterable[str]) -> dict[str, LsfRecord]:
        """bjobs records of the jobs (arrays expand to their elements); ids LSF no longer knows are left out."""
        ids = sorted({to_lsf(str(j)).split("[", 1)[0] for j in job_ids})
        if not ids:
            return {}
        done = self.run_command(["bjobs", "-a", "-o", BJOBS_FIELDS, "-json", *ids], check=False)
        try:
            return parse_bjobs_json(done.stdout)
        except ValueError:  # LSF older than 10.1.0.2 has no -json: the plain table
            return parse_bjobs_plain(self.run_command(["bjobs", "-a", "-w", *ids], check=False).stdout)

    def cancel(self, job_ids: Iterable[str]) -> None:
        """bkill; jobs already finished or unknown to LSF are no error."""
        self._signal("bkill", job_ids)

    def requeue(self, job_ids: Iterable[str]) -> dict[str, str]:
        """brequeue: kill the running job and put it back in the queue under the same id."""
        return self._signal("brequeue", job_ids)

    def signal(self, job_ids: Iterable[str], signal_name: str) -> dict[str, str]:
        """bkill -s: send a signal (USR2, the walltime warning) to running jobs."""
        return self._signal("bkill", job_ids, ["-s", signal_name])

    def queued_jobs(self) -> int:
        """This user's unfinished jobs (array elements counted one by one), for the queue limit."""
        done = self.run_command(["bjobs", "-o", "jobid", "-noheader"], check=False)
        return sum(1 for line in done.stdout.splitlines() if line.strip().isdigit())

    def _signal(self, command: str, job_ids: Iterable[str], options: Iterable[str] = ()) -> dict[str, str]:
        ids = sorted({to_lsf(str(j)) for j in job_ids})
        if not ids:
            return {}
        done = self.run_command([command, *options, *ids], check=False)
        said = parse_signal_output(done.stdout + "\n" + done.stderr)
        failed = {
            j: m
            for j, m in said.items()
            if not m.startswith("is being") and not re.search(r"already finished|No matching job", m)
        }
        if failed:
            raise UserError(f"{command}: " + "; ".join(f"job {j}: {m}" for j, m in failed.items()))
        return said


def commands() -> LsfScheduler:
    """The LSF commands without a site profile (inside a job, or for submitit's status polling)."""
    return LsfScheduler(ClusterProfile(name="lsf", scheduler="lsf", step_launcher="local"))
