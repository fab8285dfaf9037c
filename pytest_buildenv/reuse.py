"""Environments kept across sessions (ini buildenv_reuse): their key, who holds them, when they expire.

A kind that keeps an environment for later sessions labels it with a key of everything that made
it (LABEL_REUSE) and the time it expires (LABEL_EXPIRES). A session uses one only while it holds
its claim: a small file naming the session's owner, in a directory every user of the host shares,
read and written under a flock per key. A claim whose owner is gone (owners.py) is free again, so
a session killed with SIGKILL gives its environment back with nobody's help, and two sessions
never hold one environment: the second of one key makes another. testcontainers' reuse, by
contrast, is locked only inside one process.

The reaper asks `judge` before anything else: a claimed environment is never removed; an
unclaimed one only when it has expired, or with `reap --include-reusable`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import ConfigError
from .naming import LABEL_CREATED, LABEL_EXPIRES, LABEL_KIND, LABEL_REUSE, Labelled, Owner
from .owners import owner_alive

REUSE_DIR = Path(tempfile.gettempdir()) / "pytest-buildenv-reuse"
DEFAULT_TTL = 24 * 3600.0
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 3600}  # a bare number is hours, as reap --older-than


@dataclass(frozen=True)
class ReuseSettings:
    """Which kinds keep their environments after the session, and for how long (from when one is made)."""

    kinds: tuple[str, ...] = ()
    ttl: float = DEFAULT_TTL

    @classmethod
    def from_ini(cls, ini: Mapping[str, object]) -> ReuseSettings:
        text = str(ini.get("buildenv_reuse") or "")
        kinds = tuple(dict.fromkeys(k.strip().lower() for k in text.split(",") if k.strip()))
        ttl = ini.get("buildenv_reuse_ttl")
        return cls(kinds, DEFAULT_TTL if ttl in (None, "") else duration(str(ttl), "buildenv_reuse_ttl"))

    def enabled(self, kind: str) -> bool:
        return kind in self.kinds


def duration(text: str, name: str) -> float:
    """`24h`, `90m`, `30s`, `2d`, or a bare number of hours, in seconds."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"ini {name}={text!r} is not valid; {name} takes a duration above 0 such as 24h, 90m "
                          "or 30s (a bare number is hours)")
    return float(match.group(1)) * _UNIT[match.group(2)]


def ago(seconds: float) -> str:
    """A span as a person reads it: 42 s, 12 min, 3.5 h."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(frozen=True)
class Claim:
    session: str
    host: str
    pid: int

    def holds(self) -> Optional[bool]:
        """True while its owner lives; None when it is another host's (not ours to judge)."""
        if self.host != socket.gethostname():
            return None
        return owner_alive(self.host, self.pid)


class Pool:
    """The kept environments of one kind and key, and the claims on them."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind, self.key = kind, key

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Every user's sessions of this key, one at a time (held while a claim is read and taken)."""
        fd = _shared_file(REUSE_DIR / f"{self.kind}-{self.key}.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # drops the flock

    def claim(self, name: str) -> Optional[Claim]:
        try:
            data = json.loads((REUSE_DIR / f"{name}.claim").read_text() or "null")
        except (OSError, ValueError):
            return None
        return Claim(data["session"], data["host"], int(data["pid"])) if data else None

    def free(self, name: str, owner: Owner) -> bool:
        """Nobody else's: unclaimed, claimed by this session already, or by a session that is gone."""
        claim = self.claim(name)
        return claim is None or claim.session == owner.session or claim.holds() is False

    def take(self, name: str, owner: Owner) -> None:
        """Under `locked()`: the claim is written in place (another user's file, in a sticky directory,
        can be written but not replaced)."""
        self._write(name, json.dumps({"session": owner.session, "host": owner.host, "pid": owner.pid}))

    def release(self, name: str, owner: Owner) -> None:
        with self.locked():
            if self.free(name, owner):
                self.clear(name)

    def clear(self, name: str) -> None:
        """Under `locked()`: nobody's (emptied, not removed: the file may be another user's)."""
        self._write(name, "")

    def _write(self, name: str, text: str) -> None:
        fd = _shared_file(REUSE_DIR / f"{name}.claim")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _shared_file(path: Path) -> int:
    """A file every user of the host may lock and write (kept environments are shared by them all)."""
    path.parent.mkdir(exist_ok=True)
    with contextlib.suppress(PermissionError):
        os.chmod(path.parent, 0o1777)  # like /tmp: anyone adds, only the owner removes
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    with contextlib.suppress(PermissionError):
        os.fchmod(fd, 0o666)  # past the umask
    return fd


def labels(key: str, ttl: float) -> dict[str, str]:
    """What a kept environment carries besides its owner's labels."""
    return {LABEL_REUSE: key, LABEL_EXPIRES: str(int(time.time() + ttl))}


def expired(labels: Mapping[str, str], now: Optional[float] = None) -> bool:
    return (now or time.time()) >= float(labels.get(LABEL_EXPIRES, "0") or 0)


def describe(item: Labelled, now: Optional[float] = None) -> str:
    """One kept environment, for doctor and the reaper: its key, age, expiry and holder."""
    now = now or time.time()
    age = now - float(item.labels.get(LABEL_CREATED, "0") or 0)
    left = float(item.labels.get(LABEL_EXPIRES, "0") or 0) - now
    claim = Pool(item.labels.get(LABEL_KIND, "?"), item.labels[LABEL_REUSE]).claim(item.name)
    held = claim.holds() if claim else False
    holder = (f"in use by session {claim.session} (pid {claim.pid} on {claim.host})" if claim and held is not False
              else "free")
    expiry = f"expires in {ago(left)}" if left > 0 else f"expired {ago(-left)} ago"
    return f"key {item.labels[LABEL_REUSE][:10]}, made {ago(age)} ago, {expiry}, {holder}"


def judge(item: Labelled, include_reusable: bool, now: Optional[float] = None) -> Optional[tuple[str, str]]:
    """The reaper's verdict on a kept environment (None: it is not one): keep it while claimed or
    unexpired, report another host's claim, remove it when it expired or with --include-reusable."""
    if LABEL_REUSE not in item.labels:
        return None
    pool = Pool(item.labels.get(LABEL_KIND, "?"), item.labels[LABEL_REUSE])
    claim = pool.claim(item.name)
    held = claim.holds() if claim else False
    said = f"kept for reuse ({describe(item, now)})"
    if held is None:
        return "report", said
    if held:
        return "keep", said
    if include_reusable or expired(item.labels, now):
        return "remove", said
    return "keep", f"{said}; remove with reap --include-reusable"


def remove_unclaimed(item: Labelled, owner: Owner) -> bool:
    """Remove a kept environment unless a session claimed it since it was judged (under its key's
    lock, so no session adopts it mid-removal). False: it was claimed, and stays."""
    pool = Pool(item.labels.get(LABEL_KIND, "?"), item.labels[LABEL_REUSE])
    with pool.locked():
        if not pool.free(item.name, owner):
            return False
        item.remove()
        pool.clear(item.name)
        return True
