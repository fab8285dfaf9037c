"""Containers on the engine, as every kind that makes them needs them: who they run as,
what they mount, a start under the security defaults, and removal off the critical path."""

from __future__ import annotations

import contextlib
import os
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Optional
from collections.abc import Iterable, Mapping

from filelock import FileLock

from ..errors import BackendUnavailable, BuildEnvError
from ..sharing import state_root
from . import daemon_errors, where
from .endpoint import describe, run_as

if TYPE_CHECKING:
    import docker


@dataclass(frozen=True)
class Mount:
    source: str  # as the Docker daemon sees it (host path), or a volume's name
    target: str
    read_only: bool = False
    type: Literal["bind", "volume"] = "bind"


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
                         group_add: Iterable[str] = (), setuid: bool = False,
                         host: Optional[Mapping[str, Any]] = None, platform: Optional[str] = None, **create: Any) -> str:
    """Create and start a container idling on `sleep infinity`, under our security defaults:
    never privileged, no-new-privileges, and an init that reaps what timed-out commands leave
    (so `ps` in a test stays truthful). `role` names it in errors; `create` goes to create_container.

    `setuid=True` is the one exception, for provisioning a snapshot: its steps install packages,
    and package tools may switch users through setuid helpers (su, sudo), which no-new-privileges stops.
    `host` adds host-config options: limits, and what a user put in docker_options (checked before).
    `platform` ("linux/arm64") picks the image's platform; the engine checks the image is for it.
    The engine decides the rest (endpoint.run_as): its user namespace mode (keep-id on rootless Podman),
    and whether the user's other groups exist in its id space."""
    import docker

    api = client.api
    extra = dict(host or {})
    policy = run_as(describe(client), 0, 0)
    if not policy.extra_groups:
        group_add = ()
    host_config = api.create_host_config(
        mounts=[docker.types.Mount(m.target, m.source, type=m.type, read_only=m.read_only) for m in mounts],
        group_add=list(group_add),
        network_mode=network,
        security_opt=([] if setuid else ["no-new-privileges"]) + list(extra.pop("security_opt", [])),
        privileged=bool(extra.pop("privileged", False)),  # only ever from docker_options, by name
        init=True,
        **extra,
    )
    if policy.userns:
        host_config["UsernsMode"] = policy.userns  # the SDK's HostConfig takes only "host"; the engine takes more
    with daemon_errors(f"starting a {role} from {image}", client):
        try:
            with _one_keep_id_create_at_a_time(policy.userns):
                created = api.create_container(image, entrypoint=["sleep"], command=["infinity"], name=name,
                                               user=user, labels=labels, host_config=host_config, detach=True,
                                               platform=platform, **create)
        except docker.errors.APIError as exc:
            raise _refused(exc, client, role, image, "create") from exc
        try:
            api.start(created["Id"])
        except docker.errors.APIError as exc:
            api.remove_container(created["Id"], force=True, v=True)
            raise _refused(exc, client, role, image, "start") from exc
    return str(created["Id"])


def _one_keep_id_create_at_a_time(userns: Optional[str]) -> contextlib.AbstractContextManager[object]:
    """Rootless Podman's service crashes (SIGSEGV in libsubid's subid_get_gid_ranges, which is not
    thread-safe: containers/storage#2030) when it makes two keep-id containers at once: seen here with
    Podman 4.3 and two xdist workers. This user's processes create them one at a time (~0.1 s each)."""
    if userns != "keep-id":
        return contextlib.nullcontext()
    return FileLock(str(state_root() / "keep-id-create.lock"))


def refuses_host_paths(words: str) -> bool:
    """The engine's words for a bind mount of a path it does not have (Docker, Podman, Docker Desktop)."""
    return bool(re.search(r"bind source path does not exist|not shared from the host|mounts denied|"
                          r"statfs .*: no such file or directory", words, re.IGNORECASE))


def _refused(exc: Any, client: docker.DockerClient, role: str, image: str, step: str) -> BuildEnvError:
    """The engine's own words first, then the remedy for what they name."""
    import docker

    engine = where(client)
    words = _first_line(exc)
    if isinstance(exc, docker.errors.ImageNotFound) and step == "create" and "image" in words.lower():
        return BackendUnavailable(f"{role}: the engine at {engine} has no image {image} ({words})",
                                  "build or pull it on that engine (docker -H ... load)")
    if refuses_host_paths(words):
        return BackendUnavailable(f"{role} from {image}: the engine at {engine} cannot see this machine's files "
                                  f"({words})", "leave the setting workspace unset or set it to copy, "
                                  "and keep bind mounts (docker_options mounts, ssh_agent) for a local engine")
    if re.search(r"\bsleep\b|executable file not found|exec format error", words):
        remedy = "a builder image needs `sleep` and `sh` (busybox or coreutils)"
    elif "init binary" in words:
        remedy = "install the engine's init (catatonit for Podman, docker-init for Docker)"
    else:
        remedy = "the engine's words say what to fix; or name another engine with --buildenv-engine"
    return BackendUnavailable(f"{role} from {image} would not {step}: the engine at {engine} says: {words}", remedy)


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


def _first_line(exc: Any) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text).splitlines()[0][:300]
