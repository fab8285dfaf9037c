"""`dind`: a builder holding the Docker socket, whose sibling containers share its workspace.

Not Docker-in-Docker with a nested daemon (that needs --privileged): the
builder talks to the same engine, so the children it starts are its siblings.
A sibling mounts the workspace by its *host* path, which the builder learns
from HOST_PATH_SRC (and mounts at HOST_PATH_DST, the same /work everywhere).
The builder and its manager are engine/'s, as for `container`; this kind extends the spec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..engine import connect, endpoint_of, where
from ..engine.builder import Builder, BuilderSpec, ContainerSettings
from ..engine.builders import Builders, engine_check, engine_header, engine_leftovers
from ..engine.containers import Mount
from ..engine.endpoint import Endpoint, describe
from ..errors import BackendUnavailable, Check
from ..handle import Command
from ..registry import KindSpec
from ..services import Services

if TYPE_CHECKING:
    import docker

DEFAULT_SOCKET = "/var/run/docker.sock"


def docker_socket(endpoint: Endpoint) -> Path:
    """The engine's unix socket on this machine (Docker's, or rootful Podman's, which speaks the same API)."""
    if endpoint.socket is None:
        raise BackendUnavailable(f"dind mounts the engine's socket into the builder, and the engine at {endpoint.url} "
                                 f"(from {endpoint.source}) has none on this machine",
                                 "use a local engine's socket (--buildenv-engine unix:///...)")
    return endpoint.socket


class DindEnv(Builder):
    kind = "dind"
    _siblings: list[Builder]

    def start(self) -> DindEnv:
        """Start with the engine's socket mounted and its group added, so a non-root builder may use it."""
        if not self.id:
            if self.copy_workspace:
                raise BackendUnavailable(f"dind: the engine at {where(self.client)} cannot see this machine's files, "
                                         "and the siblings a dind builder starts mount the workspace by its path",
                                         "use a local engine for dind")
            refuse_rootless(self.client)
            socket = docker_socket(endpoint_of(self.client))
            self._siblings = []
            self.host_path_src = self._to_host(self.workspace)
            self.environment.setdefault("HOST_PATH_SRC", self.host_path_src)
            self.environment.setdefault("HOST_PATH_DST", str(self.workdir))
            self.spec = dataclasses.replace(
                self.spec, mounts=(*self.spec.mounts, Mount(self._to_host(socket), DEFAULT_SOCKET)),
                group_add=(*self.spec.group_add, socket.stat().st_gid))
        super().start()
        return self

    def __enter__(self) -> DindEnv:
        return self.start()

    def sibling(self, image: str, cmd: Optional[Command] = None, **opts: Any) -> Builder:
        """A container on the same engine seeing the same workspace at the same workdir.

        With `cmd`, it is run once (check=True) before the handle is returned,
        like `docker run IMAGE CMD`. `opts` are BuilderSpec fields (network=, environment=, ...).
        Torn down with this environment.
        """
        sibling = Builder(self.client, BuilderSpec(image, **opts), self.workspace, self.owner,
                          test=f"{self.name}-sibling", user=self.user, to_host=self._to_host)
        self._siblings.append(sibling.start())
        if cmd is not None:
            sibling.run(cmd, check=True)
        return sibling

    def close(self) -> None:
        for sibling in getattr(self, "_siblings", ()):
            sibling.close()
        super().close()


def refuse_rootless(client: docker.DockerClient) -> None:
    engine = describe(client)
    if engine.rootless:
        raise BackendUnavailable(f"dind on {engine} at {where(client)}: the containers a builder starts with "
                                 "`docker run` get the engine's user namespace, not the builder's, and cannot write "
                                 "the workspace", "use a rootful engine for dind (Docker, or rootful Podman's socket)")


def check(services: Services, defaults: Mapping[str, Any]) -> Check:
    engine = engine_check(services, defaults)
    if not engine.ok:
        return engine
    try:
        refuse_rootless(connect(services.endpoint, timeout=10))
        sock = docker_socket(services.endpoint)
    except BackendUnavailable as exc:
        return Check.failed(exc)
    return Check(True, f"socket {sock} (group id {sock.stat().st_gid}) is mounted into dind builders only, "
                       "with that group added")


def _manager(services: Services) -> Builders:
    return Builders(services.engine, DindEnv)


KIND = KindSpec(settings=ContainerSettings, manager=_manager, check=check, leftovers=engine_leftovers,
                header=engine_header)
