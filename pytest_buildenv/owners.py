"""Who is alive: every pytest process holds an exclusive flock on an owner file named after its host
and pid for as long as it lives; the kernel drops the lock when the process dies, SIGKILL included.
The reaper asks it whether a resource's owner is gone, and reuse.py whether a kept environment's
claim still holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
from pathlib import Path

OWNERS_DIR = Path(tempfile.gettempdir()) / "pytest-buildenv-owners"


def _owner_file(host: str, pid: int) -> Path:
    return OWNERS_DIR / f"{host}-{pid}.lock"


class OwnerLock:
    """Held for the life of this process; its release is how others learn we died.

    One flock per process, however many sessions it runs (pytester runs inner
    sessions in-process): a second flock on the same file would block on our own.
    """

    _fd = -1
    _users = 0

    def __init__(self) -> None:
        self.path = _owner_file(socket.gethostname(), os.getpid())
        if OwnerLock._users == 0:
            OWNERS_DIR.mkdir(exist_ok=True)
            with contextlib.suppress(PermissionError):  # shared by every user of this host, like /tmp itself
                os.chmod(OWNERS_DIR, 0o1777)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            OwnerLock._fd = fd
        OwnerLock._users += 1
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        OwnerLock._users -= 1
        if OwnerLock._users == 0:
            self.path.unlink(missing_ok=True)
            os.close(OwnerLock._fd)
            OwnerLock._fd = -1


def owner_alive(host: str, pid: int) -> bool:
    """Is the process that labelled a resource on this host still running a session?"""
    if pid <= 0:  # unknown (kill(0) would signal our own process group and say yes)
        return False
    path = _owner_file(host, pid)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return _pid_exists(pid)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


