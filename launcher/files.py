"""Whole-file writes: a reader (or a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from launcher.errors import UserError


def atomic_write(path: Path, data: str | bytes) -> None:
    """A temporary beside ``path``, fsync, then os.replace (the parent folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that opens files itself (pyarrow); replaces ``path`` when
    the block ends without an error, else is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def make_dir(path: Path, field: str) -> Path:
    """Folder ``path`` (with its parents), which a field such as ``run_dir`` names: a path that cannot be a
    writable folder (a file, a path under /proc, a read-only mount) is bad input, refused in one line."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{field}: {str(path)!r} is a file; allowed: a folder (existing or new)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"{field}: {str(path)!r} cannot be a folder ({exc.strerror or exc}); "
            "allowed: a writable folder or a path where one can be made"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{field}: {str(path)!r} is not writable; allowed: a writable folder")
    return path


def aside_path(path: Path, tag: str) -> Path:
    """An unused sibling name for ``path`` moved out of the way (``jobdb.sqlite.broken-<unix time>``): what a
    command replaces is kept, never deleted."""
    path = Path(path)
    stamp = int(time.time())
    while True:
        aside = path.with_name(f"{path.name}.{tag}-{stamp}")
        if not aside.exists():
            return aside
        stamp += 1


def error_file(path: Path) -> Path:
    """Where a failed write of ``path`` records its error: ``fit.error.json`` beside ``fit.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.error.json")


def write_outcome(path: Path, good: Any | None, failed: Any | None) -> None:
    """Write a command's JSON output: a good one replaces ``path`` (and clears an old error file); a failed
    one goes to ``error_file(path)``, and to ``path`` only where no earlier good output would be lost."""
    if good is not None:
        atomic_write(path, json.dumps(good, indent=1, allow_nan=False))
        error_file(path).unlink(missing_ok=True)
        return
    atomic_write(error_file(path), json.dumps(failed, indent=1, allow_nan=False))
    if not _holds_good_output(path):
        atomic_write(path, json.dumps(failed, indent=1, allow_nan=False))


def _holds_good_output(path: Path) -> bool:
    """``path`` is a JSON object without an ``error`` key: an output worth keeping."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and "error" not in content
