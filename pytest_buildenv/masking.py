"""Secrets: the `secrets` setting's values, read when an environment opens, and their masking.

Each name maps to an environment variable (a value that looks like one) or a file. An image build gets
them as `RUN --mount=type=secret,id=NAME` (engine/buildx.py); a command gets each as the variable NAME.
A value, once read, is masked in everything this process writes that a command or a build printed:
results, transcripts (so junit and artifacts), error messages, build logs and progress lines. Each
occurrence reads [MASKED], as CI systems mask variables; the mask is process-wide, as theirs is per job.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path

from .errors import ConfigError

MASKED = "[MASKED]"
# A variable's name, as BuildKit takes an id and a shell a variable: one name for both uses.
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHORTEST = 6  # a shorter line of a value is not masked on its own: it would mask common words

_lock = threading.Lock()
_values: set[str] = set()
_pattern: re.Pattern[str] | None = None
_bytes_pattern: re.Pattern[bytes] | None = None
_longest = 0


def source(name: str, where: str) -> tuple[str, str]:
    """Where one `secrets` entry comes from: ("env", variable) or ("src", file), checked to be there."""
    if NAME.match(where):
        if where not in os.environ:
            raise ConfigError(f"secret {name!r} comes from the environment variable {where}, which is not set; "
                              f"export {where}, or map {name} to a file in secrets")
        return "env", where
    path = Path(where).expanduser()
    if not path.is_file():
        raise ConfigError(f"secret {name!r} comes from the file {path}, which does not exist; create it, or map "
                          f"{name} to an environment variable's name in secrets")
    return "src", str(path.resolve())


def read(name: str, where: str) -> str:
    """A secret's value (masked from now on in this process); never logged."""
    return read_from(*source(name, where))


def read_from(kind: str, origin: str) -> str:
    """The value at a source() (masked from now on in this process)."""
    value = os.environ[origin] if kind == "env" else Path(origin).read_text()
    add(value)
    return value


def read_all(secrets: Mapping[str, str]) -> dict[str, str]:
    return {name: read(name, where) for name, where in secrets.items()}


def add(value: str) -> None:
    """Mask `value` from now on: whole, and each of its lines long enough to be its own (a key file's)."""
    global _pattern, _bytes_pattern, _longest
    parts = {value, value.strip(), *(line.strip() for line in value.splitlines() if len(line.strip()) >= _SHORTEST)}
    parts.discard("")
    with _lock:
        if parts <= _values:
            return
        _values.update(parts)
        # Longest first, so a whole value is one [MASKED], not its lines each.
        ordered = sorted(_values, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(v) for v in ordered))
        _bytes_pattern = re.compile(b"|".join(re.escape(v.encode()) for v in ordered))
        _longest = len(ordered[0].encode())


def mask(text: str) -> str:
    pattern = _pattern
    return text if pattern is None or not text else pattern.sub(MASKED, text)


class Stream:
    """Masks bytes as they come, chunk by chunk: a value split across two chunks is masked too (the last
    bytes that could begin one wait for the next chunk, or for flush())."""

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, chunk: bytes) -> bytes:
        pattern = _bytes_pattern
        if pattern is None:
            return chunk
        data = self._carry + chunk
        cut = max(0, len(data) - (_longest - 1))
        done, pos = [], 0
        for match in pattern.finditer(data):
            if match.start() >= cut:
                break
            done += [data[pos:match.start()], MASKED.encode()]
            pos = match.end()
        cut = max(cut, pos)
        done.append(data[pos:cut])
        self._carry = data[cut:]
        return b"".join(done)

    def flush(self) -> bytes:
        rest, self._carry = self._carry, b""
        pattern = _bytes_pattern
        return rest if pattern is None else pattern.sub(MASKED.encode(), rest)
