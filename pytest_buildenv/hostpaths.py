"""Host-path translation for when pytest itself runs in a container holding the socket.

A bind mount's source is resolved by the *daemon*, on the host. When pytest
runs inside a CI runner container (GitLab, Jenkins) that talks to the host's
engine, a workspace at /builds/x inside the runner is somewhere else on the
host; we find out where by reading our own container's mounts through the API.
HOST_PATH_SRC / HOST_PATH_DST in the environment override the lookup.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Optional

from .errors import ConfigError

if TYPE_CHECKING:
    import docker

_CONTAINER_ID = re.compile(r"(?:/containers/|/docker/|docker-)([0-9a-f]{64})")


@dataclass(frozen=True)
class PathMapping:
    inside: PurePosixPath  # where pytest sees the directory
    host: PurePosixPath  # where the daemon finds it


class HostPaths:
    """Maps paths as pytest sees them to paths as the Docker daemon sees them."""

    def __init__(self, mappings: Optional[list[PathMapping]] = None, container: str = "",
                 source: str = "") -> None:
        # Longest first, so the most specific mount wins.
        self.mappings = sorted(mappings or [], key=lambda m: len(m.inside.parts), reverse=True)
        self.container = container
        self.source = source
        self.identity = mappings is None

    def to_host(self, path: Path) -> str:
        if self.identity:
            return str(path)
        resolved = PurePosixPath(os.path.realpath(path))
        for mapping in self.mappings:
            try:
                return str(mapping.host / resolved.relative_to(mapping.inside))
            except ValueError:
                continue
        mounted = ", ".join(str(m.inside) for m in self.mappings) or "none"
        raise ConfigError(
            f"{path} is not on any bind mount of {self.source} (mounted: {mounted}); the engine cannot see it, "
            f"so keep workspaces on a mounted directory, e.g. --basetemp={self._suggestion()}")

    def _suggestion(self) -> str:
        for mapping in self.mappings:
            if str(mapping.inside) not in ("/var/run/docker.sock", "/run/docker.sock"):
                return f"{mapping.inside}/.pytest-tmp"
        return "<a directory bind-mounted into this container>"


def own_container_id() -> Optional[str]:
    """Our container's id if we run in one: mountinfo names it, cgroup v1 too; else None."""
    for proc_file in ("/proc/self/mountinfo", "/proc/self/cgroup"):
        try:
            match = _CONTAINER_ID.search(Path(proc_file).read_text())
        except OSError:
            continue
        if match:
            return match.group(1)
    return None


def detect(client: docker.DockerClient) -> HostPaths:
    """The translation in force: env override, else our own container's mounts, else none."""
    src, dst = os.environ.get("HOST_PATH_SRC"), os.environ.get("HOST_PATH_DST")
    if src and dst:
        return HostPaths([PathMapping(PurePosixPath(dst), PurePosixPath(src))], source="HOST_PATH_SRC/HOST_PATH_DST")
    import docker as sdk

    hostname = socket.gethostname()
    # Docker's default hostname is the short id; only then is the hostname worth asking about.
    candidates = [own_container_id(), hostname if re.fullmatch(r"[0-9a-f]{12}", hostname) else None]
    for ident in filter(None, candidates):
        try:
            attrs = client.api.inspect_container(ident)
        except (sdk.errors.NotFound, sdk.errors.APIError):
            continue
        if ident == hostname and attrs["Config"].get("Hostname") != hostname:
            continue
        mappings = [PathMapping(PurePosixPath(m["Destination"]), PurePosixPath(m["Source"]))
                    for m in attrs.get("Mounts", []) if m.get("Type") in ("bind", "volume") and m.get("Source")]
        return HostPaths(mappings, container=attrs["Id"], source=f"container {attrs['Name'].lstrip('/')}")
    return HostPaths()
