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

from ..errors import ConfigError

if TYPE_CHECKING:
    import docker

_CONTAINER_ID = re.compile(r"(?:/containers/|/docker/|docker-)([0-9a-f]{64})")


@dataclass(frozen=True)
class PathMapping:
    inside: PurePosixPath  # where pytest sees the directory
    host: PurePosixPath  # where the daemon finds it


class HostPaths:
    """Maps paths as pytest sees them to paths as the Docker daemon sees them."""

    def __init__(self, mappings: Optional[list[PathMapping]] = None, source: str = "") -> None:
        # Longest first, so the most specific mount wins.
        self.mappings = sorted(mappings or [], key=lambda m: len(m.inside.parts), reverse=True)
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


# Files Docker bind-mounts into every container from /var/lib/docker/containers/<id>/.
_OWN_MOUNT_POINTS = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")


def container_id_in(mountinfo: str, cgroup: str) -> Optional[str]:
    """The container id that our /proc/self/mountinfo (or cgroup v1) names, if we run in one.

    Only the mounts at /etc/hostname and friends count: on the host, mountinfo
    also shows, while dockerd sets them up, other containers' mounts (under
    their overlay directories), and those must not make us think we are them.
    """
    for line in mountinfo.splitlines():
        fields = line.split()  # 3: root within the source filesystem, 4: mount point
        if len(fields) > 4 and fields[4] in _OWN_MOUNT_POINTS:
            match = _CONTAINER_ID.search(fields[3])
            if match:
                return match.group(1)
    match = _CONTAINER_ID.search(cgroup)
    return match.group(1) if match else None


def own_container_id() -> Optional[str]:
    """Our container's id if we run in one, else None."""
    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    return container_id_in(read("/proc/self/mountinfo"), read("/proc/self/cgroup"))


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
        return HostPaths(mappings, source=f"container {attrs['Name'].lstrip('/')}")
    return HostPaths()
