"""One owner per folder: a run's ``run_dir`` and a sweep's folder are locked before any work is done.

The lock is ``flock`` on ``<folder>/.ladder.lock``, which also records ``pid host`` for the refusal's
message. Why flock: the kernel drops it when its process dies (kill -9 included), so a lock on this host
is never stale. It holds between hosts on NFSv4, GPFS and Lustre mounted with ``-o flock`` (the common
site default); on Lustre's ``localflock`` or a file system without locks it is only node-local, so the
record is checked too: a lock file naming a live process on another host whose lock we could take
anyway is refused as well (a stale lock from another host: the message names the host and the file to
delete once that host's run is gone). Where flock itself fails (ENOLCK, EOPNOTSUPP), the record decides:
a dead pid on this host is stale and taken over.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Optional

from launcher.errors import UserError

LOCK_FILE = ".ladder.lock"


class FolderLock:
    """``with FolderLock(folder, "run_dir"):`` holds the folder for this process or refuses in one line."""

    def __init__(self, folder: Path, what: str):
        self.path = Path(folder) / LOCK_FILE
        self.what = what
        self.fd: Optional[int] = None

    def __enter__(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        flocked = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._refuse(self._holder())
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            flocked = False
        holder = self._holder()
        if holder is not None and holder != _me() and _may_hold(holder, flocked):
            os.close(fd)
            self._refuse(holder)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{_me()[0]} {_me()[1]}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, kind: Optional[type], value: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # an empty record: no holder, whoever looks next
            os.close(self.fd)  # releases the flock
            self.fd = None

    def _holder(self) -> Optional[tuple[int, str]]:
        try:
            pid, host = self.path.read_text().split()
            return int(pid), host
        except (OSError, ValueError):
            return None

    def _refuse(self, holder: Optional[tuple[int, str]]) -> None:
        who = f"pid {holder[0]} on {holder[1]}" if holder else "another process"
        raise UserError(
            f"{self.what}: {self.path.parent} is in use by {who} (lock {self.path}); wait for it to "
            f"end, or delete the lock file if that process is gone"
        )


def forget_dead_holder(folder: Path, pid: int, host: str) -> None:
    """Empty ``folder``'s lock record if it names ``pid`` on ``host``, a process its supervisor saw killed
    (kill -9 leaves the record): the folder's next owner may start on another host, which would refuse a
    record naming a host it cannot check."""
    lock = FolderLock(folder, "")
    if lock._holder() == (pid, host):
        with open(lock.path, "r+b") as handle:
            handle.truncate(0)


def _me() -> tuple[int, str]:
    return os.getpid(), socket.gethostname()


def _may_hold(holder: tuple[int, str], flocked: bool) -> bool:
    """Whether the process a record names may still own the folder although we got here: on this host only
    without flock (with it, the kernel says it is gone) and while its pid runs; on another host always
    (node-local flock cannot see it, and its liveness cannot be checked from here)."""
    pid, host = holder
    if host != socket.gethostname():
        return True
    if flocked:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
