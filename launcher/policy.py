"""The rules every room shares, written once: how a run ends, what each ending means, what is retried.

``ladder train`` exits with one of ``ExitCode``; its ``state.json`` says the matching ``status``; the job
database records the matching run ``state``. Whoever supervises a step (the local runner, the Slurm and
LSF lane shells, which are rendered from this table, submit's continuations and the submitit callable)
asks ``ending(code)`` whether the step is over and whether to start it again.
"""

from __future__ import annotations

import dataclasses
import enum


class ExitCode(enum.IntEnum):
    COMPLETED = 0
    FAILED = 1  # anything not below: a crash, a node failure, a killed rank
    USAGE = 2  # bad input (UserError): the same command would fail the same way
    DIVERGED = 3  # non-finite training loss, or loss spikes past train.max_rewinds: a finished, unusable result
    HUNG = 4  # a rank sent no heartbeat for cluster.hang_timeout_s: its supervisor killed the ranks
    REQUEUE = 75  # EX_TEMPFAIL: checkpointed on SIGTERM/SIGUSR2, continue in the next job


@dataclasses.dataclass(frozen=True)
class Ending:
    """What one exit code means for the run and for whoever started the step."""

    code: ExitCode
    status: str  # the run's state.json status
    state: str  # the job database's run state
    finished: bool  # the run needs no more steps
    retry: bool  # a failure worth another step from the last checkpoint (while tries are left)


ENDINGS: dict[ExitCode, Ending] = {
    e.code: e
    for e in (
        Ending(ExitCode.COMPLETED, "completed", "completed", finished=True, retry=False),
        Ending(ExitCode.FAILED, "failed", "failed", finished=False, retry=True),
        Ending(ExitCode.USAGE, "failed", "failed", finished=False, retry=False),
        Ending(ExitCode.DIVERGED, "diverged", "diverged", finished=True, retry=False),
        Ending(ExitCode.HUNG, "hung", "hung", finished=False, retry=True),
        Ending(ExitCode.REQUEUE, "requeue", "timed_out", finished=False, retry=False),
    )
}


def ending(code: int) -> Ending:
    """The meaning of a step's exit status; any code this table does not name is a failure."""
    try:
        return ENDINGS[ExitCode(code)]
    except ValueError:
        return ENDINGS[ExitCode.FAILED]


def exit_code_state(code: int) -> str:
    """The job database state a step's exit status leaves its run in."""
    return ending(code).state


def ended_without_failure(code: int) -> bool:
    """The step did its part (finished, or checkpointed to continue): a failure streak ends here."""
    return ending(code).finished or code == ExitCode.REQUEUE


# which start of which job step wrote a run's state.json: the lane shells (launcher/schedulers/lane.sh.j2)
# and the submitit callable set these for ``ladder train``; ``ladder status`` matches reports to attempts by them
JOB_KEY_ENV = "SCALELADDER_JOB_KEY"
JOB_ATTEMPT_ENV = "SCALELADDER_JOB_ATTEMPT"

# the job database's run states; timed_out means checkpointed and ready to continue
STATES = ("planned", "queued", "running", "completed", "failed", "hung", "diverged", "timed_out", "cancelled")
ACTIVE = frozenset({"queued", "running"})  # states with an open attempt
FINAL = frozenset(e.state for e in ENDINGS.values() if e.finished)
RETRIED = frozenset(e.state for e in ENDINGS.values() if e.retry)  # failures: retried while max_retries allows
# a run's state.json status -> its database state ("running" while the run reports it is alive)
STATUS_STATES: dict[str | None, str] = {"running": "running", **{e.status: e.state for e in ENDINGS.values()}}


def shell_codes(predicate) -> str:
    """The exit codes for which ``predicate(ending)`` holds, as a shell ``case`` pattern (``0|3|75``)."""
    return "|".join(str(int(e.code)) for e in ENDINGS.values() if predicate(e))


# what the lane shells get (launcher/schedulers/lane.sh.j2): a step that ends with one of `ended` is over;
# one that ends with one of `refused` is a failure that is never retried; any other is retried; `hung` is
# what the step's hang watcher exits with when it found the step hung (the step's own status is then the kill's)
LANE_CODES = {
    "ended": shell_codes(lambda e: e.finished or e.code == ExitCode.REQUEUE),
    "refused": shell_codes(lambda e: not e.finished and not e.retry and e.code != ExitCode.REQUEUE),
    "hung": shell_codes(lambda e: e.code == ExitCode.HUNG),
}
