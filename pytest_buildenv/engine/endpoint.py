"""Which engine, and what it is: Docker or Podman, rootful or rootless, and so whom a builder runs as.

The engine is, first to last: --buildenv-engine (or ini buildenv_engine), DOCKER_HOST, the Docker
CLI's current context (colima and Docker Desktop users have no DOCKER_HOST), the default socket.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..errors import BackendUnavailable

if TYPE_CHECKING:
    import docker

DEFAULT_URL = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class Endpoint:
    url: str
    source: str  # what chose it, for messages: "--buildenv-engine", "DOCKER_HOST", "docker context colima", ...

    @property
    def socket(self) -> Optional[Path]:
        """The unix socket on this machine, or None for tcp:// and ssh:// engines."""
        return Path(self.url[len("unix://"):]) if self.url.startswith("unix://") else None

    @property
    def default(self) -> bool:
        return self.url == DEFAULT_URL and self.source == "the default socket"

    @property
    def cli_environment(self) -> dict[str, str]:
        """What makes the Docker CLI (ours in a printed command, kind's) use this engine."""
        return {} if self.default else {"DOCKER_HOST": self.url}


def resolve(url: Optional[str] = None, source: str = "--buildenv-engine") -> Endpoint:
    """The engine a session uses: `url` named by `source` (an option, an ini value) if given, else
    DOCKER_HOST, the current context, the default socket. Resolved once, when the session starts."""
    if url:
        return Endpoint(_as_url(url), source)
    if os.environ.get("DOCKER_HOST"):
        return Endpoint(os.environ["DOCKER_HOST"], "DOCKER_HOST")
    return _from_context() or Endpoint(DEFAULT_URL, "the default socket")


def _as_url(text: str) -> str:
    return f"unix://{text}" if text.startswith("/") else text  # a bare socket path, as podman prints it


def _from_context() -> Optional[Endpoint]:
    """The Docker CLI's current context (DOCKER_CONTEXT, else config.json's currentContext) and its endpoint."""
    config_dir = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    name = os.environ.get("DOCKER_CONTEXT")
    if not name:
        try:
            name = json.loads((config_dir / "config.json").read_text()).get("currentContext")
        except (OSError, ValueError, AttributeError):
            return None
    if not name or name == "default":
        return None
    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest() / "meta.json"
    try:
        host = json.loads(meta.read_text())["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackendUnavailable(f"the Docker context {name!r} (current in {config_dir}) has no readable endpoint "
                                 f"({type(exc).__name__} reading {meta})",
                                 "`docker context use default`, or set --buildenv-engine / DOCKER_HOST") from None
    return Endpoint(str(host), f"docker context {name}")


@dataclass(frozen=True)
class EngineInfo:
    """What the engine is: it decides whom a builder runs as (see run_as)."""

    product: str  # "Docker" or "Podman"
    version: str
    api: str
    rootless: bool

    def __str__(self) -> str:
        return f"{self.product} {self.version}{' rootless' if self.rootless else ''} (API {self.api})"


_described: weakref.WeakKeyDictionary[Any, EngineInfo] = weakref.WeakKeyDictionary()


def describe(client: docker.DockerClient) -> EngineInfo:
    """Asked once per client: /version names the product; rootless is in /info's security options
    for Docker, and in Podman's own /libpod/info (its compatible /info does not say)."""
    if client not in _described:
        version = client.version()
        podman = any(str(c.get("Name", "")).startswith("Podman") for c in version.get("Components") or [])
        if podman:
            response = client.api.get(client.api.base_url + "/v4.0.0/libpod/info", timeout=10)
            rootless = bool(response.ok and response.json().get("host", {}).get("security", {}).get("rootless"))
        else:
            rootless = any("rootless" in option for option in client.info().get("SecurityOptions") or [])
        _described[client] = EngineInfo("Podman" if podman else "Docker", str(version.get("Version")),
                                         str(version.get("ApiVersion")), rootless)
    return _described[client]


@dataclass(frozen=True)
class RunAs:
    """Whom a container runs as, so that what it writes in a bind mount is the invoking user's on the host."""

    user: str  # the container's user, "uid:gid"
    extra_groups: bool  # whether the user's other groups can be added (they exist in the container's id space)
    userns: Optional[str] = None  # the container's user namespace mode

    def groups_said(self) -> str:
        """What the session header says of a builder's groups where they are not all of the user's."""
        if self.userns == "keep-id":
            # Measured on Podman 4.3.1: its API takes GroupAdd "keep-groups" for a group's name ("Unable to
            # find group keep-groups") and drops HostConfig.Annotations; the CLI alone turns it into crun's
            # run.oci.keep_original_groups annotation, and refuses it in remote mode.
            return ("builders have only your primary group: a rootless user namespace holds your own ids "
                    "alone, and Podman's keep-groups is its CLI's (its API does not take it)")
        if not self.extra_groups:
            return "builders have none of your other groups: a rootless user namespace holds your own ids alone"
        return ""


def run_as(info: EngineInfo, uid: int, gid: int) -> RunAs:
    if info.rootless and info.product == "Podman":
        # keep-id maps the user's own id to itself; the namespace has no other of the user's groups.
        return RunAs(f"{uid}:{gid}", extra_groups=False, userns="keep-id")
    if info.rootless:
        return RunAs("0:0", extra_groups=False)  # rootless Docker: root in the container is the user outside
    return RunAs(f"{uid}:{gid}", extra_groups=True)
