"""Plain data every kind hands back: a command's Result, the Transcript, an Artifact."""

from __future__ import annotations

import hashlib
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Literal, Optional, Protocol

from .errors import BuildCommandError, tail
from .masking import Stream


def output_text(data: bytes) -> str:
    """A command's output as text: undecodable bytes replaced, never an error (builds print anything)."""
    return data.decode("utf-8", errors="replace")


class Sink(Protocol):
    """Where output chunks go as they come (a Capture, or a copy-mode split in front of one)."""

    def write(self, chunk: bytes) -> None: ...

    def reset(self) -> None: ...  # the stream is sent again, whole

    def data(self) -> bytes: ...  # what is held


class Held:
    """Output held whole in memory: for a kind's own small exchanges (a stat, a file's bytes)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def reset(self) -> None:
        self._chunks = []

    def data(self) -> bytes:
        return b"".join(self._chunks)


OUTPUT_LIMIT = 4 << 20  # bytes of each stream a Result holds (setting output_limit); the rest is in a file


class Capture:
    """One stream of a command's output as it comes, memory bounded whatever it prints: up to `limit` bytes
    held whole; past that, the head and tail kept (half each) and the whole written to a file, made only then
    (`spill` names it). Bytes stay bytes until text() (the file is lossless, binary included), and secrets
    are masked as they come, in the file too (masking.Stream)."""

    def __init__(self, limit: int = OUTPUT_LIMIT, spill: Optional[Callable[[], Path]] = None) -> None:
        self.limit = limit  # settings hold output_limit at 1024 or more
        self._spill = spill
        self.size = 0
        self.path: Optional[Path] = None
        self._head = bytearray()
        self._tail = bytearray()
        self._spilled = False
        self._file: Optional[IO[bytes]] = None
        self._masked = Stream()

    def write(self, chunk: bytes) -> None:
        self._hold(self._masked.feed(chunk))

    def _hold(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.size += len(chunk)
        if not self._spilled:
            if self.size <= self.limit:
                self._head += chunk
                return
            self._begin_spill()
        if self._file is not None:
            self._file.write(chunk)
        room = self.limit // 2 - len(self._head)
        if room > 0:  # a first chunk larger than the limit: its start is the head
            self._head += chunk[:room]
            chunk = chunk[room:]
        self._tail += chunk
        keep = self.limit - len(self._head)
        if len(self._tail) > keep:
            del self._tail[:len(self._tail) - keep]

    def _begin_spill(self) -> None:
        """The output so far into the file; of what is held, the first half stays the head, the rest the tail."""
        held, half = bytes(self._head), self.limit // 2
        self._head, self._tail, self._spilled = bytearray(held[:half]), bytearray(held[half:]), True
        if self._spill is not None:
            self.path = self._spill()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("wb")
            self._file.write(held)

    def reset(self) -> None:
        """Start again (a stream sent once more, whole)."""
        self.close()
        self.size, self._head, self._tail, self._file, self._spilled = 0, bytearray(), bytearray(), None, False
        self._masked = Stream()

    def close(self) -> None:
        """The output is complete: what the masker held back goes in, and the file is closed."""
        self._hold(self._masked.flush())
        if self._file is not None:
            self._file.close()

    @property
    def left_out(self) -> int:
        return self.size - len(self._head) - len(self._tail)

    def data(self) -> bytes:
        """What is held (all of it, unless it outgrew the limit)."""
        return bytes(self._head + self._tail)

    def text(self) -> str:
        self.close()
        if not self.left_out:
            return output_text(self.data())
        where = f"the whole is in {self.path}" if self.path else "it was not kept"
        return (output_text(bytes(self._head)) + f"\n[buildenv: {self.left_out} bytes of output left out here "
                f"(output_limit {self.limit}); {where}]\n" + output_text(bytes(self._tail)))


@dataclass
class Result:
    """What one command did. Output is kept whole up to output_limit per stream, else its head and tail
    with a line saying how much was left out and where the whole is (Capture); error messages show a tail."""

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
