"""The one error hierarchy users catch: everything raised on purpose is a BuildEnvError.

Every message is meant to be read as one line naming the cause and the remedy;
BuildCommandError adds the tail of the command's output below that line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import Result


class BuildEnvError(Exception):
    """Base of every error this plugin raises on purpose."""


class BackendUnavailable(BuildEnvError):
    """A kind's tooling (Docker daemon, kind, vagrant, a provider) is missing or unreachable:
    the cause (`detail`) and the command or setting that fixes it (`fix`), one line together."""

    def __init__(self, detail: str, fix: str = "") -> None:
        self.detail, self.fix = detail, fix
        super().__init__(f"{detail}; {fix}" if fix else detail)


class EngineNotAnswering(BackendUnavailable):
    """The engine is there but does not answer (a stopped or overloaded daemon): nothing more is asked of it."""


@dataclass(frozen=True)
class Check:
    """Whether a kind can run here: the cause when it cannot, and the command that fixes it."""

    ok: bool
    detail: str
    fix: str = ""

    @classmethod
    def failed(cls, exc: BackendUnavailable) -> Check:
        return cls(False, exc.detail, exc.fix)

    def raise_if_unusable(self) -> None:
        if not self.ok:
            raise BackendUnavailable(self.detail, self.fix)


class ConfigError(BuildEnvError):
    """Bad input: an unknown kind or keyword, a malformed buildenv.yaml, a missing file."""


class ImageBuildError(BuildEnvError):
    """`docker build` failed; the message carries the failing step's output."""


class ClusterError(BuildEnvError):
    """A KIND cluster could not be created, reached or deleted."""


class VMError(BuildEnvError):
    """A Vagrant VM could not be provisioned, cloned, reached or destroyed."""


OUTPUT_TAIL_LINES = 30


def tail(text: str, lines: int = OUTPUT_TAIL_LINES) -> str:
    """The last `lines` lines of `text`: what a human needs to see why a step failed."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


class BuildCommandError(BuildEnvError):
    """A command run in an environment failed (non-zero exit, or killed by its timeout)."""

    def __init__(self, result: Result, reason: str | None = None) -> None:
        self.result = result
        what = reason or (f"was killed by {result.killed_by} (exit {result.exit_code}) after {result.duration:.1f} s"
                          if result.killed_by else f"exited {result.exit_code} after {result.duration:.1f} s")
        lines = [f"command {result.command!r} {what}"]
        for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
            if text.strip():
                lines.append(f"--- {name} (tail) ---\n{tail(text)}")
        super().__init__("\n".join(lines))


class CommandTimeout(BuildCommandError):
    """A command ran past its timeout and was killed, with everything it started."""

    def __init__(self, result: Result, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(
            result,
            f"timed out after {timeout:g} s and was killed "
            "(raise timeout= if the step is legitimately slow, else find the hang)",
        )
