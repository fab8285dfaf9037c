"""`container`: a builder container, workspace bind-mounted at /work, as the invoking user.

The container idles (`sleep infinity`) and every command is a `docker exec`
into it: one container per test, however many commands the test runs.
Security defaults: never privileged, no-new-privileges, no Docker socket
(only `dind` adds it), SSH agent and host networking only when asked for.
"""

from __future__ import annotations

import io
import os
import secrets
import tarfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional

from ..engine import daemon_errors
from ..events import emit
from ..errors import BackendUnavailable, ConfigError
from ..naming import Owner
from ..result import FileInfo
from .base import BuildEnv

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

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
class Mount:
    source: str  # as the Docker daemon sees it (host path)
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class InvokingUser:
    """Whom the builder runs as: the user running pytest, groups and all."""

    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    groups: tuple[int, ...] = field(default_factory=lambda: tuple(sorted(set(os.getgroups()))))

    @property
    def user_spec(self) -> str:
        return f"{self.uid}:{self.gid}"

    def extra_groups(self, also: Iterable[int] = ()) -> list[str]:
        return [str(g) for g in sorted({*self.groups, *also}) if g != self.gid]


HostPathFn = Callable[[Path], str]


class ContainerEnv(BuildEnv):
    kind = "container"

    def __init__(self, client: docker.DockerClient, image: str, workspace: Path, owner: Owner, *,
                 test: str = "", network: Optional[str] = None, ssh_agent: bool = False,
                 environment: Optional[Mapping[str, str]] = None, timeout: Optional[float] = None,
                 mounts: Iterable[Mount] = (), group_add: Iterable[int] = (),
                 user: Optional[InvokingUser] = None, to_host: HostPathFn = str) -> None:
        super().__init__(workspace, WORKDIR, environment=environment, timeout=timeout)
        self.client = client
        self.image = image
        self.network = network
        self.owner = owner
        self.user = user or InvokingUser()
        self.name = owner.name(self.kind, test.rsplit("::", 1)[-1])
        self._to_host = to_host
        all_mounts = [Mount(to_host(self.workspace), str(WORKDIR)), *self._identity_mounts(), *mounts]
        env = {"HOME": str(WORKDIR)}
        if ssh_agent:
            all_mounts.append(self._ssh_agent_mount())
            env["SSH_AUTH_SOCK"] = SSH_AGENT_TARGET
        self.id = self._start(all_mounts, env, network, group_add, owner.labels(self.kind, test))
        emit("created", "container", self.name, owner.session, kind=self.kind)
        self._container: Optional[Container] = None
        self._closed = False
        self.removal: Optional[Future[None]] = None  # set by close()

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
            raise ConfigError("ssh_agent=True but SSH_AUTH_SOCK is unset or gone; start an agent (eval $(ssh-agent)) or drop ssh_agent")
        return Mount(self._to_host(Path(sock)), SSH_AGENT_TARGET)

    def _start(self, mounts: list[Mount], env: dict[str, str], network: Optional[str],
               group_add: Iterable[int], labels: dict[str, str]) -> str:
        return start_idle_container(self.client, self.image, name=self.name, user=self.user.user_spec,
                                    labels=labels, role="builder container", network=network, mounts=mounts,
                                    group_add=self.user.extra_groups(group_add),
                                    working_dir=str(WORKDIR), environment=env)

    @property
    def container(self) -> Container:
        """The docker SDK object, for anything the handle does not cover."""
        if self._container is None:
            self._container = self.client.containers.get(self.id)
        return self._container

    # --- running ---------------------------------------------------------
    def _execute(self, argv: list[str], env: dict[str, str], cwd: PurePosixPath,
                 timeout: Optional[float], user: Optional[str]) -> tuple[int, str, str, bool]:
        api = self.client.api
        marker = secrets.token_hex(8)
        if timeout is not None:
            env = {**env, "BUILDENV_EXEC": marker}
        with daemon_errors(f"running {argv[0]!r} in {self.name}"):
            exec_id = api.exec_create(self.id, argv, environment=env, workdir=str(cwd), user=user or "")["Id"]
            stream = api.exec_start(exec_id, stream=True, demux=True)
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
            exit_code = api.exec_inspect(exec_id)["ExitCode"]
        return (-9 if exit_code is None else int(exit_code)), _text(out), _text(err), timed_out

    def _kill_marked(self, marker: str, user: Optional[str]) -> None:
        api = self.client.api
        killer = api.exec_create(self.id, ["sh", "-c", _KILL_MARKED, "sh", marker], user=user or "")["Id"]
        api.exec_start(killer)

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
        with tarfile.open(fileobj=buffer, mode="w", dereference=True) as archive:
            archive.add(str(src), arcname=target.name)
        if not self.client.api.put_archive(self.id, str(target.parent), buffer.getvalue()):
            raise FileNotFoundError(f"put(): {target.parent} does not exist in {self.name}")

    def _get_outside(self, source: PurePosixPath, dest: Path) -> None:
        import docker

        try:
            stream, _ = self.client.api.get_archive(self.id, str(source))
        except docker.errors.NotFound as exc:
            raise FileNotFoundError(f"get(): {source} does not exist in {self.name}") from exc
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            top = source.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            for member in archive.getmembers():
                relative = PurePosixPath(member.name).relative_to(top)
                if ".." in relative.parts or (member.islnk() or member.issym()) and member.linkname.startswith("/"):
                    continue  # never write outside dest, whatever the archive says
                member.name = str(PurePosixPath(dest.name) / relative)
                archive.extract(member, dest.parent, set_attrs=False)

    # --- lifetime --------------------------------------------------------
    def close(self) -> None:
        """Schedule removal off the test's critical path; `wait_for_removals()` joins it."""
        if self._closed:
            return
        self._closed = True
        self.removal = schedule_removal(self.client, self.id)
        emit("removed", "container", self.name, self.owner.session, kind=self.kind)


# Removing a container costs about as much as starting one; nobody needs to wait
# for it but the end of the session. Executor threads are joined at interpreter
# exit, and the session sweep removes anything labelled that is still there.
_executor: Optional[ThreadPoolExecutor] = None
_pending: list[Future[None]] = []


def _removals() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="buildenv-remove")
    return _executor


def schedule_removal(client: docker.DockerClient, container_id: str) -> Future[None]:
    """Remove a container in the background; `wait_for_removals()` joins it."""
    removal = _removals().submit(remove_container, client, container_id)
    _pending.append(removal)
    return removal


def wait_for_removals() -> list[BaseException]:
    """Block until every scheduled removal is done; return the errors they raised."""
    errors = []
    while _pending:
        error = _pending.pop().exception()
        if error is not None:
            errors.append(error)
    return errors


def start_idle_container(client: docker.DockerClient, image: str, *, name: str, user: str, labels: dict[str, str],
                         role: str, network: Optional[str] = None, mounts: Iterable[Mount] = (),
                         group_add: Iterable[str] = (), **create: Any) -> str:
    """Create and start a container idling on `sleep infinity`, under our security defaults:
    never privileged, no-new-privileges, and an init that reaps what timed-out commands leave
    (so `ps` in a test stays truthful). `role` names it in errors; `create` goes to create_container."""
    import docker

    api = client.api
    host_config = api.create_host_config(
        mounts=[docker.types.Mount(m.target, m.source, type="bind", read_only=m.read_only) for m in mounts],
        group_add=list(group_add),
        network_mode=network,
        security_opt=["no-new-privileges"],
        privileged=False,
        init=True,
    )
    with daemon_errors(f"starting a {role} from {image}"):
        created = api.create_container(image, entrypoint=["sleep"], command=["infinity"], name=name, user=user,
                                       labels=labels, host_config=host_config, detach=True, **create)
        try:
            api.start(created["Id"])
        except docker.errors.APIError as exc:
            api.remove_container(created["Id"], force=True, v=True)
            raise BackendUnavailable(
                f"{role} from {image} would not start ({_first_line(exc)}); "
                "a builder image needs `sleep` and `sh` (busybox or coreutils)") from exc
    return str(created["Id"])


def remove_container(client: docker.DockerClient, container_id: str) -> None:
    """Kill and remove, anonymous volumes too; already gone is fine."""
    import docker

    try:
        client.api.remove_container(container_id, force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if "already in progress" not in str(exc):
            raise


def _drain(stream: Iterable[tuple[Optional[bytes], Optional[bytes]]], out: list[bytes], err: list[bytes]) -> None:
    for chunk_out, chunk_err in stream:
        if chunk_out:
            out.append(chunk_out)
        if chunk_err:
            err.append(chunk_err)


def _text(chunks: list[bytes]) -> str:
    return b"".join(chunks).decode("utf-8", errors="replace")


def _first_line(exc: Any) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).splitlines()[0][:200]
