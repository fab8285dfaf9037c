"""Plain data every kind hands back: a command's Result, the Transcript, an Artifact."""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Callable, Literal, Optional

from .errors import BuildCommandError, tail


def output_text(data: bytes) -> str:
    """A command's output as text: undecodable bytes replaced, never an error (builds print anything)."""
    return data.decode("utf-8", errors="replace")


@dataclass
class Result:
    """What one command did. Output is kept whole; only error messages show a tail."""

    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    killed_by: str = ""  # what killed it, when the kind can tell (e.g. "the out-of-memory killer (memory limit 64m)")

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def check(self) -> Result:
        """Return self if the command succeeded, else raise BuildCommandError with the output tail."""
        if not self.ok:
            raise BuildCommandError(self)
        return self


class Transcript(list[Result]):
    """Every command an environment ran, with its output, in order."""

    def render(self, tail_lines: int = 20) -> str:
        blocks = []
        for number, result in enumerate(self, 1):
            status = "timed out" if result.timed_out else f"exit {result.exit_code}"
            blocks.append(f"[{number}] $ {result.command}  ({status}, {result.duration:.2f} s)")
            for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
                if text.strip():
                    blocks.append(f"  {name}:\n" + _indent(tail(text, tail_lines)))
        return "\n".join(blocks)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


@dataclass(frozen=True)
class FileInfo:
    """What `stat` says of a file, wherever it lives."""

    mode: int  # full st_mode, type bits included
    size: int
    uid: int
    gid: int


StatFn = Callable[[PurePosixPath], Optional[FileInfo]]
ReadFn = Callable[[PurePosixPath], bytes]


# e_machine values (the ELF specification's registry), by `file`'s names.
ELF_MACHINES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390", 40: "arm", 62: "x86-64", 183: "aarch64",
                243: "riscv"}


class Artifact:
    """A file the build produced, looked at afresh on every access."""

    def __init__(self, path: PurePosixPath, stat_fn: StatFn, read_fn: ReadFn) -> None:
        self.path = path
        self._stat = stat_fn
        self._read = read_fn

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r})"

    def _info(self) -> FileInfo:
        info = self._stat(self.path)
        if info is None:
            raise FileNotFoundError(f"artifact {self.path} does not exist (the build did not produce it)")
        return info

    @property
    def exists(self) -> bool:
        return self._stat(self.path) is not None

    @property
    def is_file(self) -> bool:
        info = self._stat(self.path)
        return info is not None and stat.S_ISREG(info.mode)

    @property
    def size(self) -> int:
        return self._info().size

    @property
    def mode(self) -> int:
        """Permission bits only, e.g. 0o755."""
        return stat.S_IMODE(self._info().mode)

    @property
    def uid(self) -> int:
        return self._info().uid

    @property
    def gid(self) -> int:
        return self._info().gid

    @property
    def executable(self) -> bool:
        return self.is_file and bool(self.mode & 0o111)

    @property
    def machine(self) -> Optional[str]:
        """The machine an ELF file is for, as `file` names it ("x86-64", "aarch64"); None if it is not ELF."""
        header = self.read_bytes()[:20]
        if len(header) < 20 or header[:4] != b"\x7fELF":
            return None
        order: Literal["little", "big"] = "big" if header[5] == 2 else "little"  # EI_DATA
        code = int.from_bytes(header[18:20], order)  # e_machine
        return ELF_MACHINES.get(code, f"machine {code}")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.read_bytes()).hexdigest()

    def read_bytes(self) -> bytes:
        self._info()
        return self._read(self.path)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)
