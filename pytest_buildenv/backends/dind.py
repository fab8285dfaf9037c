"""`dind`: a builder holding the Docker socket, whose sibling containers share its workspace.

Not Docker-in-Docker with a nested daemon (that needs --privileged): the
builder talks to the same engine, so the children it starts are its siblings.
A sibling mounts the workspace by its *host* path, which the builder learns
from HOST_PATH_SRC (and mounts at HOST_PATH_DST, the same /work everywhere).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from ..errors import BackendUnavailable
from .container import ContainerEnv, Mount

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        socket = docker_socket()
        to_host = kwargs.get("to_host", str)
        kwargs["mounts"] = [*kwargs.get("mounts", ()), Mount(to_host(socket), DEFAULT_SOCKET)]
        # The socket's group, so that a non-root builder may use it.
        kwargs["group_add"] = [*kwargs.get("group_add", ()), socket.stat().st_gid]
        self._siblings: list[ContainerEnv] = []
        super().__init__(*args, **kwargs)
        self.host_path_src = to_host(self.workspace)
        self.environment.setdefault("HOST_PATH_SRC", self.host_path_src)
        self.environment.setdefault("HOST_PATH_DST", str(self.workdir))

    def sibling(self, image: str, cmd: Optional[Any] = None, **opts: Any) -> ContainerEnv:
        """A container on the same engine seeing the same workspace at the same workdir.

        With `cmd`, it is run once (check=True) before the handle is returned,
        like `docker run IMAGE CMD`. Torn down with this environment.
        """
        sibling = ContainerEnv(self.client, image, self.workspace, self.owner, test=f"{self.name}-sibling",
                               user=self.user, to_host=self._to_host, **opts)
        self._siblings.append(sibling)
        if cmd is not None:
            sibling.run(cmd, check=True)
        return sibling

    def close(self) -> None:
        for sibling in self._siblings:
            sibling.close()
        super().close()
