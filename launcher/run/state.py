"""``<run_dir>/state.json`` as its readers see it: one typed reader for the heartbeat supervisor, the runtime's
carried histories, ``ladder status``, the job database, submit's continuations, collect, spent and watch.

The file is written whole by rank 0 (``launcher.run.runtime.RunStateFile``, schema in that module's
docstring) or by the supervisor that found the attempt hung. A reader gets a ``RunState`` or None (no file
yet); a file of the wrong shape (not JSON, not an object, a field of the wrong type or an unknown status)
is refused with its path and what is wrong, or, where the file is only a hint, ignored with that line
on stderr (``warn=True``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Optional

from launcher.config.validate import validate
from launcher.errors import UserError
from launcher.policy import STATUS_STATES

STATE_FILE = "state.json"


class StateFileError(UserError):
    """A state.json that is not what ``ladder train`` writes."""


@dataclasses.dataclass(frozen=True)
class RunState:
    """One run's account of itself; every field may be absent from an older or hand-written file."""

    status: Optional[str] = None  # a key of policy.STATUS_STATES
    step: Optional[int] = None
    tokens: Optional[int] = None
    flops: Optional[float] = None
    total_steps: Optional[int] = None
    checkpoint_step: Optional[int] = None
    resumed_from: Optional[int] = None
    world_size: Optional[int] = None
    exit_code: Optional[int] = None
    message: Optional[str] = None
    param_digests: Optional[list[Optional[str]]] = None
    hostname: Optional[str] = None
    pid: Optional[int] = None
    job_key: Optional[str] = None
    job_attempt: Optional[int] = None
    started_at: Optional[float] = None
    updated_at: Optional[float] = None
    finished_at: Optional[float] = None
    rewinds: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    hangs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    hung_ranks: Optional[list[int]] = None
    hung_hosts: Optional[list[str]] = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUS_STATES:
            allowed = ", ".join(s for s in STATUS_STATES if s)
            raise ValueError(f"status: {self.status!r} is not a run status; allowed: {allowed}")

    @property
    def state(self) -> Optional[str]:
        """The job database state this report stands for (None: no status)."""
        return STATUS_STATES.get(self.status)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def state_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / STATE_FILE


def read_state(run_dir: str | Path, *, warn: bool = False) -> Optional[RunState]:
    """The run's ``state.json``, or None when there is none. A file of the wrong shape raises
    ``StateFileError`` naming the file and what is wrong; with ``warn`` that line goes to stderr as a
    warning and the file counts as absent (for readers that only take progress from it)."""
    path = state_path(run_dir)
    try:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        return parse_state(data, path)
    except StateFileError as exc:
        if not warn:
            raise
        print(f"warning: {exc}; ignored", file=sys.stderr, flush=True)
        return None


def parse_state(data: bytes, path: Path) -> RunState:
    """``RunState`` from the bytes of ``path`` (named in the error)."""
    try:
        value = json.loads(data)
    except ValueError as exc:  # not UTF-8, or not JSON
        raise StateFileError(f"{path}: not JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise StateFileError(f"{path}: expected a JSON object (a run's state), got {type(value).__name__}")
    try:
        return validate(RunState, value, "")
    except UserError as exc:
        raise StateFileError(f"{path}: {exc}") from None
