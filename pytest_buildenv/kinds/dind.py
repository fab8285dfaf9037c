"""`dind`: a builder holding the Docker socket, whose sibling containers share its workspace.

Not Docker-in-Docker with a nested daemon (that needs --privileged): the
builder talks to the same engine, so the children it starts are its siblings.
A sibling mounts the workspace by its *host* path, which the builder learns
from HOST_PATH_SRC (and mounts at HOST_PATH_DST, the same /work everywhere).
The manager is the container kind's, making DindEnv builders.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional
from collections.abc import Mapping

from ..engine import where
from ..engine.containers import Mount
from ..errors import BackendUnavailable
from ..handle import Command
from ..registry import Check, KindSpec, Services
from .container import Builders, ContainerEnv, ContainerSettings, engine_check, engine_header, engine_leftovers

if TYPE_CHECKING:
    import docker

DEFAULT_SOCKET = "/var/run/docker.sock"


def docker_socket() -> Path:
    """The engine's unix socket on this machine (Docker's, or rootful Podman's, which speaks the same API)."""
    from ..engine.endpoint import current

    endpoint = current()
    if endpoint.socket is None:
        raise BackendUnavailable(f"dind mounts the engine's socket into the builder, and the engine at {endpoint.url} "
                                 f"(from {endpoint.source}) has none on this machine; use a local engine's socket "
                                 "(--buildenv-engine unix:///...)")
    return endpoint.socket


class DindEnv(ContainerEnv):
    kind = "dind"
    _siblings: list[ContainerEnv]

    def start(self) -> DindEnv:
        """Start with the engine's socket mounted and its group added, so a non-root builder may use it."""
        if not self.id:
            if self.copy_workspace:
                raise BackendUnavailable(f"dind: the engine at {where()} cannot see this machine's files, and the "
                                         "siblings a dind builder starts mount the workspace by its path; "
                                         "use a local engine for dind")
            refuse_rootless(self.client)
            socket = docker_socket()
            self.extra_mounts.append(Mount(self._to_host(socket), DEFAULT_SOCKET))
            self.group_add.append(socket.stat().st_gid)
            self._siblings = []
            self.host_path_src = self._to_host(self.workspace)
            self.environment.setdefault("HOST_PATH_SRC", self.host_path_src)
            self.environment.setdefault("HOST_PATH_DST", str(self.workdir))
        super().start()
        return self

    def __enter__(self) -> DindEnv:
        return self.start()

    def sibling(self, image: str, cmd: Optional[Command] = None, **opts: Any) -> ContainerEnv:
        """A container on the same engine seeing the same workspace at the same workdir.

        With `cmd`, it is run once (check=True) before the handle is returned,
        like `docker run IMAGE CMD`. Torn down with this environment.
        """
        sibling = ContainerEnv(self.client, image, self.workspace, self.owner, test=f"{self.name}-sibling",
                               user=self.user, to_host=self._to_host, **opts)
        self._siblings.append(sibling.start())
        if cmd is not None:
            sibling.run(cmd, check=True)
        return sibling

    def close(self) -> None:
        for sibling in getattr(self, "_siblings", ()):
            sibling.close()
        super().close()


def refuse_rootless(client: docker.DockerClient) -> None:
    from ..engine.endpoint import describe

    engine = describe(client)
    if engine.rootless:
        raise BackendUnavailable(f"dind on {engine} at {where()}: the containers a builder starts with `docker run` "
                                 "get the engine's user namespace, not the builder's, and cannot write the workspace; "
                                 "use a rootful engine for dind (Docker, or rootful Podman's socket)")


def check(defaults: Mapping[str, Any]) -> Check:
    from ..engine import connect

    engine = engine_check(defaults)
    if not engine.ok:
        return engine
    try:
        refuse_rootless(connect(timeout=10))
        sock = docker_socket()
    except BackendUnavailable as exc:
        detail, _, fix = str(exc).partition("; ")
        return Check(False, detail, fix)
    return Check(True, f"socket {sock} (group id {sock.stat().st_gid}) is mounted into dind builders only, "
                       "with that group added")


def _manager(services: Services) -> Builders:
    return Builders(services, DindEnv)


KIND = KindSpec(settings=ContainerSettings, manager=_manager, check=check, leftovers=engine_leftovers,
                header=engine_header)
