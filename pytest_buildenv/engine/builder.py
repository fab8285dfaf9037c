"""A builder: a container idling on `sleep infinity`, workspace at /work, running as the invoking user.

Every command is a `docker exec` into it: one container per test, however many commands the test
runs. Security defaults: never privileged, no-new-privileges, no Docker socket (only `dind` adds
one), SSH agent and host networking only when asked for. `ContainerSettings` are what a user sets
(checked when settings load); `BuilderSpec` is what the manager made of them on this engine.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import socket
import tarfile
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

from ..errors import BackendUnavailable, BuildEnvError, ConfigError, EngineNotAnswering
from ..events import emit
from ..handle import BuildEnv
from ..naming import LABEL_CACHE, Owner, slug
from ..result import Capture, FileInfo, Sink, output_text
from ..settings import CommonSettings, SettingError
from . import lost_during, where
from .archive import extract_as
from .containers import InvokingUser, Mount, remove_container, schedule_removal, start_idle_container
from .copied import CopiedWorkspace, EngineChannel
from .endpoint import describe, run_as

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

WORKDIR = PurePosixPath("/work")
SSH_AGENT_TARGET = "/run/buildenv/ssh-agent.sock"
CACHE_VOLUME = "buildenv-cache-"

# Finds every process of one exec by the marker in its environment (children
# inherit it, even ones that started a session of their own) and kills it.
# Needs only sh, tr and grep, which every builder image has.
KILL_MARKED = (
    'for d in /proc/[0-9]*; do '
    'if tr "\\0" "\\n" < "$d/environ" 2>/dev/null | grep -qx "BUILDENV_EXEC=$1"; '
    'then kill -KILL "${d#/proc/}" 2>/dev/null; fi; done'
)

# A timed-out command is ended within KILL_SLACK seconds of its timeout (README: The handle): KILL_GRACE
# for its own processes to be killed, then the builder is killed whole.
KILL_GRACE = 5.0
KILL_SLACK = 15.0

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
_PLATFORM = re.compile(r"^[a-z0-9]+/[a-z0-9_]+(/v\d+)?$")
_SSH = re.compile(r"^[A-Za-z0-9._-]+(=\S+)?$")


@dataclass(frozen=True)
class ContainerSettings(CommonSettings):
    """What a user sets for a builder (container and dind), each value checked when settings load."""

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
    # Image builds (BuildKit; their secrets are CommonSettings'): `RUN --mount=type=ssh` agents ("default");
    # the platform built and run; a local BuildKit cache directory.
    ssh: Optional[str] = None
    platform: Optional[str] = None  # "linux/arm64"; a list of them makes a matrix
    cache_from: Optional[Path] = None
    cache_to: Optional[Path] = None
    buildx_builder: Optional[str] = None  # a `docker buildx create` builder; unset: the engine's own BuildKit

    def __post_init__(self) -> None:
        """What the types cannot say: a memory size, docker_options keys (one the plugin owns names the
        setting to use instead), mount entries."""
        super().__post_init__()
        if self.memory is not None and not _MEMORY.match(self.memory):
            raise SettingError("memory", f"memory={self.memory!r} is not a size; write it as Docker does, "
                                         "e.g. '512m' or '2g'")
        for key, value in self.docker_options.items():
            _check_option(key, value)
        if self.platform is not None and not _PLATFORM.match(self.platform):
            raise SettingError("platform", f"platform={self.platform!r} is not a platform; write it as Docker "
                                           "does, e.g. 'linux/arm64' or 'linux/arm/v7'")
        if self.ssh is not None and not _SSH.match(self.ssh):
            raise SettingError("ssh", f"ssh={self.ssh!r} is not an agent BuildKit takes; write 'default' "
                                      "(SSH_AUTH_SOCK's agent) or 'ID=/path/to/agent.sock'")


def _check_option(key: str, value: Any) -> None:
    from docker.models.containers import RUN_HOST_CONFIG_KWARGS  # the SDK's list; docker is imported lazily

    if key in OWNED_OPTIONS:
        raise SettingError("docker_options", f"docker_options key {key!r} is the plugin's; use {OWNED_OPTIONS[key]}")
    if key == "mounts":
        for spec in value if isinstance(value, (list, tuple)) else [value]:
            parse_mount(spec)
    elif key not in RUN_HOST_CONFIG_KWARGS:
        raise SettingError("docker_options", f"docker_options key {key!r} is not a container option; it takes "
                                             f"{', '.join(sorted(set(RUN_HOST_CONFIG_KWARGS) - set(OWNED_OPTIONS)))}")


def parse_mount(spec: object) -> tuple[str, str, bool]:
    """A docker_options mounts entry, "src:dst[:ro]" as `docker run -v` writes them: (source, target, read-only)."""
    source, _, rest = str(spec).partition(":")
    target, _, mode = rest.partition(":")
    if not source or not target.startswith("/") or mode not in ("", "ro", "rw") or target == str(WORKDIR):
        raise SettingError("docker_options", f"docker_options mounts entry {spec!r} is not SOURCE:/TARGET[:ro] "
                                             "(and /work is the workspace's)")
    return source, target, mode == "ro"


HostPathFn = Callable[[Path], str]


@dataclass(frozen=True)
class BuilderSpec:
    """One builder's configuration: what a manager made of a test's settings on its engine (the image
    resolved, host options and mounts in the engine's terms). dind extends it (dataclasses.replace)."""

    image: str
    network: Optional[str] = None
    ssh_agent: bool = False
    environment: Mapping[str, str] = field(default_factory=dict)
    timeout: Optional[float] = None
    mounts: tuple[Mount, ...] = ()  # beyond the workspace and identity files (docker_options mounts)
    group_add: tuple[int, ...] = ()  # beyond the invoking user's own groups
    host_options: Mapping[str, Any] = field(default_factory=dict)  # limits and docker_options (host_options())
    caches: Mapping[str, str] = field(default_factory=dict)  # name -> path: named volumes kept across sessions
    copy_workspace: bool = False  # the engine cannot see the workspace: copied in and out (engine/copied.py)
    platform: Optional[str] = None  # "linux/arm64": the image's, emulated where this machine is another
    timeout_scale: float = 1.0  # command timeouts are multiplied by this (platforms.EMULATION_FACTOR when emulated)


def host_options(settings: ContainerSettings, to_host: HostPathFn) -> tuple[dict[str, Any], tuple[Mount, ...]]:
    """The engine's host-config options for these (checked) settings, and the extra mounts, on its paths."""
    import docker

    options: dict[str, Any] = {}
    if settings.memory is not None:
        options["mem_limit"] = options["memswap_limit"] = settings.memory
    if settings.cpus is not None:
        options["nano_cpus"] = int(settings.cpus * 1e9)
    if settings.pids > 0:
        options["pids_limit"] = settings.pids
    mounts: list[Mount] = []
    for key, value in settings.docker_options.items():
        if key == "mounts":
            for entry in value if isinstance(value, (list, tuple)) else [value]:
                source, target, read_only = parse_mount(entry)
                mounts.append(Mount(to_host(Path(source)), target, read_only=read_only))
        elif key == "ulimits":
            options[key] = [docker.types.Ulimit(**u) if isinstance(u, Mapping) else u for u in value]
        else:
            options[key] = value
    return options, tuple(mounts)


class Builder(BuildEnv):
    """A builder container. Give it a spec, then `start()` it (or use it as a context manager)."""

    kind = "container"  # a plain builder (what dind starts as siblings); kinds subclass it under their names

    def __init__(self, client: docker.DockerClient, spec: BuilderSpec, workspace: Path, owner: Owner, *,
                 test: str = "", user: Optional[InvokingUser] = None, to_host: HostPathFn = str) -> None:
        super().__init__(workspace, WORKDIR, environment=dict(spec.environment), timeout=spec.timeout)
        self.timeout_scale = spec.timeout_scale
        self.client = client
        self.spec = spec
        self.owner = owner
        self.user = user or InvokingUser()
        self.test = test
        self.name = owner.name(self.kind, test.rsplit("::", 1)[-1])
        self._oom_kills = 0
        self._to_host = to_host
        self.copied: Optional[CopiedWorkspace] = None  # copy mode: the workspace's copy in the builder
        self.user_spec = self.user.user_spec  # as the engine needs it (see start())
        self.id = ""  # set by start()
        self._container: Optional[Container] = None
        self._closed = False
        self.removal: Optional[Future[None]] = None  # set by close()

    # What the spec says, as a builder's readers (and netns' Tenant) ask for it.
    @property
    def image(self) -> str:
        return self.spec.image

    @property
    def network(self) -> Optional[str]:
        return self.spec.network

    @property
    def host_options(self) -> Mapping[str, Any]:
        return self.spec.host_options

    @property
    def copy_workspace(self) -> bool:
        return self.spec.copy_workspace

    @property
    def _ids(self) -> tuple[int, int]:
        """The builder's (uid, gid), as start() decided them (user_spec is "uid:gid")."""
        uid, gid = self.user_spec.split(":")
        return int(uid), int(gid)

    def start(self) -> Builder:
        """Create and start the container; idempotent."""
        if not self.id:
            self.user_spec = run_as(describe(self.client), self.user.uid, self.user.gid).user
            env = {"HOME": str(WORKDIR)}
            mounts = self._host_mounts()
            if self.spec.ssh_agent:
                env["SSH_AUTH_SOCK"] = SSH_AGENT_TARGET
            mounts += [Mount(self._cache_volume(name), path, type="volume") for name, path in self.spec.caches.items()]
            self.id = start_idle_container(
                self.client, self.image, name=self.name, user=self.user_spec,
                labels=self.owner.labels(self.kind, self.test), role="builder container", network=self.network,
                mounts=mounts, group_add=self.user.extra_groups(self.spec.group_add), host=self.host_options,
                working_dir=str(WORKDIR), environment=env, platform=self.spec.platform)
            emit("created", "container", self.name, self.owner.session, kind=self.kind)
            if self.copy_workspace:
                self._seed_copy()
        return self

    def _host_mounts(self) -> list[Mount]:
        """The workspace, the identity files, the ssh agent and docker_options mounts: this machine's files,
        which only an engine that sees them can mount."""
        if not self.copy_workspace:
            return [Mount(self._to_host(self.workspace), str(WORKDIR)), *self._identity_mounts(),
                    *self.spec.mounts, *([self._ssh_agent_mount()] if self.spec.ssh_agent else [])]
        if self.spec.mounts or self.spec.ssh_agent:
            raise ConfigError(f"{self.name}: the engine at {where(self.client)} cannot see this machine's files, so bind mounts "
                              "(docker_options mounts, ssh_agent) cannot reach it; drop them, or use a local engine")
        return []

    def _seed_copy(self) -> None:
        """The workspace and the identity files go in through the archive API."""
        uid, gid = self._ids
        self.copied = CopiedWorkspace(EngineChannel(self.client, self.id, self.user_spec), self.workspace, WORKDIR,
                                      uid, gid)
        with lost_during(f"copying the workspace into {self.name}", self.client):
            self.copied.seed([(PurePosixPath("/etc", name), (Path("/etc") / name).read_bytes())
                              for name in ("passwd", "group")])

    def _cache_volume(self, name: str) -> str:
        """The cache's named volume, made on first use: labelled a cache (so no sweep removes it), and
        handed to the invoking user, since a new volume's root is root's and a builder's root has no
        capability to chown it. Concurrent makers do the same harmless thing twice."""
        import docker

        volume = CACHE_VOLUME + slug(name, 60)
        api = self.client.api
        with lost_during(f"making the cache volume {volume}", self.client):
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

    def __enter__(self) -> Builder:
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
    def _execute(self, argv: list[str], env: dict[str, str], cwd: PurePosixPath, timeout: Optional[float],
                 user: Optional[str], out: Capture, err: Capture) -> tuple[int, bool]:
        if not self.id:
            raise BuildEnvError(f"{self.name} is not started; call start() first")
        try:
            return self._exec(argv, env, cwd, timeout, user, out, err)
        except EngineNotAnswering:
            raise  # asking why the builder is not running would wait on it too
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

    def _exec(self, argv: list[str], env: dict[str, str], cwd: PurePosixPath, timeout: Optional[float],
              user: Optional[str], out: Capture, err: Capture) -> tuple[int, bool]:
        api = self.client.api
        marker, program = secrets.token_hex(8), argv[0]
        if timeout is not None:
            env = {**env, "BUILDENV_EXEC": marker}
        token, stdin, split = "", None, None
        errors: Sink = err
        if self.copied is not None:  # what changed on the host goes in; the wrapped exec lists the tree after
            argv, token, stdin = self.copied.command(argv)
            env = {**env, "BUILDENV_SYNC": token, **({"BUILDENV_SYNC_IN": "1"} if stdin else {})}
            errors = split = self.copied.stderr_of(token, err)  # the builder's report follows the command's stderr
        outcome: dict[str, Any] = {}

        def exec_it() -> None:  # every call to the engine, so that a timeout bounds them all
            try:
                exec_id = api.exec_create(self.id, argv, environment=env, workdir=str(cwd), user=user or "",
                                          stdin=stdin is not None)["Id"]
                _drain(_exec_stream(api, exec_id, stdin), out, errors)
                outcome["code"] = api.exec_inspect(exec_id)["ExitCode"]
            except BaseException as exc:  # raised again below, where lost_during reads it
                outcome["error"] = exc

        with lost_during(f"the command {argv[0]!r} in {self.name}", self.client):
            timed_out = False
            if timeout is None:
                exec_it()
            else:
                worker = threading.Thread(target=exec_it, daemon=True, name="buildenv-exec")
                worker.start()
                worker.join(timeout)
                if worker.is_alive():
                    timed_out = True
                    self._end(worker, marker, user)
                if worker.is_alive():  # an engine that does not answer (stopped, overloaded): not waited for
                    raise EngineNotAnswering(
                        f"the container engine at {where(self.client)} did not answer for {timeout + KILL_SLACK:g} s "
                        f"during the command {argv[0]!r} in {self.name} (its timeout {timeout:g} s, then "
                        f"{KILL_SLACK:g} s to end it)", "look at the engine: a stopped or overloaded daemon; "
                        "the builder may be gone when it is back")
            if "error" in outcome:
                raise outcome["error"]
            exit_code = outcome.get("code")
            if self.copied is not None and split is not None:
                self.copied.pull(token, split)
        code = -9 if exit_code is None else int(exit_code)
        if code == 126 and b"executable file not found" in out.data():
            # The engine's own words, on stdout with 126; a shell (and `docker run`) says 127 on stderr.
            said = out.data().strip() + b"\n"
            out.reset()
            err.write(said)
            return 127, timed_out
        stderr = output_text(err.data())
        if code == 127 and program not in stderr and self._words_lost(program, stderr, out, env, cwd, user):
            err.reset()
            err.write(f"{program}: executable file not found ({stderr.strip() or 'the engine said no more'})\n".encode())
            return 127, timed_out
        if code == 137 and not timed_out and self._oom_killed():
            self.killed_by = f"the out-of-memory killer (memory limit {self.host_options['mem_limit']})"
        return code, timed_out

    def _words_lost(self, program: str, stderr: str, out: Capture, env: dict[str, str], cwd: PurePosixPath,
                    user: Optional[str]) -> bool:
        """A 127 (Podman's code for a program not found) whose words the engine lost: Podman 4.3's attach
        socket drops them at times, saying `connection reset by peer` (seen in the rootful stage) or nothing
        at all (the rootless one). A program may exit 127 silently too: then it is there, and nothing is said."""
        if "attach: read: connection reset by peer" in stderr:
            return True
        if stderr.strip() or out.size:
            return False
        try:
            api = self.client.api
            probe = api.exec_create(self.id, ["sh", "-c", 'command -v "$1" >/dev/null', "sh", program],
                                    environment=env, workdir=str(cwd), user=user or "")["Id"]
            api.exec_start(probe)
            return bool(api.exec_inspect(probe)["ExitCode"] != 0)
        except Exception:  # cannot tell: the result stays as it came
            return False

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

    def _end(self, reader: threading.Thread, marker: str, user: Optional[str]) -> None:
        """End a timed-out command within KILL_SLACK: its marked processes, else the whole builder."""
        # The killer runs beside us, not in our way: under a fork bomb it may not start, or crawl
        # through thousands of processes, one fork of tr and grep each.
        threading.Thread(target=self._kill_marked, args=(marker, user), daemon=True).start()
        reader.join(KILL_GRACE)
        if reader.is_alive():
            # Beside us too: an engine that does not answer would hold the call past KILL_SLACK.
            threading.Thread(target=self._kill_whole, daemon=True).start()
            self.killed_by = "its builder, killed whole: its command could not be ended inside it"
            reader.join(KILL_SLACK - KILL_GRACE)

    def _kill_whole(self) -> None:
        with contextlib.suppress(Exception):  # gone already, or the engine is away: _exec says which
            self.client.api.kill(self.id)

    def _kill_marked(self, marker: str, user: Optional[str]) -> None:
        import docker

        api = self.client.api
        try:
            killer = api.exec_create(self.id, ["sh", "-c", KILL_MARKED, "sh", marker], user=user or "")["Id"]
            api.exec_start(killer)
        except (docker.errors.APIError, OSError):
            pass  # no process can start (its pids limit is reached), or the builder went: _end kills it whole

    # --- files outside /work: through the archive API --------------------
    def _archive_member(self, path: PurePosixPath) -> Optional[tuple[tarfile.TarInfo, bytes]]:
        """What `path` names in the builder, links followed there (never on the host: they are the builder's)."""
        import docker

        for _ in range(40):  # as the kernel's limit on links in a path (a loop ends here)
            try:
                stream, _ = self.client.api.get_archive(self.id, str(path))
            except docker.errors.NotFound:
                return None
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
                member = archive.next()
                if member is None:
                    return None
                if not member.issym():
                    payload = archive.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
                    return member, payload
            path = PurePosixPath(os.path.normpath(path.parent / member.linkname))
        return None

    def _stat_outside(self, path: PurePosixPath) -> Optional[FileInfo]:
        """stat in the builder, as its user: the archive API's owners are not the builder's on every
        engine (rootless Podman's say 0 for every file). Where that user cannot look (and an exec as
        root in a user's builder has no capabilities), the archive API, which the engine serves."""
        api = self.client.api
        with lost_during(f"looking at {path} in {self.name}", self.client):
            exec_id = api.exec_create(self.id, ["stat", "-L", "-c", "%f|%s|%u|%g", str(path)],
                                      user=self.user_spec)["Id"]  # -L: what a link names, as on the host
            output = api.exec_start(exec_id).decode("utf-8", "replace").strip()
            fields = output.split("|")
            # Podman 4.3's attach may lose an exec's output (seen once in CI: exit 0, nothing said): then
            # the archive API, below, says what the file is.
            if api.exec_inspect(exec_id)["ExitCode"] == 0 and len(fields) == 4:
                mode, size, uid, gid = fields
                return FileInfo(mode=int(mode, 16), size=int(size), uid=int(uid), gid=int(gid))
        if "No such file" in output or "Too many levels of symbolic links" in output:
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
        uid, gid = self._ids

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
        extract_as(io.BytesIO(b"".join(stream)), source, dest, self.name)

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


def _exec_stream(api: Any, exec_id: str, stdin: Optional[bytes]) -> Iterable[tuple[Optional[bytes], Optional[bytes]]]:
    """The exec's (stdout, stderr) chunks; with `stdin`, that is written to it first, then closed."""
    if stdin is None:
        return api.exec_start(exec_id, stream=True, demux=True)  # type: ignore[no-any-return]
    from docker.utils.socket import demux_adaptor, frames_iter

    sock = api.exec_start(exec_id, socket=True)
    raw = getattr(sock, "_sock", sock)
    raw.sendall(stdin)
    with contextlib.suppress(OSError, AttributeError):
        raw.shutdown(socket.SHUT_WR)  # tar stops at the archive's end anyway
    return (demux_adaptor(*frame) for frame in frames_iter(sock, tty=False))  # type: ignore[no-untyped-call]


def _drain(stream: Iterable[tuple[Optional[bytes], Optional[bytes]]], out: Sink, err: Sink) -> None:
    for chunk_out, chunk_err in stream:
        if chunk_out:
            out.write(chunk_out)
        if chunk_err:
            err.write(chunk_err)


