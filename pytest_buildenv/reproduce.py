"""`env.reproduce()`: is the build reproducible? Build twice in fresh environments, the second varied.

Debian's reprotest is the model. Both builds start from a copy of the
environment's workdir as it is now (the sources the test put there), in two
fresh environments of the same kind and settings; the second varies what the
caller names. Variations are made with the shell and the environment, so every
kind supports the same ones:

- path: the second build runs in a different, deeper directory (on `local` every fresh
  workspace is another host directory, so the path always varies, and the report says so);
- time: the second build runs at least a second later, with SOURCE_DATE_EPOCH set
  (unset in the first) and another TZ (no clock is faked);
- umask: 0022, then 0077;
- locale: C.UTF-8, then fr_FR.UTF-8 (LANG, LC_ALL, LANGUAGE);
- tz: UTC, then Etc/GMT-14.
"""

from __future__ import annotations

import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Optional, Union

from .errors import BuildEnvError, ConfigError

if TYPE_CHECKING:
    from .handle import BuildEnv, Command

VARIATIONS = ("path", "time", "umask", "locale", "tz")
# What the first build runs under, and what the second under when a variation is on.
_FIRST: dict[str, str] = {"TZ": "UTC", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "LANGUAGE": "C"}
_SECOND: dict[str, dict[str, str]] = {
    "tz": {"TZ": "Etc/GMT-14"},
    "locale": {"LANG": "fr_FR.UTF-8", "LC_ALL": "fr_FR.UTF-8", "LANGUAGE": "fr"},
}
DEEPER = "reproduce/a/much/deeper/build-path"


@dataclass(frozen=True)
class Comparison:
    path: str
    first: Optional[str]  # sha256, or None when the build did not produce it
    second: Optional[str]

    @property
    def matches(self) -> bool:
        return self.first is not None and self.first == self.second


@dataclass(repr=False)
class ReproReport:
    command: str
    varied: tuple[str, ...]
    artifacts: list[Comparison] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return all(c.matches for c in self.artifacts)

    @property
    def differences(self) -> list[str]:
        return [c.path for c in self.artifacts if not c.matches]

    def __repr__(self) -> str:
        """The verdict line: what pytest shows (truncated) for `assert report.identical, report`."""
        return str(self).splitlines()[0]

    def __str__(self) -> str:
        verdict = ("reproducible" if self.identical else f"NOT reproducible: {len(self.differences)} of "
                   f"{len(self.artifacts)} artifacts differ ({', '.join(self.differences)})")
        lines = [f"reproduce {self.command!r}, varying {', '.join(self.varied) or 'nothing'}: {verdict}"]
        for c in self.artifacts:
            state = "same   " if c.matches else "DIFFERS"
            lines.append(f"  {state} {c.path}: {_short(c.first)} {'==' if c.matches else '!='} {_short(c.second)}")
        return "\n".join(lines)


def _short(digest: Optional[str]) -> str:
    return digest[:16] if digest else "(missing)"


Opener = Callable[[], "BuildEnv"]


def reproduce(source: BuildEnv, open_fresh: Opener, close: Callable[[BuildEnv], None], cmd: Command,
              artifacts: list[str], vary: Union[tuple[str, ...], list[str]] = VARIATIONS) -> ReproReport:
    unsupported = [v for v in vary if v not in VARIATIONS]
    if unsupported:
        raise ConfigError(f"reproduce() cannot vary {unsupported[0]!r} on the {source.kind} kind; "
                          f"it varies {', '.join(VARIATIONS)}")
    if not artifacts:
        raise ConfigError("reproduce() needs artifacts=[...]: the files whose checksums must match")
    text = cmd if isinstance(cmd, str) else shlex.join(str(part) for part in cmd)
    report = ReproReport(text, tuple(vary))
    with tempfile.TemporaryDirectory(prefix="buildenv-reproduce-") as scratch:
        sources = source.get(source.workdir, Path(scratch) / "sources")
        first, first_dir = _build(open_fresh, close, sources, text, artifacts, second=False, vary=vary)
        if "time" in vary:
            time.sleep(1.1)  # a timestamp with one-second resolution differs too
        second, second_dir = _build(open_fresh, close, sources, text, artifacts, second=True, vary=vary)
    if "path" not in vary and first_dir != second_dir:  # local: each fresh workspace is another host directory
        report.varied += ("path (this kind cannot keep it)",)
    report.artifacts = [Comparison(path, first[path], second[path]) for path in artifacts]
    return report


def _build(open_fresh: Opener, close: Callable[[BuildEnv], None], sources: Path, cmd: str, artifacts: list[str],
           *, second: bool, vary: Union[tuple[str, ...], list[str]]) -> tuple[dict[str, Optional[str]], PurePosixPath]:
    env = open_fresh()
    try:
        where = env.workdir / DEEPER if second and "path" in vary else env.workdir
        env.run(["mkdir", "-p", str(where)], check=True)
        for child in sorted(sources.iterdir()):  # child by child: `put` of a directory means the same everywhere
            env.put(child, where / child.name)
        variables = dict(_FIRST)
        if second:
            for name in vary:
                variables.update(_SECOND.get(name, {}))
            if "time" in vary:
                variables.update(TZ="America/St_Johns", SOURCE_DATE_EPOCH=str(int(time.time()) - 86400 * 365))
        umask = "0077" if second and "umask" in vary else "0022"
        result = env.run(f"umask {umask} && {cmd}", env=variables, cwd=where)
        if not result.ok:
            raise BuildEnvError(f"reproduce(): the {'second' if second else 'first'} build failed "
                                f"(exit {result.exit_code}): {(result.stderr or result.stdout).strip()[-300:]}")
        return {path: _sha256(env, where / path) for path in artifacts}, where
    finally:
        close(env)


def _sha256(env: BuildEnv, path: PurePosixPath) -> Optional[str]:
    artifact = env.artifact(path)
    return artifact.sha256 if artifact.exists else None
