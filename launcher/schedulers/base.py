"""What every batch-scheduler adapter is: render a job script, submit it, ask its state, cancel it.

A new site is a cluster profile and maybe a template that extends the scheduler's base template; a
new scheduler is one module with a subclass of ``Scheduler``, registered in ``launcher.schedulers``.
The job handed to ``render`` (``BatchJob``) is scheduler-neutral: packed runs in lanes, nodes, minutes,
the log files and the continuation command. Only the subclass knows the scheduler's words.

Values reach a script only quoted: the template environment quotes every ``{{ ... }}`` for the shell
(``shlex.quote``) unless it is already script text (``Shell``), and directive lines go through the
subclass's ``directive`` filter. Templates never write a raw value.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import re
import shlex
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import jinja2

from launcher.config.cluster import ClusterProfile
from launcher.errors import UserError
from launcher.policy import LANE_CODES
from launcher.resources import shipped
from launcher.sweep.pack import PackPolicy

# Job states adapters report; "ended" means the scheduler no longer knows how a job ended (no accounting).
JOB_STATES = ("queued", "running", "completed", "failed", "cancelled", "timed_out", "ended")
FINISHED_JOB_STATES = frozenset(JOB_STATES[2:])
DEPENDENCY_KINDS = ("after", "afterok", "afterany", "afternotok")


class Shell(str):
    """Text that is already shell syntax (quoted words, a variable expansion): templates print it as is."""


def quote(value: Any) -> Shell:
    """One shell word, whatever ``value`` holds."""
    return value if isinstance(value, Shell) else Shell(shlex.quote(str(value)))


_VARIABLE = re.compile(r"\$(?:\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")


def quote_with_variables(value: Any) -> Shell:
    """One double-quoted shell word in which ``$NAME`` and ``${NAME}`` still expand and nothing else does.

    For environment values such as ``/tmp/${USER}-miopen-${SLURM_JOB_ID}``: command substitution,
    backticks, ``${NAME:-...}`` and other expansions are written literally.
    """
    text, out, pos = str(value), ['"'], 0
    for match in _VARIABLE.finditer(text):
        out.append(_escape_double(text[pos : match.start()]))
        out.append(match.group(0))
        pos = match.end()
    out.append(_escape_double(text[pos:]))
    out.append('"')
    return Shell("".join(out))


def _escape_double(text: str) -> str:
    return re.sub(r'([\\"`$])', r"\\\1", text)


def env_name(name: Any) -> Shell:
    """A variable name for ``export NAME=...``: it is written unquoted, so it must be an identifier."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(name)):
        raise UserError(f"cluster.env: {name!r} is not a variable name (letters, digits, _; not first a digit)")
    return Shell(str(name))


def template_text(text: str) -> Shell:
    """Text a template wrote itself, a macro's output or a ``caller()`` block (the lane shell's): its
    values are quoted already, so it is printed as it is. Never for a value."""
    return Shell(text)


def lane_policy() -> dict[str, Shell]:
    """launcher.policy's exit codes for the lane shell (launcher/schedulers/lane.sh.j2), as ``case`` patterns."""
    return {name: Shell(codes) for name, codes in LANE_CODES.items()}


def _finalize(value: Any) -> Any:
    """Every ``{{ ... }}`` leaves the template as one quoted shell word unless it is ``Shell`` text."""
    if isinstance(value, jinja2.Undefined):
        return value
    return quote(value)


@dataclasses.dataclass(frozen=True)
class Dependency:
    """Start a job only after others: ``afterok`` (they succeeded), ``afterany`` (they ended) ..."""

    kind: Literal["after", "afterok", "afterany", "afternotok"]
    job_ids: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Dependency:
        """``afterok:123[:456]`` (Slurm's spelling, which the other adapters translate)."""
        kind, _, ids = text.partition(":")
        job_ids = tuple(i for i in ids.split(":") if i)
        if (
            kind not in DEPENDENCY_KINDS
            or not job_ids
            or not all(re.fullmatch(r"[0-9]+(_[0-9]+)?", i) for i in job_ids)
        ):
            raise UserError(
                f"--dependency: {text!r} is not KIND:JOBID[:JOBID...]; KIND is one of {', '.join(DEPENDENCY_KINDS)}"
            )
        return cls(kind, job_ids)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.kind}:{':'.join(self.job_ids)}"


@dataclasses.dataclass(frozen=True)
class Step:
    """One run inside a job: the command of its job step and how often the job may start it."""

    index: int
    name: str
    config_hash: str
    run_dir: str
    overrides: tuple[str, ...]
    nodes: int
    ranks: int
    hours: float  # the plan's estimate of the run's whole training time (packing scales it by what is left)
    tries: int  # step starts this job may spend on the run (a failed step is retried in place)
    argv: tuple[str, ...] = ()  # the step's full command, filled in by the adapter
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)  # extra environment of this step only
    log: str = ""  # the step's output file

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "config_hash": self.config_hash,
            "run_dir": self.run_dir,
            "overrides": list(self.overrides),
            "nodes": self.nodes,
            "ranks": self.ranks,
            "hours": self.hours,
            "tries": self.tries,
        }


@dataclasses.dataclass(frozen=True)
class BatchJob:
    """One job to render and submit: a packed job's runs plus where its files go and how it continues."""

    name: str
    sweep: str
    sweep_dir: str
    workdir: str  # where the script runs: relative paths in the runs' overrides start here
    steps: tuple[Step, ...]
    lanes: int
    nodes: int
    walltime_min: int
    signal_s: int  # the walltime warning (USR2) comes this many seconds before the walltime
    ladder: tuple[str, ...]  # how a step starts `ladder` (words)
    manifest: str  # the job's record, jobs/<name>.json
    output: str  # the batch script's own output file (scheduler pattern: %j is the job id)
    steps_log: str  # one line per step end: job, run, attempt, exit code, time
    array: bool = False  # one run per array task instead of lanes
    array_throttle: int = 1
    dependency: Optional[Dependency] = None
    continuation_of: Optional[str] = None


class Scheduler(abc.ABC):
    """A batch scheduler: the subclass gives its template folder, step command and commands."""

    name: ClassVar[str]
    template_dir: ClassVar[str]  # the shipped (and each site layer's) folder of the scheduler's templates
    default_template: ClassVar[str]
    script_suffix: ClassVar[str]
    conf_variable: ClassVar[Optional[str]] = None  # environment variable naming the scheduler's config file
    step_launchers: ClassVar[tuple[str, ...]]  # the profile's step_launcher values this scheduler can start
    timeout_s: ClassVar[float] = 120.0

    def __init__(self, profile: ClusterProfile):
        if profile.step_launcher not in self.step_launchers:
            allowed = ", ".join(self.step_launchers)
            raise UserError(
                f"cluster.step_launcher: {profile.step_launcher!r} cannot start job steps under "
                f"{self.name}; allowed: {allowed}"
            )
        self.profile = profile

    # ------------------------------------------------------------------------------------------ render

    def template_dirs(self) -> list[Path]:
        """Where templates are looked up, in order: each site layer's folder, the shipped one, the lane shell's."""
        site = [Path(d) / self.template_dir for d in self.profile.site_dirs]
        return [*(d for d in site if d.is_dir()), shipped(self.template_dir), Path(__file__).parent]

    def template_env(self) -> jinja2.Environment:
        """Templates by name through the layers; ``shipped/NAME`` is always the shipped one, so a site
        template may extend a shipped template of the same name."""
        dirs = self.template_dirs()
        loader = jinja2.ChoiceLoader(
            [
                jinja2.PrefixLoader({"shipped": jinja2.FileSystemLoader(str(shipped(self.template_dir)))}),
                jinja2.FileSystemLoader([str(d) for d in dirs]),
            ]
        )
        env = jinja2.Environment(
            loader=loader,
            undefined=jinja2.StrictUndefined,
            finalize=_finalize,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters.update(
            q=quote,
            words=lambda values: Shell(" ".join(quote(v) for v in values)),
            shell_value=quote_with_variables,
            env_name=env_name,
            directive=self.directive,
            script=template_text,
        )
        return env

    def render(self, job: BatchJob) -> str:
        """The job script of ``job`` from the profile's template (or the scheduler's default one)."""
        name = self.profile.template or self.default_template
        try:
            template = self.template_env().get_template(name)
        except jinja2.TemplateNotFound:
            where = ", ".join(str(d) for d in self.template_dirs()[:-1])
            raise UserError(f"cluster.template: {name!r} not found in {where}") from None
        job = dataclasses.replace(job, steps=tuple(self.complete_step(job, s) for s in job.steps))
        return template.render(
            job=job,
            cluster=self.profile,
            setup=[Shell(line) for line in self.profile.setup],
            policy=lane_policy(),
            **self.context(job),
        )

    def complete_step(self, job: BatchJob, step: Step) -> Step:
        """The step with its command, environment and log file filled in."""
        env = dict(self.profile.multinode_env) if step.nodes > 1 else {}
        log = str(Path(job.sweep_dir) / "jobs" / "logs" / f"{step.name}.log")
        argv = (*self.step_argv(job, step, log), Shell('"${LADDER[@]}"'), "train", *step.overrides)
        return dataclasses.replace(step, argv=argv, env=env, log=log)

    def context(self, job: BatchJob) -> dict[str, Any]:
        """Extra template variables of this scheduler."""
        return {}

    @abc.abstractmethod
    def step_argv(self, job: BatchJob, step: Step, log: str) -> tuple[str, ...]:
        """The step launcher's words before the ``ladder train`` command (srun ..., jsrun ...)."""

    @abc.abstractmethod
    def directive(self, value: Any) -> Shell:
        """A value as the scheduler's directive parser reads it (#SBATCH, #BSUB lines)."""

    # -------------------------------------------------------------------------------------- validation

    def policy(self) -> PackPolicy:
        return PackPolicy.from_profile(self.profile)

    def validate(self, jobs: Sequence[BatchJob], queued_now: int = 0) -> None:
        """Refuse what the site forbids, with one line naming the profile field."""
        policy, p = self.policy(), self.profile
        for job in jobs:
            home = policy.bin_for(job.nodes)
            if job.walltime_min > home.max_walltime_min:
                raise UserError(
                    f"cluster.walltime_min: job {job.name} asks for {job.walltime_min} min on {job.nodes} "
                    f"nodes; the site allows at most {home.max_walltime_min} min for jobs of up to "
                    f"{home.max_nodes} nodes (cluster.queue_bins)"
                )
            if not job.array and job.lanes > p.max_concurrent_steps:
                raise UserError(
                    f"cluster.max_concurrent_steps: job {job.name} would run {job.lanes} steps at once, "
                    f"more than the {p.max_concurrent_steps} allowed"
                )
        count = sum(len(job.steps) if job.array else 1 for job in jobs)
        if count + queued_now > p.max_queued_jobs:
            already = f" on top of the {queued_now} already queued" if queued_now else ""
            raise UserError(
                f"cluster.max_queued_jobs: this submission makes {count} jobs{already}, more than the "
                f"{p.max_queued_jobs} a user may queue; pack the runs (cluster.submission=packed) "
                "or wait for jobs to end"
            )

    # ------------------------------------------------------------------------------------- the commands

    def command_env(self) -> dict[str, str]:
        """The environment of the scheduler's commands: the profile's config file when it names one."""
        env = dict(os.environ)
        conf = self.profile.scheduler_conf_path()
        if conf is not None and self.conf_variable:
            env[self.conf_variable] = str(conf)
        return env

    def run_command(self, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
        try:
            done = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                env=self.command_env(),
                timeout=self.timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise UserError(
                f"{argv[0]}: not found on PATH; cluster={self.profile.name} needs {self.name}'s "
                "commands (run from a login node)"
            ) from None
        except subprocess.TimeoutExpired:
            raise UserError(f"{argv[0]}: no answer from {self.name} after {self.timeout_s:.0f} s") from None
        if check and done.returncode != 0:
            message = " ".join((done.stderr or done.stdout).split()) or f"exit {done.returncode}"
            raise UserError(f"{argv[0]} failed: {message}")
        return done

    @abc.abstractmethod
    def submit(self, script_path: str | os.PathLike, dependency: Optional[Dependency] = None) -> str:
        """Submit a rendered script; returns the job id."""

    @abc.abstractmethod
    def set_dependency(self, job_id: str, dependency: Dependency) -> None:
        """Make a queued job wait on ``dependency`` instead of what it waited on."""

    @abc.abstractmethod
    def status(self, job_ids: Iterable[str]) -> dict[str, str]:
        """Each known job's state (one of JOB_STATES); array tasks also under their own ids (``123_4``)."""

    @abc.abstractmethod
    def cancel(self, job_ids: Iterable[str]) -> None:
        """Cancel jobs; ones already ended are no error."""

    def queued_jobs(self) -> int:
        """Jobs this user has queued or running now (for the queue limit); 0 when the scheduler cannot say."""
        return 0
