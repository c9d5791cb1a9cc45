"""``ladder submit``, ``ladder cancel``, ``ladder render``: a sweep's runs as packed batch jobs.

submit: plan the sweep, record it in the job database, pack the runs that still need training into
jobs (``launcher.sweep.pack``), render each job's script with the profile's scheduler adapter, submit it and
record its id. Every job ends by running ``ladder submit --continue-from <job id> --manifest <file>``,
which packs the job's unfinished runs into the next job (``afterany`` on this one). That runs on a
compute node, where the SQLite job database must not be written (WAL wants one host), so it works
only from the job's own files and leaves its record beside them; ``sync`` folds the records into the
database on the login node (``ladder status`` and ``ladder submit`` call it).

A job's files in ``<sweep_dir>/jobs/``: ``<name>.sbatch`` (or the scheduler's suffix), ``<name>.json``
(manifest: runs, profile, job id), ``<name>.steps`` (one line per step end: job, run, attempt, exit
code, time), the script's output and ``logs/<run>.log`` (each run's steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

from launcher.arguments import CommandParser, command_parser
from launcher.config.cluster import ClusterProfile
from launcher.config.compose import compose
from launcher.config.validate import validate
from launcher.errors import UserError
from launcher.files import atomic_write, atomic_write_json, kept_on_failure
from launcher.policy import (
    ACTIVE,
    FINAL,
    RETRIED,
    ExitCode,
    ended_without_failure,
    ending,
    exit_code_state,
)
from launcher.resources import ladder_argv
from launcher.run.state import RunState, read_state
from launcher.schedulers import REGISTRY, get_scheduler
from launcher.schedulers.base import FINISHED_JOB_STATES, BatchJob, Dependency, Scheduler, Step
from launcher.sweep.calibrate import calibrated_plan
from launcher.sweep.jobdb import (
    Attempt,
    JobDB,
    RunRecord,
    TransitionError,
    attempt_step,
    fold_run_states,
    reported_start,
    reports_on,
)
from launcher.sweep.pack import PackItem, pack, pack_array
from launcher.sweep.plan import PLAN_FILE, Plan, RunSpec, compose_sweep, write_plan

JOBS = "jobs"
CANCEL_MARK = "CANCELLED"  # written by `ladder cancel`: jobs ending after it submit no continuation


def _echo(line: str) -> None:
    print(line, file=sys.stderr)


# ------------------------------------------------------------------------------------- jobs from runs


@dataclasses.dataclass(frozen=True)
class JobContext:
    """Where a submission's jobs live and what their scripts need beyond the runs."""

    sweep: str
    sweep_dir: Path
    workdir: Path  # the directory relative paths of the runs' overrides are relative to
    profile: ClusterProfile
    dependency: Optional[Dependency] = None
    continuation_of: Optional[str] = None  # the job id a continuation follows
    parent: Optional[str] = None  # and that job's name

    @property
    def jobs_dir(self) -> Path:
        return self.sweep_dir / JOBS


def ladder_words(profile: ClusterProfile) -> tuple[str, ...]:
    """How a job starts ``ladder``: the profile's command, or the Python running this one."""
    if profile.ladder_command:
        return tuple(shlex.split(profile.ladder_command))
    return ladder_argv()


def job_names(ctx: JobContext) -> Iterator[str]:
    """Fresh job names: ``<sweep>-001`` ... on the login node; ``<parent>.1``, ``.2`` ... for continuations.

    A continuation's name comes from its parent's alone, so jobs continuing at the same moment on
    different nodes never pick the same name.
    """
    taken = {p.stem for p in ctx.jobs_dir.glob("*.json")}
    if ctx.parent is not None:
        base, _, generation = ctx.parent.rpartition(".") if re.search(r"\.\d+$", ctx.parent) else (ctx.parent, "", "0")
        stem = f"{base}.{int(generation) + 1}"
        names = (stem if i == 0 else f"{stem}-{i}" for i in range(10**6))
    else:
        numbers = [int(m.group(1)) for n in taken if (m := re.fullmatch(rf"{re.escape(ctx.sweep)}-(\d+)", n))]
        start = max(numbers, default=0) + 1
        names = (f"{ctx.sweep}-{i:03d}" for i in range(start, start + 10**6))
    return (n for n in names if n not in taken)


def build_jobs(
    scheduler: Scheduler,
    steps: Sequence[Step],
    ctx: JobContext,
    max_jobs: Optional[int] = None,
    names: Optional[Iterator[str]] = None,
) -> list[BatchJob]:
    """Pack ``steps`` (runs) into jobs (or job arrays) as the profile asks, named and ready to render.

    ``names``: a ``job_names`` iterator shared by the packings of one submission, so no name repeats."""
    p = ctx.profile
    policy = scheduler.policy()
    if max_jobs is not None:
        policy = dataclasses.replace(policy, max_jobs=max_jobs)
    items = [PackItem(s.name, s.hours * _left(s.run_dir), s.nodes, s.ranks) for s in steps]
    packed = pack_array(items, policy) if p.submission == "array" else pack(items, policy)
    by_name = {s.name: s for s in steps}
    names = names or job_names(ctx)
    jobs = []
    for packed_job in packed:
        name = next(names)
        array = p.submission == "array"
        output = ctx.jobs_dir / (f"{name}-%A_%a.out" if array else f"{name}-%j.out")
        jobs.append(
            BatchJob(
                name=name,
                sweep=ctx.sweep,
                sweep_dir=str(ctx.sweep_dir),
                workdir=str(ctx.workdir),
                steps=tuple(
                    dataclasses.replace(by_name[item.name], index=i) for i, item in enumerate(packed_job.items)
                ),
                lanes=packed_job.lanes,
                nodes=packed_job.nodes,
                walltime_min=packed_job.walltime_min,
                signal_s=p.signal_before,
                ladder=ladder_words(p),
                manifest=str(ctx.jobs_dir / f"{name}.json"),
                output=str(output),
                steps_log=str(ctx.jobs_dir / f"{name}.steps"),
                array=array,
                array_throttle=p.array_throttle or p.max_eligible_jobs,
                dependency=ctx.dependency,
                continuation_of=ctx.continuation_of,
            )
        )
    return jobs


def step_for(
    spec: RunSpec, run_dir: str | os.PathLike, overrides: Sequence[str], profile: ClusterProfile, tries: int
) -> Step:
    """A planned run as a step of a job, with the plan's estimate of its whole training time."""
    if spec.est_node_hours is None:
        raise UserError(
            f"run {spec.name}: no time estimate to pack it by; set cluster.device_peak_flops "
            "or let the planner calibrate (drop --no-calibrate)"
        )
    hours = spec.est_node_hours * profile.devices_per_node / spec.ranks_per_run  # node-hours back to wall hours
    return Step(
        index=0,
        name=spec.name,
        config_hash=spec.config_hash,
        run_dir=str(run_dir),
        overrides=tuple(overrides),
        nodes=spec.nodes,
        ranks=spec.ranks_per_run,
        hours=hours,
        tries=tries,
    )


def _left(run_dir: str) -> float:
    """Fraction of a run still to train, from its state.json (1 when it never started)."""
    state = read_state(run_dir, warn=True) or RunState()
    total, step = state.total_steps, state.step
    if not total or step is None:
        return 1.0
    return min(1.0, max(0.05, 1.0 - step / total))


# ------------------------------------------------------------------------------------ job files


@dataclasses.dataclass(frozen=True)
class ManifestRun:
    """One run of a job's manifest (``Step.to_json``)."""

    name: str
    config_hash: str
    run_dir: str
    overrides: list[str]
    nodes: int
    ranks: int
    hours: float
    tries: int


@dataclasses.dataclass(frozen=True)
class JobManifest:
    """A job's record, ``jobs/<name>.json``: written before submission, its id added after; read by the
    job's continuation (on a compute node) and by ``sync`` on the login node."""

    name: str
    sweep: str
    sweep_dir: str
    workdir: str
    scheduler: str
    profile: dict[str, Any]
    array: bool
    script: str
    steps_log: str
    nodes: int
    lanes: int
    walltime_min: float
    written: float
    runs: list[ManifestRun]
    job_id: Optional[str] = None
    dependency: Optional[str] = None
    continuation_of: Optional[str] = None
    submitted: Optional[float] = None

    @property
    def kind(self) -> str:
        return "continuation" if self.continuation_of else "array" if self.array else "packed"


def read_manifest(path: Path) -> JobManifest:
    """A job's manifest; a file that is not one is refused naming the file and what is wrong."""
    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise UserError(f"{path}: cannot read the job record ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise UserError(f"{path}: not JSON ({str(exc).splitlines()[0]})") from None
    try:
        return validate(JobManifest, data, "")
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def manifests(sweep_dir: Path) -> list[JobManifest]:
    """Every job record of a sweep, oldest first; one that is not a manifest is skipped with a warning."""
    found = []
    for path in (sweep_dir / JOBS).glob("*.json"):
        try:
            found.append(read_manifest(path))
        except UserError as exc:
            print(f"warning: {exc}; ignored", file=sys.stderr, flush=True)
    return sorted(found, key=lambda m: (m.written, m.name))


def manifest_of(job: BatchJob, profile: ClusterProfile, scheduler: Scheduler, script: Path) -> JobManifest:
    return JobManifest(
        name=job.name,
        sweep=job.sweep,
        sweep_dir=job.sweep_dir,
        workdir=job.workdir,
        scheduler=scheduler.name,
        profile=dataclasses.asdict(profile),
        array=job.array,
        dependency=str(job.dependency) if job.dependency else None,
        continuation_of=job.continuation_of,
        script=str(script),
        steps_log=job.steps_log,
        nodes=job.nodes,
        lanes=job.lanes,
        walltime_min=job.walltime_min,
        written=time.time(),
        runs=[validate(ManifestRun, s.to_json(), "runs") for s in job.steps],
    )


def write_script(scheduler: Scheduler, job: BatchJob, out_dir: Path) -> Path:
    path = out_dir / f"{job.name}{scheduler.script_suffix}"
    atomic_write(path, scheduler.render(job))
    path.chmod(0o755)
    return path


def submit_job(scheduler: Scheduler, job: BatchJob) -> str:
    """Write the job's script and manifest, submit it, and put its id in the manifest."""
    script = write_script(scheduler, job, Path(job.sweep_dir) / JOBS)
    manifest = manifest_of(job, scheduler.profile, scheduler, script)
    atomic_write_json(Path(job.manifest), dataclasses.asdict(manifest))  # before sbatch: the job may end first
    job_id = scheduler.submit(script, job.dependency)
    submitted = dataclasses.replace(manifest, job_id=job_id, submitted=time.time())
    atomic_write_json(Path(job.manifest), dataclasses.asdict(submitted))
    return job_id


def read_steps(path: str | os.PathLike) -> dict[str, dict[str, list[tuple[int, int]]]]:
    """A job's step log: {job key: {run: [(attempt, exit code), ...]}} in the order the steps ended."""
    out: dict[str, dict[str, list[tuple[int, int]]]] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        cells = line.split("\t")
        if len(cells) >= 4 and cells[2].isdigit() and cells[3].lstrip("-").isdigit():
            out.setdefault(cells[0], {}).setdefault(cells[1], []).append((int(cells[2]), int(cells[3])))
    return out


# ---------------------------------------------------------------------------------------- submit


def submit_sweep(
    overrides: list[str], dependency: Optional[Dependency] = None, over_budget_ok: bool = False, calibrate: bool = True
) -> list[tuple[BatchJob, str]]:
    """Plan, record, pack, render and submit a sweep's runs that still need training."""
    get_scheduler(validate(ClusterProfile, compose(overrides)["cluster"], "cluster"))  # before any calibration
    with kept_on_failure(compose_sweep(overrides)[2] / PLAN_FILE):  # a failed plan keeps the last plan.json
        plan = calibrated_plan(overrides, calibrate, echo=_echo)
        plan.check_budget(over_budget_ok)
    return submit_plan(plan, dependency)


def submit_plan(plan: Plan, dependency: Optional[Dependency] = None) -> list[tuple[BatchJob, str]]:
    """Record a plan (a sweep's, or a scaling study's) and submit its runs that still need training."""
    plan.sweep_dir = plan.sweep_dir.resolve()
    write_plan(plan)
    return submit_runs(plan.sweep.name, plan.sweep_dir, plan.cluster, plan.runs, plan.to_json(), dependency)


def submit_runs(
    name: str,
    sweep_dir: Path,
    profile: ClusterProfile,
    runs: Sequence[RunSpec],
    sweep_record: dict,
    dependency: Optional[Dependency] = None,
) -> list[tuple[BatchJob, str]]:
    """Record ``runs`` in the sweep's job database (the sweep as ``sweep_record``) and submit those that still
    need training: a sweep's plan, or one run added to a sweep (its target run)."""
    scheduler = get_scheduler(profile)
    with JobDB(sweep_dir / "jobdb.sqlite") as db:
        db.add_sweep(name, profile.name, sweep_record)
        db.add_runs(name, runs, sweep_dir)
        sync(db, name, sweep_dir, scheduler)
        specs = {s.config_hash: s for s in runs}
        records = db.runs(name)
        steps = []
        for record in records:
            if record.config_hash not in specs or record.state in ACTIVE or record.state in ("completed", "diverged"):
                continue
            failures = record.consecutive_failures if record.state in RETRIED else 0
            if failures >= profile.max_retries:
                _echo(f"run {record.name}: failed {failures} times in a row; not retried (cluster.max_retries)")
                continue
            steps.append(
                step_for(
                    specs[record.config_hash], record.run_dir, record.overrides, profile, profile.max_retries - failures
                )
            )
        free, held, waiting = _hold_branches(records, specs, steps, sweep_dir)
        if waiting:
            _echo(
                f"sweep {name}: {len(waiting)} WSD branches wait for their trunk's checkpoint, and their trunk "
                f"is not queued ({', '.join(waiting[:3])}{', ...' if len(waiting) > 3 else ''}); "
                "submit again once the trunks ran"
            )
        if not free and not held:
            _echo(f"sweep {name}: no run needs submitting")
            return []
        ctx = JobContext(name, sweep_dir, Path.cwd(), profile, dependency)
        names = job_names(ctx)
        jobs = build_jobs(scheduler, free, ctx, names=names)
        where = {s.config_hash: _job_task(i, job, k) for i, job in enumerate(jobs) for k, s in enumerate(job.steps)}
        groups: dict[tuple[Optional[int], str], list[Step]] = {}
        for trunk, step in held:
            groups.setdefault(where.get(trunk.config_hash) or (None, _queued_key(db, trunk)), []).append(step)
        later = [(key, build_jobs(scheduler, group, ctx, names=names)) for key, group in groups.items()]
        scheduler.validate([*jobs, *(job for _, group_jobs in later for job in group_jobs)], scheduler.queued_jobs())
        (sweep_dir / JOBS / CANCEL_MARK).unlink(missing_ok=True)
        submitted = []
        for job in jobs:
            job_id = submit_job(scheduler, job)
            _record_job(db, scheduler, job, job_id, "array" if job.array else "packed")
            submitted.append((job, job_id))
        for (index, task), group_jobs in later:
            trunk_job = task if index is None else _task_key(submitted[index][1], submitted[index][0], task)
            after = _after_trunk(trunk_job, dependency)
            for job in group_jobs:
                job = dataclasses.replace(job, dependency=after)
                job_id = submit_job(scheduler, job)
                _record_job(db, scheduler, job, job_id, "array" if job.array else "packed")
                submitted.append((job, job_id))
    return submitted


def _hold_branches(
    records: Sequence[RunRecord], specs: dict[str, RunSpec], steps: list[Step], sweep_dir: Path
) -> tuple[list[Step], list[tuple[RunRecord, Step]], list[str]]:
    """Split the steps to submit: runs that can start now; WSD branches to submit after their trunk's job
    (the trunk is submitted now, or queued or running), as (trunk record, step); and the names of
    branches that wait, unsubmitted, because their trunk's checkpoint is missing and no job will write it.

    A branch is never packed with its own trunk: it goes in a job that starts after the trunk's has
    succeeded (a dependency), so a lane never starts a branch before its fork checkpoint exists.
    """
    by_name = {r.name: r for r in records}
    submitting = {s.config_hash for s in steps}
    free, held, waiting = [], [], []
    for step in steps:
        spec = specs[step.config_hash]
        trunk = by_name.get(spec.parent or "")
        if spec.ready(sweep_dir):
            free.append(step)
        elif trunk is not None and (trunk.config_hash in submitting or trunk.state in ACTIVE):
            held.append((trunk, step))
        else:
            waiting.append(step.name)
    return free, held, waiting


def _job_task(index: int, job: BatchJob, task: int) -> tuple[Optional[int], str]:
    """Where a step of this submission runs: its job's index here and, in a job array, its task."""
    return index, str(task) if job.array else ""


def _task_key(job_id: str, job: BatchJob, task: str) -> str:
    """The id a dependency names: the job's, or ``<job>_<task>`` for one task of an array."""
    return f"{job_id}_{task}" if job.array else job_id


def _queued_key(db: JobDB, trunk: RunRecord) -> str:
    """The job (or array task) a queued or running trunk is in."""
    attempt = db.open_attempt(trunk.config_hash)
    if attempt is None or attempt.job_id is None:
        raise UserError(f"run {trunk.name}: {trunk.state} but in no job; run `ladder status` to reconcile")
    return attempt.job_id if attempt.array_index is None else f"{attempt.job_id}_{attempt.array_index}"


def _after_trunk(trunk_job: str, dependency: Optional[Dependency]) -> Dependency:
    """A branch job's dependency: its trunk's job succeeded, and the submission's own ``--dependency``
    when that is also ``afterok`` (any other kind already holds the trunk's job, hence the branch)."""
    if dependency is not None and dependency.kind == "afterok":
        return Dependency("afterok", (*dependency.job_ids, trunk_job))
    return Dependency("afterok", (trunk_job,))


def _record_job(db: JobDB, scheduler: Scheduler, job: BatchJob, job_id: str, kind: str) -> None:
    db.add_job(
        job.sweep,
        scheduler.name,
        job_id,
        kind,
        [s.config_hash for s in job.steps],
        depends_on=str(job.dependency) if job.dependency else None,
        script=str(Path(job.sweep_dir) / JOBS / f"{job.name}{scheduler.script_suffix}"),
    )
    for i, step in enumerate(job.steps):
        db.queue(step.config_hash, scheduler.name, job_id, array_index=i if job.array else None)


def continue_job(job_key: str, manifest_path: Path) -> list[tuple[BatchJob, str]]:
    """From a job about to end: submit its unfinished runs as the next job, after this one.

    Works from the job's manifest, step log and the runs' state.json only (no job database on a
    compute node). A run whose steps failed ``max_retries`` times in a row is not continued.
    """
    manifest = read_manifest(manifest_path)
    profile = validate(ClusterProfile, manifest.profile, "cluster")
    sweep_dir = Path(manifest.sweep_dir)
    mark = sweep_dir / JOBS / CANCEL_MARK
    if mark.exists() and mark.stat().st_mtime >= manifest.written:
        _echo(f"sweep {manifest.sweep} was cancelled: no continuation")
        return []
    task = int(job_key.split("_")[1]) if manifest.array and "_" in job_key else None
    ended = read_steps(manifest.steps_log).get(job_key, {})
    steps = []
    for i, run in enumerate(manifest.runs):
        if task is not None and i != task:
            continue
        tries = _tries_left(run, [code for _, code in ended.get(run.name, [])], profile)
        if tries:
            steps.append(
                Step(
                    index=0,
                    name=run.name,
                    config_hash=run.config_hash,
                    run_dir=run.run_dir,
                    overrides=tuple(run.overrides),
                    nodes=run.nodes,
                    ranks=run.ranks,
                    hours=run.hours,
                    tries=tries,
                )
            )
    if not steps:
        _echo(f"job {job_key}: every run finished or is out of tries; no continuation")
        return []
    scheduler = get_scheduler(profile)
    ctx = JobContext(
        manifest.sweep,
        sweep_dir,
        Path(manifest.workdir),
        profile,
        Dependency("afterany", (job_key,)),
        continuation_of=job_key,
        parent=manifest.name,
    )
    jobs = build_jobs(scheduler, steps, ctx, max_jobs=1)
    scheduler.validate(jobs)
    submitted = [(job, submit_job(scheduler, job)) for job in jobs]
    _hand_on_waiters(scheduler, sweep_dir, job_key, [job_id for _, job_id in submitted])
    return submitted


def _hand_on_waiters(scheduler: Scheduler, sweep_dir: Path, job_key: str, continuations: list[str]) -> None:
    """Jobs waiting for this one to succeed (WSD branches after their trunk's job) wait for its
    continuations instead: this job ends without failing, but its trunks are not done yet.

    Their manifests are rewritten too, so a continuation of the continuation hands them on again.
    """
    for manifest in manifests(sweep_dir):
        waits = Dependency.parse(manifest.dependency) if manifest.dependency else None
        if waits is None or waits.kind != "afterok" or job_key not in waits.job_ids or not manifest.job_id:
            continue
        after = Dependency("afterok", tuple(i for i in waits.job_ids if i != job_key) + tuple(continuations))
        try:
            scheduler.set_dependency(manifest.job_id, after)
        except UserError as exc:  # it started or ended meanwhile: nothing waits any more
            _echo(f"job {manifest.job_id} ({manifest.name}): its dependency stays ({exc})")
            continue
        handed_on = dataclasses.replace(manifest, dependency=str(after))
        atomic_write_json(Path(sweep_dir) / JOBS / f"{manifest.name}.json", dataclasses.asdict(handed_on))
        _echo(f"job {manifest.job_id} ({manifest.name}) now waits for {after}")


def _tries_left(run: ManifestRun, codes: list[int], profile: ClusterProfile) -> int:
    """Step starts the next job may spend on a run, from the exit codes of its steps in this job; 0: done."""
    state = read_state(run.run_dir, warn=True) or RunState()
    last = ending(codes[-1]) if codes else None
    if last is not None and last.finished or state.state in FINAL:
        return 0
    if last is not None and last.code == ExitCode.REQUEUE:
        return profile.max_retries  # it made progress: the failure streak ends
    if last is not None and not last.retry:
        _echo(f"run {run.name}: its configuration was refused (exit {codes[-1]}, see its log); not retried")
        return 0
    streak = 0
    for code in reversed(codes):
        if ended_without_failure(code):
            break
        streak += 1
    left = run.tries - streak
    if codes and left <= 0:
        in_a_row = profile.max_retries - run.tries + streak
        _echo(f"run {run.name}: failed {in_a_row} times in a row; not retried (cluster.max_retries)")
    return max(0, left)


# ------------------------------------------------------------------------------------------ sync


def sync(db: JobDB, sweep: str, sweep_dir: Path, scheduler: Scheduler) -> list[tuple[str, str, str]]:
    """Bring the job database up to date with the scheduler and the jobs' own files.

    Returns the changes as (what, old, new): runs by name, jobs as "job <id>".

    Jobs submitted by jobs (continuations) are recorded, finished jobs' runs take the outcome of their
    last step (a failed step retried in place is a failed attempt), a run no step of its ended job
    reports is timed_out (ready to continue) or cancelled, and running runs come from state.json.
    """
    changes: list[tuple[str, str, str]] = []
    records = {m.job_id: m for m in manifests(sweep_dir) if m.job_id is not None}
    known = {j.job_id for j in db.jobs(sweep)}
    active = [j.job_id for j in db.jobs(sweep) if j.state not in FINISHED_JOB_STATES]
    unknown = [k for k, m in records.items() if k not in known and m.sweep == sweep]
    states = scheduler.status(active + unknown) if active or unknown else {}
    progress = True
    while progress:
        progress = False
        for job in db.jobs(sweep):
            state = states.get(job.job_id)
            if job.state in FINISHED_JOB_STATES or state is None:
                continue
            if state == "running":
                changes += _fold_retries(db, scheduler, job.job_id, job.runs, records.get(job.job_id))
            if state == job.state:
                continue
            if state in FINISHED_JOB_STATES:
                changes += _fold_job_end(db, scheduler, job.job_id, job.runs, records.get(job.job_id), state)
            db.set_job_state(scheduler.name, job.job_id, state)
            changes.append((f"job {job.job_id}", job.state, state))
            progress = True
        for job_id in list(unknown):
            manifest = records[job_id]
            runs = [db.run(r.config_hash) for r in manifest.runs]
            if any(r.state in ACTIVE for r in runs):
                continue  # its parent job has not been folded yet
            db.add_job(
                sweep,
                scheduler.name,
                job_id,
                manifest.kind,
                [r.config_hash for r in runs],
                depends_on=manifest.dependency,
                script=manifest.script,
            )
            for i, run in enumerate(runs):
                db.queue(run.config_hash, scheduler.name, job_id, array_index=i if manifest.array else None)
            unknown.remove(job_id)
            changes.append((f"job {job_id}", "submitted by a job", "queued"))
            progress = True
    return changes + fold_run_states(db, sweep)


def _fold_job_end(
    db: JobDB,
    scheduler: Scheduler,
    job_id: str,
    run_hashes: Sequence[str],
    manifest: Optional[JobManifest],
    job_state: str,
) -> list[tuple[str, str, str]]:
    """The runs of an ended job take the outcomes its step log recorded, one attempt per step.

    Attempts already ended from the run's state.json are kept; a step retried in place that the
    database has not seen becomes a new attempt of the same job.
    """
    changes = []
    ended = read_steps(manifest.steps_log) if manifest else {}
    for i, run_hash in enumerate(run_hashes):
        record, tries = db.run(run_hash), db.attempts(run_hash)
        if not tries or tries[-1].job_id != job_id:
            continue  # not this job's run (any more)
        mine = [a for a in tries if a.job_id == job_id]
        array_index = i if manifest and manifest.array else None
        key = f"{job_id}_{i}" if array_index is not None else job_id
        codes = [code for _, code in ended.get(key, {}).get(record.name, [])]
        try:
            if not codes and mine[-1].ended is None:
                db.finish(
                    run_hash,
                    _unlogged_end(record.run_dir, tries, mine[-1], job_state),
                    detail=f"job {job_id} {job_state}",
                )
            for k, code in enumerate(codes):
                if k >= len(mine):
                    db.start(run_hash, scheduler.name, job_id, array_index)
                elif mine[k].ended is not None:
                    continue  # already ended from the run's state.json
                state = exit_code_state(code) if k == len(codes) - 1 else "failed"
                db.finish(run_hash, state, exit_code=code, detail=f"step {k + 1} in job {job_id}")
        except TransitionError:
            continue
        now = db.run(run_hash).state
        if now != record.state:
            changes.append((record.name, record.state, now))
    return changes


def _unlogged_end(run_dir: str, tries: Sequence[Attempt], attempt: Attempt, job_state: str) -> str:
    """How a run ended that no step log line reports (a job not rendered here, or killed with its job):
    what its state.json says if the attempt's step wrote it, else timed_out (ready to continue) or cancelled."""
    reported = read_state(run_dir, warn=True) or RunState()
    state = reported.state if reports_on(reported, tries, attempt) else None
    if state in ("completed", "diverged", "failed", "hung", "timed_out"):
        return state
    return "cancelled" if job_state == "cancelled" else "timed_out"


def _fold_retries(
    db: JobDB, scheduler: Scheduler, job_id: str, run_hashes: Sequence[str], manifest: Optional[JobManifest]
) -> list[tuple[str, str, str]]:
    """A run whose failed step its running job started again is running again (a new attempt)."""
    changes = []
    for i, run_hash in enumerate(run_hashes):
        record, tries = db.run(run_hash), db.attempts(run_hash)
        if record.state not in RETRIED or not tries or tries[-1].job_id != job_id:
            continue
        reported = read_state(record.run_dir, warn=True) or RunState()
        key, start = attempt_step(tries, tries[-1])
        if reported.status == "running" and (reported_start(reported, key) or 0) > start:
            db.start(run_hash, scheduler.name, job_id, i if manifest and manifest.array else None)
            changes.append((record.name, record.state, "running"))
    return changes


# ------------------------------------------------------------------------------------------ cancel


def batch_profile(db: JobDB, sweep: str, profile: ClusterProfile) -> ClusterProfile:
    """The profile of the scheduler that runs the sweep: ``profile`` when it has a batch scheduler, else
    the one ``ladder submit`` recorded, so ``ladder status`` and ``ladder cancel`` need no ``cluster=``."""
    if profile.scheduler in REGISTRY:
        return profile
    recorded = (db.sweep_config(sweep) or {}).get("cluster")
    if recorded and recorded.get("scheduler") in REGISTRY:
        return validate(ClusterProfile, recorded, "cluster")
    return profile


def cancel_sweep(overrides: list[str]) -> list[str]:
    """Cancel a sweep's queued and running jobs; their runs become cancelled and stay resumable."""
    config, profile, sweep_dir = compose_sweep(overrides)
    sweep, sweep_dir = config.name, sweep_dir.resolve()
    if not (sweep_dir / "jobdb.sqlite").exists():
        raise UserError(f"sweep={sweep}: nothing submitted (no job database in {sweep_dir}; give sweeps_root=<dir>?)")
    (sweep_dir / JOBS).mkdir(parents=True, exist_ok=True)
    (sweep_dir / JOBS / CANCEL_MARK).write_text(f"{time.time()}\n")  # first: no job continues after this
    with JobDB(sweep_dir / "jobdb.sqlite") as db:
        scheduler = get_scheduler(batch_profile(db, sweep, profile))
        sync(db, sweep, sweep_dir, scheduler)
        ids = {j.job_id for j in db.jobs(sweep) if j.state not in FINISHED_JOB_STATES}
        ids |= {m.job_id for m in manifests(sweep_dir) if m.job_id and m.sweep == sweep}
        live = [j for j, s in scheduler.status(ids).items() if s in ("queued", "running") and "_" not in j]
        scheduler.cancel(live)
        for job in db.jobs(sweep):
            if job.state not in FINISHED_JOB_STATES:
                db.set_job_state(scheduler.name, job.job_id, "cancelled")
        runs = []
        for record in db.runs(sweep, states=ACTIVE):
            try:
                db.finish(record.config_hash, "cancelled", detail="ladder cancel")
                runs.append(record.name)
            except TransitionError:
                continue
    return [f"cancelled jobs: {' '.join(sorted(live)) or 'none'}", f"cancelled runs: {len(runs)}"]


# ------------------------------------------------------------------------------------------ render


def render_sweep(overrides: list[str], out_dir: Path, calibrate: bool = True) -> list[Path]:
    """The scripts (and manifests) a submission of the whole sweep would use, written to ``out_dir``."""
    plan = calibrated_plan(overrides, calibrate, echo=_echo)
    profile, sweep_dir = plan.cluster, plan.sweep_dir.resolve()
    scheduler = get_scheduler(profile)
    steps = [
        step_for(spec, spec.run_dir(sweep_dir), spec.overrides(sweep_dir), profile, profile.max_retries)
        for spec in plan.runs
    ]
    jobs = build_jobs(scheduler, steps, JobContext(plan.sweep.name, sweep_dir, Path.cwd(), profile))
    scheduler.validate(jobs)
    written = []
    for job in jobs:
        script = write_script(scheduler, job, out_dir)
        atomic_write_json(
            out_dir / f"{job.name}.json", dataclasses.asdict(manifest_of(job, profile, scheduler, script))
        )
        written.append(script)
    return written


# --------------------------------------------------------------------------------------------- CLI


def submit_parser() -> CommandParser:
    """``ladder submit``'s options; the command (``launcher.commands``) adds the target run's."""
    parser = command_parser(
        "ladder submit", "Record a sweep in the job database, pack its runs into jobs and submit them."
    )
    parser.add_argument(
        "--dependency",
        type=Dependency.parse,
        default=None,
        help="start the jobs after others: afterok:ID[:ID], afterany:ID, ...",
    )
    parser.add_argument("--over-budget-ok", action="store_true", help="accept a plan over the allocation")
    parser.add_argument("--no-calibrate", action="store_true", help="never run a calibration run")
    parser.add_argument("--continue-from", metavar="JOBID", help=argparse.SUPPRESS)  # from a job's own script
    parser.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    return parser


def submit_from(args: argparse.Namespace) -> list[tuple[BatchJob, str]]:
    """The sweep's runs (``submit_sweep``), or a job's continuation (``--continue-from``)."""
    if args.continue_from:
        if args.manifest is None:
            raise UserError("--continue-from: needs --manifest (the job's record, jobs/<name>.json)")
        return continue_job(args.continue_from, args.manifest)
    return submit_sweep(args.overrides, args.dependency, args.over_budget_ok, not args.no_calibrate)


def print_submitted(submitted: Sequence[tuple[BatchJob, str]]) -> None:
    for job, job_id in submitted:
        runs = f"{len(job.steps)} runs" + (" as an array" if job.array else f" in {job.lanes} lanes")
        after = f", after {job.dependency}" if job.dependency else ""
        print(f"submitted {job_id} {job.name}: {runs} on {job.nodes} nodes for {job.walltime_min} min{after}")


def cancel_main(argv: list[str]) -> int:
    args = command_parser("ladder cancel", "Cancel a sweep's jobs; its runs stay resumable.").parse(argv)
    for line in cancel_sweep(args.overrides):
        print(line)
    return 0


def render_main(argv: list[str]) -> int:
    args = command_parser(
        "ladder render",
        "Write the job scripts a submission would use, without submitting (out=DIR).",
        [("--no-calibrate", "never run a calibration run")],
    ).parse(argv)
    outs = [o for o in args.overrides if o.startswith("out=")]
    if len(outs) != 1:
        raise UserError("out: give exactly one out=DIR, the folder the scripts are written to")
    overrides = [o for o in args.overrides if not o.startswith("out=")]
    for path in render_sweep(overrides, Path(outs[0][4:]), not args.no_calibrate):
        print(path)
    return 0
