"""IBM LSF: job scripts from lsf/*.j2, and bsub / bjobs / bkill / brequeue run and parsed.

The output formats follow IBM's LSF 10.1 command reference (bsub, bjobs -o/-json, bkill, brequeue)
and the message table LSF prints its errors from; tests/data/lsf/README.md cites each page and holds
recorded outputs. The commands are looked up on PATH, so the tests put stand-ins there that print
those recorded outputs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Optional

import jinja2

from launcher.cluster import ClusterProfile
from launcher.errors import UserError
from launcher.jobdb import EXIT_CODE_STATES

TEMPLATE_DIR = Path(__file__).resolve().parent.parent.parent / "lsf"

# bjobs STAT -> job database state. Suspended jobs keep their allocation (still running); PSUSP is a
# pending job held by its owner or by the eligible-jobs limit; UNKWN means mbatchd lost the execution
# host for a while, not that the job stopped; ZOMBI is a job killed while its host was unreachable.
STATES = {
    "PEND": "queued", "PSUSP": "queued", "WAIT": "queued", "PROV": "queued",
    "RUN": "running", "USUSP": "running", "SSUSP": "running", "UNKWN": "running",
    "DONE": "completed", "EXIT": "failed", "ZOMBI": "cancelled",
}
# EXIT refined by the exit reason (bjobs -o exit_reason): killed at the run limit, or by a person.
EXIT_REASON_STATES = {
    "TERM_RUNLIMIT": "timed_out", "TERM_OWNER": "cancelled", "TERM_ADMIN": "cancelled",
    "TERM_FORCE_OWNER": "cancelled", "TERM_FORCE_ADMIN": "cancelled",
}
BJOBS_FIELDS = "jobid jobindex stat exit_code exit_reason"

_SUBMITTED = re.compile(r"Job <(?P<id>\d+)> is submitted to (?:default )?queue <(?P<queue>[^>]*)>")
# bsub's refusals ("<what>: <LSF message>. Job not submitted.") -> the config field to fix.
_SUBMIT_ERRORS = (
    (re.compile(r"No such queue|Queue name must be specified|User cannot use the queue", re.I), "cluster.queue",
     "unknown queue (bqueues lists them)"),
    (re.compile(r"Queue has been closed|queue windows are closed", re.I), "cluster.queue",
     "the queue is closed (bqueues -l shows why and until when)"),
    (re.compile(r"job threshold|job limit|enough job slots", re.I), "cluster.max_queued_jobs",
     "over the site's job limit: wait for jobs to finish, or lower cluster.max_queued_jobs"),
    (re.compile(r"project|esub", re.I), "cluster.account",
     "the project was refused (bsub -P; `showusage` lists yours)"),
)


@dataclasses.dataclass(frozen=True)
class LsfRecord:
    """One job (or array element) as bjobs reports it."""

    job_id: str  # "123", or "123[4]" for element 4 of array 123
    stat: str
    exit_code: Optional[int] = None
    exit_reason: str = ""

    @property
    def state(self) -> str:
        """The job database state for this record."""
        if self.stat == "EXIT":
            if self.exit_code in EXIT_CODE_STATES:  # the job's own verdict (75: checkpointed, continue)
                return EXIT_CODE_STATES[self.exit_code]
            reason = self.exit_reason.split(":", 1)[0].strip()
            return EXIT_REASON_STATES.get(reason, "failed")
        return STATES.get(self.stat, "running")  # a state LSF added later: known to LSF, so not over


def element_id(job_id: str, index: int | str | None) -> str:
    """LSF's own spelling of an array element ("123[4]"); index 0 or empty means not an array."""
    return f"{job_id}[{index}]" if index not in (None, "", "0", 0) else str(job_id)


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
        code = rec.get("EXIT_CODE", "")
        record = LsfRecord(job_id=element_id(rec["JOBID"], rec.get("JOBINDEX")), stat=rec["STAT"],
                           exit_code=int(code) if str(code).strip().lstrip("-").isdigit() else None,
                           exit_reason=rec.get("EXIT_REASON", ""))
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
        record = LsfRecord(job_id=element_id(cells["JOBID"], name_index.group(1) if name_index else None),
                           stat=cells["STAT"])
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


class LsfCommands:
    """bsub, bjobs, bkill and brequeue, found on PATH, with their outputs parsed."""

    # A refused bsub otherwise retries without end (e.g. "Pending job threshold reached. Retrying in 60 seconds").
    SUBMIT_ENV = {"LSB_NTRIES": "1"}

    def __init__(self, timeout_s: float = 300.0):
        self.timeout_s = timeout_s

    def _run(self, argv: list[str], stdin: Optional[str] = None, env: Optional[dict] = None):
        exe = shutil.which(argv[0])
        if exe is None:
            raise UserError(f"{argv[0]}: not found on PATH; LSF's commands are needed for an LSF cluster profile "
                            "(run from a login node, or use cluster=local)")
        try:
            feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
            return subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=self.timeout_s,
                                  env={**os.environ, **(env or {})}, **feed)
        except subprocess.TimeoutExpired:
            raise UserError(f"{argv[0]}: no answer from LSF after {self.timeout_s:.0f} s") from None

    def submit(self, script: Path, via_stdin: bool, dependency: Optional[str] = None,
               extra: Iterable[str] = ()) -> str:
        """Submit ``script``; ``dependency`` (a job id) holds it until that job has ended, however it ended."""
        argv = ["bsub", *extra]
        if dependency:
            argv += ["-w", f"ended({dependency})"]  # the command line wins over the script's #BSUB -w
        env = {k: v for k, v in self.SUBMIT_ENV.items() if k not in os.environ}
        if via_stdin:
            done = self._run(argv, stdin=Path(script).read_text(), env=env)
        else:
            done = self._run(argv + [str(script)], env=env)
        return parse_bsub(done.stdout, done.stderr)

    def status(self, job_ids: Iterable[str]) -> dict[str, LsfRecord]:
        """Records of the jobs (array jobs expand to their elements); ids LSF no longer knows are left out."""
        ids = sorted({str(j).split("[", 1)[0] for j in job_ids})
        if not ids:
            return {}
        done = self._run(["bjobs", "-a", "-o", BJOBS_FIELDS, "-json", *ids])
        try:
            return parse_bjobs_json(done.stdout)
        except ValueError:  # LSF older than 10.1.0.2 has no -json: the plain table
            return parse_bjobs_plain(self._run(["bjobs", "-a", "-w", *ids]).stdout)

    def cancel(self, job_ids: Iterable[str]) -> dict[str, str]:
        """bkill each job; jobs already finished or unknown are not an error (cancel is idempotent)."""
        return self._signal("bkill", job_ids)

    def requeue(self, job_ids: Iterable[str]) -> dict[str, str]:
        """brequeue: kill the running job and put it back in the queue under the same id."""
        return self._signal("brequeue", job_ids)

    def _signal(self, command: str, job_ids: Iterable[str]) -> dict[str, str]:
        ids = [str(j) for j in job_ids]
        if not ids:
            return {}
        done = self._run([command, *ids])
        said = parse_signal_output(done.stdout + "\n" + done.stderr)
        failed = {j: m for j, m in said.items()
                  if not m.startswith("is being") and not re.search(r"already finished|No matching job", m)}
        if failed:
            raise UserError(f"{command}: " + "; ".join(f"job {j}: {m}" for j, m in failed.items()))
        return said


def directive_arg(value) -> str:
    """Quote a #BSUB value the way LSF's script parser reads it: one quote character per line, no escapes.

    bsub takes whichever of ' or " comes first on a #BSUB line as that line's quote and has no escape
    character, so a value is wrapped in double quotes (as in IBM's and OLCF's examples), or in single
    quotes when it holds a double quote; a value holding both, or a newline, cannot be written.
    """
    text = str(value)
    if "\n" in text or ('"' in text and "'" in text):
        raise UserError(f"a #BSUB value cannot hold a newline or both quote characters: {text!r}")
    return f"'{text}'" if '"' in text else f'"{text}"'


def walltime(minutes: int) -> str:
    """bsub -W takes [hours:]minutes."""
    if minutes < 1:
        raise UserError(f"walltime: must be at least 1 minute, got {minutes}")
    return f"{minutes // 60}:{minutes % 60:02d}"


def env_name(name) -> str:
    """A variable name for ``export NAME=...``: written unquoted, so it must be a shell identifier."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
        raise UserError(f"cluster.env: {name!r} is not a variable name (letters, digits, _; not first a digit)")
    return str(name)


def template_env() -> jinja2.Environment:
    """Jinja2 over lsf/: ``q`` quotes for the shell, ``bsub_arg`` for #BSUB lines; undefined names fail."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["q"] = lambda value: shlex.quote(str(value))
    env.filters["bsub_arg"] = directive_arg
    env.filters["walltime"] = walltime
    env.filters["env_name"] = env_name
    return env


def render(profile: ClusterProfile, **context) -> str:
    """The job script for ``profile`` (its ``template``, else lsf/base.j2) with ``context``."""
    template = template_env().get_template(profile.template or "base.j2")
    return template.render(cluster=profile, **context)
