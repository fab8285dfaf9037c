"""What every kind on the container engine shares in one process: one typed object, made once per
session (by services.py), each part made on first use and cheap until then.

The chosen engine (its Endpoint) is a field here, resolved when the session starts; container,
dind and kind reach the client, images, host paths, network holders and spares through it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, TypeVar

from ..errors import ConfigError
from ..naming import Owner
from ..sharing import SharedState
from . import connect, where
from .containers import InvokingUser
from .copied import engine_sees
from .endpoint import Endpoint, describe
from .hostpaths import HostPaths, detect
from .images import ImageBuilder
from .netns import SharedNetworks
from .spares import SparePool

if TYPE_CHECKING:
    import docker

T = TypeVar("T")


@dataclass(frozen=True)
class EngineSettings:
    """The ini values of builders on the engine, checked when settings load."""

    wait: float = 60.0  # ini buildenv_engine_wait: seconds to wait for an engine that went away
    spares: int = 2  # ini buildenv_spares: builders pre-started per settings
    share_network: bool = True  # ini buildenv_share_network

    @classmethod
    def from_ini(cls, ini: dict[str, object]) -> EngineSettings:
        return cls(wait=_number(ini, "buildenv_engine_wait", float, cls.wait),
                   spares=_number(ini, "buildenv_spares", int, cls.spares),
                   share_network=bool(ini.get("buildenv_share_network", cls.share_network)))


def _number(ini: dict[str, object], name: str, kind: Callable[[str], T], default: T) -> T:
    value = ini.get(name)
    if value in (None, ""):
        return default
    try:
        return kind(str(value).strip())
    except ValueError:
        raise ConfigError(f"ini {name}={value!r} is not valid; {name} takes a number") from None


class Engine:
    """The session's container engine and what builders on it share."""

    def __init__(self, endpoint: Endpoint, owner: Owner, session_owner: Owner, shared: Callable[[], SharedState],
                 progress: Callable[[str], None], notices: list[str],
                 settings: Optional[EngineSettings] = None) -> None:
        self.endpoint = endpoint
        self.owner = owner
        self.session_owner = session_owner  # session images belong to the process that outlives every worker
        self.settings = settings or EngineSettings()
        self._shared = shared
        self.progress = progress
        self.notices = notices
        self._lock = threading.RLock()  # reentrant: making the images asks for the client
        self._client: Optional[docker.DockerClient] = None
        self._images: Optional[ImageBuilder] = None
        self._host_paths: Optional[HostPaths] = None
        self.made_networks: Optional[SharedNetworks] = None  # None until a builder asked: nothing to close
        self.made_spares: Optional[SparePool] = None
        self._sees: Optional[bool] = None

    @property
    def client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                self._client = connect(self.endpoint)
            return self._client

    @property
    def images(self) -> ImageBuilder:
        with self._lock:
            if self._images is None:
                self._images = ImageBuilder(self.client, self.session_owner, self._shared(), self.progress,
                                            self.endpoint)
            return self._images

    @property
    def host_paths(self) -> HostPaths:
        with self._lock:
            if self._host_paths is None:
                self._host_paths = detect(self.client)
            return self._host_paths

    @property
    def networks(self) -> SharedNetworks:
        """Holders of shared network namespaces. Off with --buildenv-keep (a kept builder keeps its network
        after the session) and on rootless engines (each builder has a user namespace of its own, and
        cannot mount /sys in another's network)."""
        with self._lock:
            if self.made_networks is None:
                enabled = self.settings.share_network and not self.owner.keep and not describe(self.client).rootless
                self.made_networks = SharedNetworks(self.client, self.owner, InvokingUser(), enabled=enabled)
            return self.made_networks

    def spares(self, scratch: Optional[Path]) -> Optional[SparePool]:
        """The pool of pre-started builders, under basetemp (`scratch`: on a bind mount when pytest runs in
        a runner container); None when spares are off."""
        if self.settings.spares <= 0 or scratch is None:
            return None
        with self._lock:
            if self.made_spares is None:
                self.made_spares = SparePool(scratch / "buildenv-workspaces", depth=self.settings.spares)
            return self.made_spares

    def sees_workspaces(self, workspace: Path, image: str) -> bool:
        """Whether the engine sees this machine's workspaces, asked once per process (engine/copied.py)."""
        with self._lock:
            if self._sees is None:
                self._sees = engine_sees(self.client, workspace.parent, image, self.owner.labels("probe"),
                                         self.host_paths.to_host)
                if not self._sees:
                    self.notices.append(f"the engine at {where(self.client)} cannot see this machine's files: "
                                         "workspaces were copied in and out of builders (workspace: copy)")
            return self._sees
