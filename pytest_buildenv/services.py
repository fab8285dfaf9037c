"""What a session's managers share, typed: owners, shared state, progress, ini values, kinds' defaults, and the
container engine (engine/shared.py) that container, dind and kind all use. One per process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional

from .engine.endpoint import Endpoint, resolve
from .engine.shared import Engine, EngineSettings
from .naming import Owner
from .reuse import ReuseSettings
from .sharing import SharedState


class Services:
    def __init__(self, owner: Owner, session_owner: Optional[Owner] = None, shared: Optional[SharedState] = None,
                 progress: Optional[Callable[[str], None]] = None, ini: Optional[Mapping[str, Any]] = None,
                 endpoint: Optional[Endpoint] = None, defaults: Optional[Mapping[str, Mapping[str, Any]]] = None) -> None:
        self.owner = owner
        self.session_owner = session_owner or owner  # shared resources belong to the process that outlives workers
        self._shared = shared
        self.progress: Callable[[str], None] = progress or (lambda line: None)
        self.ini: dict[str, Any] = dict(ini or {})  # a kind's process-wide ini values (Entry.ini), as pytest gives them
        # Each kind's defaults (ini values and options, the weakest settings layer): what a kind's header and
        # finder need to know without a test (the pod kind's cluster, say).
        self.defaults: dict[str, Mapping[str, Any]] = dict(defaults or {})
        self.reuse = ReuseSettings.from_ini(self.ini)  # which kinds keep their environments for later sessions
        self.notices: list[str] = []  # what the session summary must say (e.g. a privileged builder)
        self.endpoint = endpoint or resolve()  # the engine, chosen once: --buildenv-engine, ini, DOCKER_HOST, ...
        # Cheap: the engine is connected to when a builder (or a cluster) first needs it.
        self.engine = Engine(self.endpoint, self.owner, self.session_owner, lambda: self.shared, self.progress,
                             self.notices, EngineSettings.from_ini(self.ini))

    @property
    def shared(self) -> SharedState:
        if self._shared is None:
            self._shared = SharedState(self.owner.session, labels=self.session_owner.labels("state"))
        return self._shared
