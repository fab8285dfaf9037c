"""The one handle every kind implements.

A kind subclasses BuildEnv and supplies `_execute` (run one argv) plus, when
its filesystem is not simply the host's, `_stat_outside`, `_read_outside`,
`_put_outside` and `_get_outside` for paths outside the shared workspace.
Everything else (argument handling, the transcript, check=, put/get inside the
workspace, artifacts) is written once, here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, ClassVar, Optional, Union

from .errors import BuildCommandError, BuildEnvError, CommandTimeout, ConfigError
from .masking import mask
from .reproduce import ReproReport, reproduce
from .result import OUTPUT_LIMIT, Artifact, Capture, FileInfo, Result, Transcript
from .testinfra_host import host_for

Command = Union[str, Sequence[str]]


def to_argv(cmd: Command) -> list[str]:
    """A string runs through `sh -c` (pipes, globs, &&); a list runs as is."""
    if isinstance(cmd, str):
        return ["sh", "-c", cmd]
    argv = [str(part) for part in cmd]
    if not argv:
        raise ConfigError("run() got an empty command; pass a string or a non-empty list")
    return argv


def display(cmd: Command) -> str:
    return cmd if isinstance(cmd, str) else " ".join(str(part) for part in cmd)


def require_workspace(workspace: Path) -> Path:
    workspace = Path(workspace)
    if not workspace.is_dir():
        raise ConfigError(f"workspace {workspace} does not exist; create the directory first or pass an existing one")
    return workspace.resolve()


def stat_host(path: Path) -> Optional[FileInfo]:
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        return None  # a link that never ends (a loop) names no file, as `test -e` says
    return FileInfo(mode=st.st_mode, size=st.st_size, uid=st.st_uid, gid=st.st_gid)


def mount_of(path: Path) -> Path:
    """The mount point of the filesystem holding `path`."""
    mount = path.resolve()
    while not os.path.ismount(mount):
        mount = mount.parent
    return mount


def copy_host(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dest)


def read_pipes(proc: subprocess.Popen[bytes], out: Capture, err: Capture) -> list[threading.Thread]:
    """A process's stdout and stderr into the captures as they come, one thread each (so neither pipe fills
    while the other is read); join them once the process is done."""
    def read(pipe: Any, into: Capture) -> None:
        with pipe:
            for chunk in iter(lambda: pipe.read1(1 << 16), b""):
                into.write(chunk)

    readers = [threading.Thread(target=read, args=(pipe, into), daemon=True, name="buildenv-output")
               for pipe, into in ((proc.stdout, out), (proc.stderr, err))]
    for reader in readers:
        reader.start()
    return readers


class BuildEnv(ABC):
    """A throwaway environment: run commands in it, look at what they produced."""

    kind: ClassVar[str]

    def __init__(self, workspace: Path, workdir: PurePosixPath, *,
                 environment: Optional[Mapping[str, str]] = None,
                 timeout: Optional[float] = None) -> None:
        self.workspace = require_workspace(workspace)
        self.workdir = PurePosixPath(workdir)
        self.environment = dict(environment or {})
        self.default_timeout = timeout
        self.timeout_scale = 1.0  # an emulated builder's commands take longer: their timeouts are scaled by this
        self.transcript = Transcript()
        self.secrets: dict[str, str] = {}  # name -> value: every command's variables, masked in its Result
        self.output_limit = OUTPUT_LIMIT  # bytes of each stream a Result holds; the whole goes to a file
        self.killed_by = ""  # set by _execute when it knows what killed the command (e.g. the OOM killer)
        self._host: Any = None
        # Set by the session that opened this environment: how to open (and close) a fresh one like it.
        self.reopen: Optional[tuple[Callable[[], BuildEnv], Callable[[BuildEnv], None]]] = None

    # --- running ---------------------------------------------------------
    def run(self, cmd: Command, check: bool = False, env: Optional[Mapping[str, str]] = None,
            cwd: Union[str, PurePosixPath, None] = None, timeout: Optional[float] = None,
            user: Optional[str] = None) -> Result:
        """Run `cmd` in the workspace. A timeout always raises CommandTimeout."""
        argv = to_argv(cmd)
        merged_env = {**self.environment, **self.secrets, **(env or {})}
        limit = timeout if timeout is not None else self.default_timeout
        if limit is not None:
            limit *= self.timeout_scale
        started = time.monotonic()
        self.killed_by = ""
        out, err = self._capture("stdout"), self._capture("stderr")
        try:
            exit_code, timed_out = self._execute(argv, merged_env, self._resolve(cwd), limit, user, out, err)
        finally:
            out.close()
            err.close()
        result = Result(mask(display(cmd)), exit_code, out.text(), err.text(), time.monotonic() - started, timed_out,
                        self.killed_by)
        self.transcript.append(result)
        if timed_out:
            assert limit is not None
            raise CommandTimeout(result, limit)
        if check and not result.ok and "No space left on device" in result.stdout + result.stderr:
            raise BuildCommandError(result, f"exited {result.exit_code}: no space left on device "
                                            f"({self._space(self.workspace)})")
        return result.check() if check else result

    def _capture(self, stream: str) -> Capture:
        """Where a command's stream goes: the whole beside the workspace (its test's directory), once it
        outgrows output_limit, as <workspace>-output/<n>.<stream>."""
        number = len(self.transcript) + 1
        return Capture(self.output_limit, lambda: self.workspace.parent / f"{self.workspace.name}-output" /
                       f"{number}.{stream}")

    @staticmethod
    def _space(path: Path) -> str:
        mount = mount_of(path)
        return f"the workspace is on {mount}, {shutil.disk_usage(mount).free // 1024} KiB free"

    @contextlib.contextmanager
    def _room(self, action: str, where: Path, partial: Optional[Path] = None) -> Iterator[None]:
        """A full filesystem on the host is one line naming it (`where` need not exist yet: its
        filesystem is found from its parents), not an OSError traceback; `partial`, what the failed
        copy wrote, is removed."""
        try:
            yield
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            if partial is not None:
                if partial.is_dir() and not partial.is_symlink():
                    shutil.rmtree(partial, ignore_errors=True)
                else:
                    partial.unlink(missing_ok=True)
            raise BuildEnvError(f"no space left on the filesystem at {mount_of(where)} while {action}; "
                                "free space there, or point --basetemp at a larger filesystem") from None

    @abstractmethod
    def _execute(self, argv: list[str], env: dict[str, str], cwd: PurePosixPath, timeout: Optional[float],
                 user: Optional[str], out: Capture, err: Capture) -> tuple[int, bool]:
        """Run argv, its output into `out` and `err` as it comes; return (exit_code, timed_out), killing it
        on timeout."""

    def _resolve(self, path: Union[str, PurePosixPath, None]) -> PurePosixPath:
        if path is None:
            return self.workdir
        return self.workdir / path  # an absolute `path` replaces workdir, as with pathlib

    @property
    def host(self) -> Any:
        """A testinfra Host bound to this environment: `env.host.package("gcc").is_installed`,
        `env.host.user().uid`, `env.host.socket("tcp://0.0.0.0:80").is_listening` (extra `testinfra`)."""
        if self._host is None:
            self._host = host_for(self)
        return self._host

    def reproduce(self, cmd: Command, artifacts: Sequence[str],
                  vary: Sequence[str] = ("path", "time", "umask", "locale", "tz")) -> ReproReport:
        """Run `cmd` in two fresh environments like this one, from a copy of this workdir, the second
        with `vary` varied; compare the `artifacts` (paths relative to the build directory)."""
        if self.reopen is None:
            raise BuildEnvError("reproduce() needs an environment a session opened (a fixture, or BuildEnvSession.open)")
        open_fresh, close = self.reopen
        return reproduce(self, open_fresh, close, cmd, list(artifacts), list(vary))

    # --- files -----------------------------------------------------------
    def host_path(self, path: Union[str, PurePosixPath]) -> Optional[Path]:
        """The host path of `path` (relative to workdir, or absolute) if it lies in the workspace. Not if a
        link the build made leads out of it: on the host that link would reach the host's files (a build's
        `out -> /etc/passwd`, read or written here, is the environment's /etc/passwd, reached through it)."""
        resolved = self._resolve(path)
        try:
            relative = resolved.relative_to(self.workdir)
        except ValueError:
            return None
        host = self.workspace / relative
        real = Path(os.path.realpath(host))
        return host if real == self.workspace or self.workspace in real.parents else None

    def put(self, host_src: Union[str, os.PathLike[str]], path_in_env: Union[str, PurePosixPath]) -> PurePosixPath:
        """Copy a host file or directory into the environment; return where it landed."""
        src = Path(host_src)
        if not src.exists():
            raise ConfigError(f"put(): {src} does not exist on the host")
        target = self._resolve(path_in_env)
        host = self.host_path(target)
        if host is not None:
            with self._room(f"copying {src} into the workspace", host.parent, partial=host):
                copy_host(src, host)
        else:
            self._put_outside(src, target)
        return target

    def get(self, path_in_env: Union[str, PurePosixPath], host_dest: Union[str, os.PathLike[str]]) -> Path:
        """Copy a file or directory out of the environment to `host_dest`; return that path."""
        source = self._resolve(path_in_env)
        dest = Path(host_dest)
        host = self.host_path(source)
        if host is not None:
            if not host.exists():
                raise FileNotFoundError(f"get(): {source} does not exist in the {self.kind} environment")
            with self._room(f"copying {source} to {dest}", dest.parent, partial=dest):
                copy_host(host, dest)
        else:
            self._get_outside(source, dest)
        return dest

    def artifact(self, path: Union[str, PurePosixPath]) -> Artifact:
        return Artifact(self._resolve(path), self._stat, self._read)

    def _stat(self, path: PurePosixPath) -> Optional[FileInfo]:
        host = self.host_path(path)
        return stat_host(host) if host is not None else self._stat_outside(path)

    def _read(self, path: PurePosixPath) -> bytes:
        host = self.host_path(path)
        return host.read_bytes() if host is not None else self._read_outside(path)

    # Kinds whose filesystem is not the host's override these.
    def _stat_outside(self, path: PurePosixPath) -> Optional[FileInfo]:
        raise BuildEnvError(f"{self.kind}: cannot look at {path} outside the workspace")

    def _read_outside(self, path: PurePosixPath) -> bytes:
        raise BuildEnvError(f"{self.kind}: cannot read {path} outside the workspace")

    def _put_outside(self, src: Path, target: PurePosixPath) -> None:
        raise BuildEnvError(f"{self.kind}: cannot copy to {target} outside the workspace")

    def _get_outside(self, source: PurePosixPath, dest: Path) -> None:
        raise BuildEnvError(f"{self.kind}: cannot copy {source} from outside the workspace")

    # --- lifetime --------------------------------------------------------
    def close(self) -> None:  # noqa: B027 (a kind with nothing to tear down inherits this)
        """Tear the environment down. Idempotent; the workspace itself stays for pytest to clean."""

    def __enter__(self) -> BuildEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
