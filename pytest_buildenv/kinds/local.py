"""`local`: a fresh workspace on the host; commands run there with subprocess.

The smallest kind, and the model for a new one: settings, the handle, a
manager, a tooling check, and the KIND entry the registry imports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional
from collections.abc import Mapping

from ..errors import ConfigError
from ..handle import BuildEnv, copy_host, read_pipes, stat_host
from ..registry import Check, KindSpec, Services, SessionEnd, TestInfo
from ..result import Capture, FileInfo
from ..settings import CommonSettings


@dataclass(frozen=True)
class LocalSettings(CommonSettings):
    # name -> path: on the host the path is ignored; NAME (upper-cased) points at the user's cache directory
    caches: dict[str, str] = field(default_factory=dict)


def cache_dir(name: str) -> Path:
    """A persistent cache on the host: $XDG_CACHE_HOME/pytest-buildenv/<name>."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytest-buildenv"
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


class LocalEnv(BuildEnv):
    kind = "local"

    def __init__(self, workspace: Path, *, environment: Optional[Mapping[str, str]] = None,
                 timeout: Optional[float] = None) -> None:
        super().__init__(workspace, PurePosixPath(), environment=environment, timeout=timeout)
        # On the host, the workdir *is* the workspace.
        self.workdir = PurePosixPath(self.workspace)

    def _execute(self, argv: list[str], env: dict[str, str], cwd: PurePosixPath, timeout: Optional[float],
                 user: Optional[str], out: Capture, err: Capture) -> tuple[int, bool]:
        try:
            # A session of its own, so a timeout kills everything the command started.
            proc = subprocess.Popen(argv, cwd=str(cwd), env={**os.environ, **env},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True, user=user)
        except FileNotFoundError as exc:
            err.write(f"{exc.strerror}: {exc.filename}\n".encode())
            return 127, False
        except PermissionError as exc:
            if user is not None:
                raise ConfigError(f"run(user={user!r}) on the local kind needs root; drop user= or run as root") from exc
            err.write(f"{exc.strerror}: {exc.filename}\n".encode())
            return 126, False
        readers = read_pipes(proc, out, err)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            timed_out = True
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for reader in readers:
            reader.join(5)  # past that, something escaped the group and holds the pipes: its output is cut
        return proc.returncode if proc.returncode is not None else -9, timed_out

    # The whole host filesystem is reachable, so "outside the workspace" is just the host.
    def _stat_outside(self, path: PurePosixPath) -> Optional[FileInfo]:
        return stat_host(Path(path))

    def _read_outside(self, path: PurePosixPath) -> bytes:
        return Path(path).read_bytes()

    def _put_outside(self, src: Path, target: PurePosixPath) -> None:
        copy_host(src, Path(target))

    def _get_outside(self, source: PurePosixPath, dest: Path) -> None:
        if not Path(source).exists():
            raise FileNotFoundError(f"get(): {source} does not exist")
        copy_host(Path(source), dest)


class LocalManager:
    """Nothing is shared across a session's local environments."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def open(self, settings: LocalSettings, workspace: Path, test: TestInfo) -> LocalEnv:
        caches = {name.upper(): str(cache_dir(name)) for name in settings.caches}
        return LocalEnv(workspace, environment={**caches, **settings.environment}, timeout=settings.timeout)

    def close(self, env: BuildEnv) -> None:
        env.close()

    def describe_kept(self, env: BuildEnv) -> str:
        return f"local workspace {env.workspace}"

    def finish(self, end: SessionEnd) -> None:
        pass


def check(services: Services, defaults: Mapping[str, Any]) -> Check:
    return Check(True, "host workspace; commands run with sh and subprocess")


KIND = KindSpec(settings=LocalSettings, manager=LocalManager, check=check)
