"""`container`: a builder container, workspace bind-mounted at /work, as the invoking user.

The container idles (`sleep infinity`) and every command is a `docker exec`
into it: one container per test, however many commands the test runs.
Security defaults: never privileged, no-new-privileges, no Docker socket
(only `dind` adds it), SSH agent and host networking only when asked for.

`Builders` is the kind's session-wide manager (dind uses it too): images built
once per session, spares pre-started while tests run, shared network namespaces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import secrets
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

from ..engine import lost_during, where
from ..engine.containers import InvokingUser, Mount, schedule_removal, start_idle_container
from ..errors import BackendUnavailable, BuildEnvError, ConfigError
from ..events import emit
from ..handle import BuildEnv
from ..naming import Owner
from ..registry import Check, KindSpec, Services, SessionEnd, TestInfo
from ..result import FileInfo
from ..settings import CommonSettings

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

    from ..engine.hostpaths import HostPaths
    from ..engine.images import ImageBuilder
    from ..engine.netns import SharedNetworks
    from ..engine.copied import CopiedWorkspace
    from ..engine.spares import SparePool
    from ..reaper import Labelled

WORKDIR = PurePosixPath("/work")
SSH_AGENT_TARGET = "/run/buildenv/ssh-agent.sock"

# Finds every process of one exec by the marker in its environment (children
# inherit it, even ones that started a session of their own) and kills it.
# Needs only sh, tr and grep, which every builder image has.
_KILL_MARKED = (
    'for d in /proc/[0-9]*; do '
    'if tr "\\0" "\\n" < "$d/environ" 2>/dev/null | grep -qx "BUILDENV_EXEC=$1"; '
    'then kill -KILL "${d#/proc/}" 2>/dev/null; fi; done'
)


@dataclass(frozen=True)
class ContainerSettings(CommonSettings):
    image: Optional[str] = None
    dockerfile: Optional[Path] = None
    context: Optional[Path] = None
    target: Optional[str] = None
    build_args: dict[str, str] = field(default_factory=dict)
    network: Optional[str] = None
    ssh_agent: bool = False
    provision: tuple[str, ...] = ()  # commands run once in a fresh builder, committed to a cached snapshot
    provision_user: str = "root"
    memory: Optional[str] = None  # "512m": the builder's memory limit (swap included)
    cpus: Optional[float] = None  # 1.5
    pids: int = 4096  # process limit (ini buildenv_pids), so a fork bomb stays in its builder; 0: none
    caches: dict[str, str] = field(default_factory=dict)  # name -> path in the builder, kept across sessions
    docker_options: dict[str, Any] = field(default_factory=dict)  # more host-config options for the engine
    workspace: Optional[Literal["bind", "copy"]] = None  # how /work reaches the engine; unset: bind if it sees it


# docker_options keys the plugin sets itself, and the setting to use instead.
OWNED_OPTIONS = {
    "name": "nothing (builders are named per test)", "labels": "nothing (labels say whose a builder is)",
    "user": "run(user=...) (the builder runs as you)", "working_dir": "run(cwd=...) (the workdir is /work)",
    "command": "run()", "entrypoint": "run()", "environment": "environment", "network_mode": "network",
    "mem_limit": "memory", "memswap_limit": "memory", "nano_cpus": "cpus", "cpu_quota": "cpus",
    "pids_limit": "pids", "group_add": "nothing (the builder has all your groups)", "init": "nothing",
    "auto_remove": "nothing (removal is the plugin's)",
}
_MEMORY = re.compile(r"^\d+(\.\d+)?[bkmg]?$", re.IGNORECASE)
CACHE_VOLUME = "buildenv-cache-"


def host_options(settings: ContainerSettings, to_host: HostPathFn) -> tuple[dict[str, Any], list[Mount]]:
    """The engine's host-config options for these settings (limits, docker_options) and extra mounts,
    each docker_options key checked: one the plugin owns names the setting to use instead."""
    import docker
    from docker.models.containers import RUN_HOST_CONFIG_KWARGS

    options: dict[str, Any] = {}
    if settings.memory is not None:
        if not _MEMORY.match(settings.memory):
            raise ConfigError(f"memory={settings.memory!r} is not a size; write it as Docker does, e.g. '512m' or '2g'")
        options["mem_limit"] = options["memswap_limit"] = settings.memory
    if settings.cpus is not None:
        options["nano_cpus"] = int(settings.cpus * 1e9)
    if settings.pids > 0:
        options["pids_limit"] = settings.pids
    mounts: list[Mount] = []
    for key, value in settings.docker_options.items():
        if key in OWNED_OPTIONS:
            raise ConfigError(f"docker_options key {key!r} is the plugin's; use {OWNED_OPTIONS[key]}")
        if key == "mounts":  # "src:dst[:ro]", as `docker run -v` writes them
            mounts.extend(_mount(spec, to_host) for spec in value)
        elif key not in RUN_HOST_CONFIG_KWARGS:
            raise ConfigError(f"docker_options key {key!r} is not a container option; "
                              f"it takes {', '.join(sorted(set(RUN_HOST_CONFIG_KWARGS) - set(OWNED_OPTIONS)))}")
        elif key == "ulimits":
            options[key] = [docker.types.Ulimit(**u) if isinstance(u, Mapping) else u for u in value]
        else:
            options[key] = value
    return options, mounts


def _mount(spec: str, to_host: HostPathFn) -> Mount:
    source, _, rest = str(spec).partition(":")
    target, _, mode = rest.partition(":")
    if not source or not target.startswith("/") or mode not in ("", "ro", "rw") or target == str(WORKDIR):
        raise ConfigError(f"docker_options mounts entry {spec!r} is not SOURCE:/TARGET[:ro] (and /work is the workspace's)")
    return Mount(to_host(Path(source)), target, read_only=mode == "ro")


HostPathFn = Callable[[Path], str]


class ContainerEnv(BuildEnv):
    """A builder container. Configure it, then `start()` it (or use it as a context manager)."""

    kind = "container"

    def __init__(self, client: docker.DockerClient, image: str, workspace: Path, owner: Owner, *,
                 test: str = "", network: Optional[str] = None, ssh_agent: bool = False,
                 environment: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None,
                 mounts: Iterable[Mount] = (), group_add: Iterable[int] = (),
                 user: Optional[InvokingUser] = None, to_host: HostPathFn = str,
                 host_options: Optional[Mapping[str, Any]] = None, caches: Optional[Mapping[str, str]] = None,
                 copy_workspace: bool = False) -> None:
        super().__init__(workspace, WORKDIR, environment=environment, timeout=timeout)
        self.client = client
        self.image = image
        self.network = network
        self.owner = owner
        self.user = user or InvokingUser()
        self.test = test
        self.ssh_agent = ssh_agent
        self.name = owner.name(self.kind, test.rsplit("::", 1)[-1])
        self.extra_mounts = list(mounts)
        self.group_add = list(group_add)
        self.host_options = dict(host_options or {})  # limits and docker_options (see host_options())
        self.caches = dict(caches or {})  # name -> path: named volumes kept across sessions
        self._oom_kills = 0
        self._to_host = to_host
        self.copy_workspace = copy_workspace  # the engine cannot see the workspace: copied in and out (engine/copied.py)
        self.copied: Optional[CopiedWorkspace] = None
        self.user_spec = self.user.user_spec  # as the engine needs it (see start())
        self.id = ""  # set by start()
        self._container: Optional[Container] = None
        self._closed = False
        self.removal: Optional[Future[None]] = None  # set by close()

    def start(self) -> ContainerEnv:
        """Create and start the container; idempotent."""
        if not self.id:
            from ..engine.endpoint import describe, run_as

            self.user_spec = run_as(describe(self.client), self.user.uid, self.user.gid).user
            env = {"HOME": str(WORKDIR)}
            mounts = self._host_mounts()
            if self.ssh_agent:
                env["SSH_AUTH_SOCK"] = SSH_AGENT_TARGET
            mounts += [Mount(self._cache_volume(name), path, type="volume") for name, path in self.caches.items()]
            self.id = start_idle_container(
                self.client, self.image, name=self.name, user=self.user_spec,
                labels=self.owner.labels(self.kind, self.test), role="builder container", network=self.network,
                mounts=mounts, group_add=self.user.extra_groups(self.group_add), host=self.host_options,
                working_dir=str(WORKDIR), environment=env)
            emit("created", "container", self.name, self.owner.session, kind=self.kind)
            if self.copy_workspace:
                self._seed_copy()
        return self

    def _host_mounts(self) -> list[Mount]:
        """The workspace, the identity files, the ssh agent and docker_options mounts: this machine's files,
        which only an engine that sees them can mount."""
        if not self.copy_workspace:
            return [Mount(self._to_host(self.workspace), str(WORKDIR)), *self._identity_mounts(),
                    *self.extra_mounts, *([self._ssh_agent_mount()] if self.ssh_agent else [])]
        if self.extra_mounts or self.ssh_agent:
            raise ConfigError(f"{self.name}: the engine at {where()} cannot see this machine's files, so bind mounts "
                              "(docker_options mounts, ssh_agent) cannot reach it; drop them, or use a local engine")
        return []

    def _seed_copy(self) -> None:
        """The workspace and the identity files go in through the archive API."""
        from ..engine.copied import CopiedWorkspace

        uid, gid = (int(part) for part in self.user_spec.split(":"))
        self.copied = CopiedWorkspace(self.client, self.id, self.workspace, WORKDIR, uid, gid)
        with lost_during(f"copying the workspace into {self.name}"):
            self.copied.seed([(PurePosixPath("/etc", name), (Path("/etc") / name).read_bytes())
                              for name in ("passwd", "group")])

    def _cache_volume(self, name: str) -> str:
        """The cache's named volume, made on first use: labelled a cache (so no sweep removes it), and
        handed to the invoking user, since a new volume's root is root's and a builder's root has no
        capability to chown it. Concurrent makers do the same harmless thing twice."""
        import docker

        from ..engine.containers import remove_container
        from ..naming import LABEL_CACHE, slug

        volume = CACHE_VOLUME + slug(name, 60)
        api = self.client.api
        with lost_during(f"making the cache volume {volume}"):
            try:
                api.inspect_volume(volume)
                return volume
            except docker.errors.NotFound:
                api.create_volume(volume, labels={**self.owner.labels("cache"), LABEL_CACHE: f"cache:{name}"})
            chown = start_idle_container(self.client, self.image, name=self.owner.name("cache-init"), user="0",
                                         labels=self.owner.labels("cache-init"), role="cache initialiser",
                                         network="none", mounts=[Mount(volume, "/cache", type="volume")])
            try:
                exec_id = api.exec_create(chown, ["chown", self.user_spec, "/cache"], user="0")["Id"]
                api.exec_start(exec_id)
            finally:
                remove_container(self.client, chown)
        return volume

    def __enter__(self) -> ContainerEnv:
        return self.start()

    def _identity_mounts(self) -> list[Mount]:
        """/etc/passwd and /etc/group, read-only, so the invoking user has a name inside.

        Inside a runner container they are the runner's own files, which the
        host cannot mount: then a copy beside the workspace (on a mount) is used.
        """
        mounts = []
        for name in ("passwd", "group"):
            source = Path("/etc") / name
            try:
                host = self._to_host(source)
            except ConfigError:
                copy = self.workspace.parent / ".buildenv-etc" / name
                copy.parent.mkdir(exist_ok=True)
                copy.write_bytes(source.read_bytes())
                host = self._to_host(copy)
            mounts.append(Mount(host, str(source), read_only=True))
        return mounts

    def _ssh_agent_mount(self) -> Mount:
        sock = os.environ.get("SSH_AUTH_SOCK")
        if not sock or not Path(sock).exists():
            raise ConfigError("ssh_agent=True but SSH_AUTH_SOCK is unset or gone; "
                              "start an agent (eval $(ssh-agent)) or drop ssh_agent")
        return Mount(self._to_host(Path(sock)), SSH_AGENT_TARGET)

    def running(self) -> bool:
        """Started, and the engine says it still runs."""
        import docker

        try:
            return bool(self.id) and bool(self.client.api.inspect_container(self.id)["State"]["Running"])
        except docker.errors.NotFound:
            return False

    @property
    def container(self) -> Container:
        """The docker SDK object, for anything the handle does not cover."""
        if not self.id:
            raise BuildEnvError(f"{self.name} is not started; call start() first")
        if self._container is None:
            self._container = self.client.containers.get(self.id)
        return self._container

    # --- running ---------------------------------------------------------
    def _execute(self, argv: list[str], env: dict[str, str], cwd: PurePosixPath,
                 timeout: Optional[float], user: Optional[str]) -> tuple[int, str, str, bool]:
        if not self.id:
            raise BuildEnvError(f"{self.name} is not started; call start() first")
        try:
            return self._exec(argv, env, cwd, timeout, user)
        except BackendUnavailable:
            exited = self._exited()
            if exited:
                raise BackendUnavailable(exited) from None
            raise

    def _exited(self) -> str:
        """Why the builder is not running when the engine is: its own last words (an image without
        `sleep` exits at once, under an init that started), or "" when it cannot be asked."""
        try:
            state = self.client.api.inspect_container(self.id)["State"]
            if state["Running"]:
                return ""
            words = self.client.api.logs(self.id, tail=3).decode("utf-8", "replace").strip().replace("\n", " | ")
        except Exception:
            return ""
        # tini names the program it could not start; catatonit says "failed to exec pid1".
        lacks_sleep = re.search(r"sleep|failed to exec pid1", words)
        hint = ("a builder image needs `sleep` and `sh` (busybox or coreutils)" if lacks_sleep
                else "its logs say why; docker logs shows them while it is kept (--buildenv-keep)")
        return (f"builder container from {self.image} is not running: it exited with {state.get('ExitCode')} "
                f"({words or 'no output'}); {hint}")

    def _exec(self, argv: list[str], env: dict[str, str], cwd: PurePosixPath,
              timeout: Optional[float], user: Optional[str]) -> tuple[int, str, str, bool]:
        api = self.client.api
        marker = secrets.token_hex(8)
        if timeout is not None:
            env = {**env, "BUILDENV_EXEC": marker}
        with lost_during(f"the command {argv[0]!r} in {self.name}"):
            token, stdin = "", None
            if self.copied is not None:  # what changed on the host goes in; the wrapped exec lists the tree after
                argv, token, stdin = self.copied.command(argv)
                env = {**env, "BUILDENV_SYNC": token, **({"BUILDENV_SYNC_IN": "1"} if stdin else {})}
            exec_id = api.exec_create(self.id, argv, environment=env, workdir=str(cwd), user=user or "",
                                      stdin=stdin is not None)["Id"]
            stream = _exec_stream(api, exec_id, stdin)
            out: list[bytes] = []
            err: list[bytes] = []
            timed_out = False
            if timeout is None:
                _drain(stream, out, err)
            else:
                reader = threading.Thread(target=_drain, args=(stream, out, err), daemon=True)
                reader.start()
                reader.join(timeout)
                if reader.is_alive():
                    timed_out = True
                    self._kill_marked(marker, user)
                    reader.join(10)
                    if reader.is_alive():  # nothing could be started to kill it (a fork bomb at the pids limit)
                        api.kill(self.id)
                        self.killed_by = "its builder, killed whole: no process could start in it to end the command"
                        reader.join(10)
            exit_code = api.exec_inspect(exec_id)["ExitCode"]
            if self.copied is not None:  # the builder's report follows the command's own stderr
                err = [self.copied.pull(token, b"".join(err))]
            stderr = _text(err)
        code, stdout = (-9 if exit_code is None else int(exit_code)), _text(out)
        if code == 126 and "executable file not found" in stdout:
            # The engine's own words, on stdout with 126; a shell (and `docker run`) says 127 on stderr.
            return 127, "", stdout.strip() + "\n", timed_out
        if code == 137 and not timed_out and self._oom_killed():
            self.killed_by = f"the out-of-memory killer (memory limit {self.host_options['mem_limit']})"
        return code, stdout, stderr, timed_out

    def _oom_killed(self) -> bool:
        """Did the kernel's OOM killer act in this builder since we last looked (its cgroup's oom_kill count)?"""
        if "mem_limit" not in self.host_options:
            return False
        api = self.client.api
        read = api.exec_create(self.id, ["sh", "-c", "cat /sys/fs/cgroup/memory/memory.oom_control "
                                         "/sys/fs/cgroup/memory.events 2>/dev/null"], user="0")["Id"]
        counts = re.findall(rb"^oom_kill (\d+)", api.exec_start(read), re.MULTILINE)
        kills = int(counts[0]) if counts else 0
        killed, self._oom_kills = kills > self._oom_kills, kills
        return killed

    def _kill_marked(self, marker: str, user: Optional[str]) -> None:
        import docker

        api = self.client.api
        try:
            killer = api.exec_create(self.id, ["sh", "-c", _KILL_MARKED, "sh", marker], user=user or "")["Id"]
            api.exec_start(killer)
        except docker.errors.APIError:
            pass  # no process can start (its pids limit is reached): the caller kills the builder

    # --- files outside /work: through the archive API --------------------
    def _archive_member(self, path: PurePosixPath) -> Optional[tuple[tarfile.TarInfo, bytes]]:
        import docker

        try:
            stream, _ = self.client.api.get_archive(self.id, str(path))
        except docker.errors.NotFound:
            return None
        data = b"".join(stream)
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            member = archive.next()
            if member is None:
                return None
            payload = archive.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
            return member, payload

    def _stat_outside(self, path: PurePosixPath) -> Optional[FileInfo]:
        """stat in the builder, as its user: the archive API's owners are not the builder's on every
        engine (rootless Podman's say 0 for every file). Where that user cannot look (and an exec as
        root in a user's builder has no capabilities), the archive API, which the engine serves."""
        api = self.client.api
        with lost_during(f"looking at {path} in {self.name}"):
            exec_id = api.exec_create(self.id, ["stat", "-c", "%f|%s|%u|%g", str(path)], user=self.user_spec)["Id"]
            output = api.exec_start(exec_id).decode("utf-8", "replace").strip()
            if api.exec_inspect(exec_id)["ExitCode"] == 0:
                mode, size, uid, gid = output.split("|")
                return FileInfo(mode=int(mode, 16), size=int(size), uid=int(uid), gid=int(gid))
        if "No such file" in output:
            return None
        found = self._archive_member(path)
        if found is None:
            return None
        member, _ = found
        type_bits = 0o040000 if member.isdir() else 0o120000 if member.issym() else 0o100000
        return FileInfo(mode=type_bits | member.mode, size=member.size, uid=member.uid, gid=member.gid)

    def _read_outside(self, path: PurePosixPath) -> bytes:
        found = self._archive_member(path)
        if found is None:
            raise FileNotFoundError(f"{path} does not exist in {self.name}")
        return found[1]

    def _put_outside(self, src: Path, target: PurePosixPath) -> None:
        buffer = io.BytesIO()
        uid, gid = (int(part) for part in self.user_spec.split(":"))

        def as_builder(info: tarfile.TarInfo) -> tarfile.TarInfo:  # the builder's user owns what it is given
            info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
            return info

        with tarfile.open(fileobj=buffer, mode="w", dereference=True) as archive:
            archive.add(str(src), arcname=target.name, filter=as_builder)
        if not self.client.api.put_archive(self.id, str(target.parent), buffer.getvalue()):
            raise FileNotFoundError(f"put(): {target.parent} does not exist in {self.name}")

    def _get_outside(self, source: PurePosixPath, dest: Path) -> None:
        import docker

        try:
            stream, _ = self.client.api.get_archive(self.id, str(source))
        except docker.errors.NotFound as exc:
            raise FileNotFoundError(f"get(): {source} does not exist in {self.name}") from exc
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            members = archive.getmembers()
            for member in members:  # the archive's top is the source's name: land it as dest's
                member.name = str(PurePosixPath(dest.name) / PurePosixPath(member.name).relative_to(source.name))
            try:
                extract_safely(archive, members, dest.parent)
            except tarfile.TarError as exc:
                raise BuildEnvError(f"get(): {source} in {self.name} holds {exc}; nothing outside {dest} "
                                    "is written: fetch the files it links to instead") from exc

    # --- lifetime --------------------------------------------------------
    def close(self) -> None:
        """Schedule removal off the test's critical path; `wait_for_removals()` joins it."""
        if self._closed:
            return
        self._closed = True
        if not self.id:
            return  # never started: nothing to remove
        self.removal = schedule_removal(self.client, self.id)
        emit("removed", "container", self.name, self.owner.session, kind=self.kind)


def extract_safely(archive: tarfile.TarFile, members: list[tarfile.TarInfo], where: Path) -> None:
    """Extract without writing outside `where` (no absolute or `..` paths, no links escaping it):
    tarfile's "data" filter where this Python has it, else the same refusals by hand."""
    if hasattr(tarfile, "data_filter"):
        archive.extractall(where, members=members, filter="data")
        return
    for member in members:  # Pythons before 3.9.17 / 3.10.12 / 3.11.4
        target = PurePosixPath(member.name)
        link = PurePosixPath(member.linkname)
        escapes = target.is_absolute() or ".." in target.parts or (
            (member.issym() or member.islnk()) and (link.is_absolute() or ".." in link.parts))
        if escapes:
            raise tarfile.TarError(f"{member.name!r}, which would land outside the destination")
        archive.extract(member, where, set_attrs=False)  # no chown to the archive's owners, as "data" does not
        if member.isreg():  # but the mode and time, as "data" keeps them
            target_path = where / member.name
            os.chmod(target_path, (member.mode & 0o755) | 0o600)
            os.utime(target_path, (member.mtime, member.mtime))


def _exec_stream(api: Any, exec_id: str, stdin: Optional[bytes]) -> Iterable[tuple[Optional[bytes], Optional[bytes]]]:
    """The exec's (stdout, stderr) chunks; with `stdin`, that is written to it first, then closed."""
    if stdin is None:
        return api.exec_start(exec_id, stream=True, demux=True)  # type: ignore[no-any-return]
    import socket

    from docker.utils.socket import demux_adaptor, frames_iter

    sock = api.exec_start(exec_id, socket=True)
    raw = getattr(sock, "_sock", sock)
    raw.sendall(stdin)
    with contextlib.suppress(OSError, AttributeError):
        raw.shutdown(socket.SHUT_WR)  # tar stops at the archive's end anyway
    return (demux_adaptor(*frame) for frame in frames_iter(sock, tty=False))  # type: ignore[no-untyped-call]


def _drain(stream: Iterable[tuple[Optional[bytes], Optional[bytes]]], out: list[bytes], err: list[bytes]) -> None:
    for chunk_out, chunk_err in stream:
        if chunk_out:
            out.append(chunk_out)
        if chunk_err:
            err.append(chunk_err)


def _text(chunks: list[bytes]) -> str:
    return b"".join(chunks).decode("utf-8", errors="replace")




# --- the session-wide manager (dind uses it too) --------------------------------------
class Builders:
    """One process's builders: images, spares and shared network namespaces, made on first use.

    The engine's client, image builder, path translation and network holders are
    shared by every kind on the engine (container, dind) through the session's services.
    """

    def __init__(self, services: Services, env_class: type[ContainerEnv] = ContainerEnv) -> None:
        self.services = services
        self.env_class = env_class

    # What container and dind share, each made once per process.
    @property
    def client(self) -> docker.DockerClient:
        from ..engine import connect

        return self.services.memo("engine.client", connect)

    @property
    def images(self) -> ImageBuilder:
        from ..engine.images import ImageBuilder

        s = self.services  # session images belong to the process that outlives every worker
        return s.memo("engine.images", lambda: ImageBuilder(self.client, s.session_owner, s.shared, s.progress))

    @property
    def host_paths(self) -> HostPaths:
        from ..engine.hostpaths import detect

        return self.services.memo("engine.host_paths", lambda: detect(self.client))

    @property
    def networks(self) -> SharedNetworks:
        from ..engine.netns import SharedNetworks

        from ..engine.endpoint import describe

        # Off with --buildenv-keep: a kept builder must keep its network after the session. Off on rootless
        # engines: each builder has a user namespace of its own, and cannot mount /sys in another's network.
        enabled = (bool(self.services.ini.get("buildenv_share_network", True)) and not self.services.owner.keep
                   and not describe(self.client).rootless)
        return self.services.memo("engine.networks", lambda: SharedNetworks(
            self.client, self.services.owner, InvokingUser(), enabled=enabled))

    def _spares(self, test: TestInfo) -> Optional[SparePool]:
        from ..engine.spares import SparePool

        depth = int(self.services.ini.get("buildenv_spares") or 0)
        if depth <= 0 or test.scratch is None:
            return None
        # Under basetemp, so that it is on a bind mount when pytest runs in a runner container.
        root = test.scratch / "buildenv-workspaces"
        return self.services.memo("engine.spares", lambda: SparePool(root, depth=depth))

    # --- the Manager protocol ----------------------------------------------------
    def image_for(self, settings: ContainerSettings) -> str:
        from ..engine.images import BuildSpec

        kind = self.env_class.kind
        if settings.dockerfile is not None:
            context = settings.context or settings.dockerfile.parent
            base = self.images.build(BuildSpec(settings.dockerfile, context, settings.target, settings.build_args))
        elif settings.image:
            base = self.images.from_tag(settings.image)
        else:
            raise ConfigError(f"no image for the {kind} kind; pass @pytest.mark.{kind}(image=...) or dockerfile=, "
                              f"set {kind}: image: in buildenv.yaml, or ini buildenv_image")
        return self.images.snapshot(base, settings.provision, settings.provision_user) if settings.provision else base

    def configure(self, settings: ContainerSettings, image: str, workspace: Path, test: str,
                  network: Optional[str]) -> ContainerEnv:
        """A builder for these settings, not started yet."""
        options, mounts = host_options(settings, self.host_paths.to_host)
        copy = settings.workspace == "copy" or (settings.workspace is None and not self.engine_sees(workspace, image))
        return self.env_class(self.client, image, workspace, self.services.owner, test=test, network=network,
                              ssh_agent=settings.ssh_agent, to_host=self.host_paths.to_host,
                              environment=settings.environment, timeout=settings.timeout,
                              host_options=options, mounts=mounts, caches=settings.caches, copy_workspace=copy)

    def engine_sees(self, workspace: Path, image: str) -> bool:
        """Whether the engine sees this machine's workspaces, asked once per process (engine/copied.py)."""
        from ..engine.copied import engine_sees

        def ask() -> bool:
            sees = engine_sees(self.client, workspace.parent, image, self.services.owner.labels("probe"),
                               self.host_paths.to_host)
            if not sees:
                self.services.notices.append(f"the engine at {where()} cannot see this machine's files: "
                                             "workspaces were copied in and out of builders (workspace: copy)")
            return sees

        return self.services.memo("engine.sees_workspaces", ask)

    def _start(self, settings: ContainerSettings, image: str, workspace: Path, test: str) -> ContainerEnv:
        """Started on a shared network namespace when one can be had."""
        networks = self.networks
        mode = networks.mode_for_new_builder(settings.network, image)
        try:
            return self.configure(settings, image, workspace, test, mode).start()
        except Exception:
            if mode == settings.network:
                raise
            networks.holder_failed()  # its holder is gone (a test removed it?): lend another
            mode = networks.mode_for_new_builder(settings.network, image)
            return self.configure(settings, image, workspace, test, mode).start()

    def open(self, settings: ContainerSettings, workspace: Path, test: TestInfo) -> ContainerEnv:
        """A builder for one test. An engine that is unreachable (or goes away while the builder is made,
        as in a daemon's shutdown, when pings still answer) is waited for, up to ini buildenv_engine_wait
        seconds, and then trusted for nothing it said before. No ping on the way: opening is a hot path,
        and every step of it talks to the engine anyway."""
        from ..engine import describe_unreachable, engine_lost, not_back, where

        seconds = float(self.services.ini.get("buildenv_engine_wait") or 60)
        outage: Optional[float] = None  # when this open found the engine gone
        while True:
            try:
                env = self._open(settings, workspace, test)
            except Exception as exc:
                if not engine_lost(exc):
                    raise
                if outage is None:
                    outage = time.monotonic()
                    cause = describe_unreachable(exc.__cause__ or exc)[0]
                    self.services.progress(f"{cause}; waiting up to {seconds:g} s for it (ini buildenv_engine_wait)")
                elif time.monotonic() - outage >= seconds:
                    raise not_back(seconds) from None
                self.images.forget()
                time.sleep(0.5)
                continue
            if outage is not None:
                self.services.progress(f"the container engine at {where()} is back after {time.monotonic() - outage:.1f} s")
            return env

    def _open(self, settings: ContainerSettings, workspace: Path, test: TestInfo) -> ContainerEnv:
        """A builder for one test: a spare if one is ready, on a shared network namespace."""
        image = self.image_for(settings)
        key = (self.env_class.kind, image, json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str))
        spares = self._spares(test)
        spare = spares.take(key) if spares is not None else None
        if isinstance(spare, ContainerEnv) and not spare.running():
            spare.close()  # it died with the engine (or was removed): never handed to a test
            spare = None
        env = spare if isinstance(spare, ContainerEnv) else self._start(settings, image, workspace, test.nodeid)
        if spares is not None:
            spares.restock(key, lambda where: self._start(settings, image, where, "spare"), test.more_tests_coming)
        if env.host_options.get("privileged"):
            self.services.notices.append(f"{env.name} ran privileged (docker_options privileged=True)")
        if not self.networks.claim(env):
            # Its holder is taken by another open builder (two in one test) or was removed:
            # this test gets a builder with a namespace of its own instead.
            env.close()
            env = self.configure(settings, image, env.workspace, test.nodeid, settings.network).start()
        return env

    def close(self, env: BuildEnv) -> None:
        """Remove env in the background; its holder is lent again once that is done."""
        env.close()
        self.networks.release(env)

    def describe_kept(self, env: BuildEnv) -> str:
        """A shell in the builder as the test's user, in its workdir (DOCKER_HOST named when set)."""
        from ..engine.endpoint import current

        assert isinstance(env, ContainerEnv)
        engine = "".join(f"{name}={value} " for name, value in current().cli_environment.items())
        return (f"{env.kind} {env.name}: {engine}docker exec -it --user {env.user_spec} --workdir {env.workdir} "
                f"{env.name} sh   (workspace {env.workspace})")

    def finish(self, end: SessionEnd) -> None:
        """The process's end: remove the spares and holders left, and wait for every removal."""
        from ..engine.containers import wait_for_removals

        spares, networks = self.services.existing("engine.spares"), self.services.existing("engine.networks")
        if spares is not None:
            spares.drain()
        wait_for_removals()  # the builders first: Podman refuses to remove a holder whose namespace one still uses
        if networks is not None:
            networks.close()
        wait_for_removals()


def engine_check(defaults: Mapping[str, Any]) -> Check:
    """The engine answers: which one, and its version."""
    from ..engine import probe

    return probe()


def engine_header() -> str:
    """Which engine, what it is, and how workspaces reach it."""
    from ..engine import connect
    from ..engine.endpoint import current, describe

    endpoint = current()
    return (f"engine {describe(connect(timeout=10))} at {endpoint.url} (from {endpoint.source}); workspaces "
            "bind-mounted if it sees them, else copied in and out (setting workspace: bind|copy)")


def caches_held() -> str:
    """The cache volumes on the engine with their sizes (what `reap --include-cache` would remove)."""
    from ..engine import connect
    from ..naming import LABEL_CACHE

    volumes = connect(timeout=10).api.df().get("Volumes") or []
    caches = sorted((v["Name"][len(CACHE_VOLUME):], (v.get("UsageData") or {}).get("Size", -1))
                    for v in volumes if LABEL_CACHE in (v.get("Labels") or {}) and v["Name"].startswith(CACHE_VOLUME))
    listed = ", ".join(f"{name} {size // 1024} KiB" if size >= 0 else name for name, size in caches)
    return f"caches: {listed or 'none'}"


def engine_leftovers(services: Services, session: Optional[str]) -> Iterator[Labelled]:
    from ..engine import connect
    from ..engine.resources import labelled_resources

    return labelled_resources(services.memo("engine.client", connect), session)


KIND = KindSpec(settings=ContainerSettings, manager=Builders, check=engine_check, leftovers=engine_leftovers,
                inventory=caches_held, header=engine_header)
