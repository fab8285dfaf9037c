"""`dind`: a builder holding the Docker socket, whose sibling containers share its workspace.

Not Docker-in-Docker with a nested daemon (that needs --privileged): the
builder talks to the same engine, so the children it starts are its siblings.
A sibling mounts the workspace by its *host* path, which the builder learns
from HOST_PATH_SRC (and mounts at HOST_PATH_DST, the same /work everywhere).
The manager is the container kind's, making DindEnv builders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional
from collections.abc import Mapping
from urllib.parse import urlparse

from ..engine.containers import Mount
from ..errors import BackendUnavailable
from ..handle import Command
from ..registry import Check, KindSpec, Services
from .container import Builders, ContainerEnv, ContainerSettings, engine_check, engine_leftovers

DEFAULT_SOCKET = "/var/run/docker.sock"


def docker_socket() -> Path:
    """The engine's unix socket on this machine, as DOCKER_HOST names it."""
    host = os.environ.get("DOCKER_HOST", f"unix://{DEFAULT_SOCKET}")
    parsed = urlparse(host)
    if parsed.scheme != "unix":
        raise BackendUnavailable(f"dind needs a unix-socket Docker engine, DOCKER_HOST is {host}; "
                                 "point DOCKER_HOST at a local socket")
    return Path(parsed.path)


class DindEnv(ContainerEnv):
    kind = "dind"
    _siblings: list[ContainerEnv]

    def start(self) -> DindEnv:
        """Start with the engine's socket mounted and its group added, so a non-root builder may use it."""
        if not self.id:
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


def check(defaults: Mapping[str, Any]) -> Check:
    engine = engine_check(defaults)
    if not engine.ok:
        return engine
    try:
        sock = docker_socket()
    except BackendUnavailable as exc:
        return Check(False, str(exc).split(";")[0], "point DOCKER_HOST at a local unix socket")
    return Check(True, f"socket {sock} (group id {sock.stat().st_gid}) is mounted into dind builders only, "
                       "with that group added")


def _manager(services: Services) -> Builders:
    return Builders(services, DindEnv)


KIND = KindSpec(settings=ContainerSettings, manager=_manager, check=check, leftovers=engine_leftovers)
