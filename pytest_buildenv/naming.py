"""Who owns a resource, and what it is called.

Every container, network, volume, image, cluster and VM this plugin creates
carries the labels below and a unique name, so that concurrent sessions and
xdist workers never collide and the reaper can tell whose a resource is.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from . import __version__

PREFIX = "pytest-buildenv"
LABEL_SESSION = f"{PREFIX}.session"
LABEL_PID = f"{PREFIX}.pid"
LABEL_HOST = f"{PREFIX}.host"
LABEL_CREATED = f"{PREFIX}.created"
LABEL_VERSION = f"{PREFIX}.version"
LABEL_KEEP = f"{PREFIX}.keep"
LABEL_KIND = f"{PREFIX}.kind"
LABEL_TEST = f"{PREFIX}.test"
LABEL_CACHE = f"{PREFIX}.cache"  # a provisioned snapshot, kept across sessions (content key)
LABEL_REUSE = f"{PREFIX}.reuse"  # kept across sessions (ini buildenv_reuse): the key of what made it
LABEL_EXPIRES = f"{PREFIX}.expires"  # ... until then (epoch seconds), when reap removes it unclaimed
LABEL_CLUSTER = f"{PREFIX}.cluster"  # on the volume that shadows a KIND cluster we created
KIND_CLUSTER_LABEL = "io.x-k8s.kind.cluster"  # kind's own label on its node containers

# Names shared by Docker containers, images, networks and KIND clusters must
# satisfy the strictest of them: kind wants ^[a-z0-9.-]+$.
_NOT_NAME = re.compile(r"[^a-z0-9.-]+")


def new_session_id() -> str:
    return secrets.token_hex(4)


def slug(text: str, limit: int = 24) -> str:
    """A lowercase fragment of `text` that is legal in every name we make."""
    cleaned = _NOT_NAME.sub("-", text.lower()).strip("-.")
    return cleaned[:limit].strip("-.") or "x"


@dataclass(frozen=True)
class Owner:
    """The process that owns (and must tear down) a resource."""

    session: str
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    keep: bool = False

    def labels(self, kind: str, test: str = "") -> dict[str, str]:
        labels = {
            LABEL_SESSION: self.session,
            LABEL_PID: str(self.pid),
            LABEL_HOST: self.host,
            LABEL_CREATED: str(int(time.time())),
            LABEL_VERSION: __version__,
            LABEL_KIND: kind,
        }
        if self.keep:
            labels[LABEL_KEEP] = "true"
        if test:
            labels[LABEL_TEST] = test[:200]
        return labels

    def name(self, kind: str, hint: str = "") -> str:
        """A unique name: session and a random suffix make collisions impossible in practice."""
        parts = ["buildenv", self.session, kind]
        if hint:
            parts.append(slug(hint))
        parts.append(secrets.token_hex(3))
        return "-".join(parts)


def session_filter(session: str) -> dict[str, list[str]]:
    """Docker API filter selecting every resource of one session."""
    return {"label": [f"{LABEL_SESSION}={session}"]}


ANY_OWNED = {"label": [LABEL_SESSION]}


@dataclass(frozen=True)
class Labelled:
    """A resource carrying our labels, as a kind's finder reports it to the reaper: how to remove it too."""

    resource: str  # "container", "volume", "cluster", "state", ...
    ident: str
    name: str
    labels: dict[str, str]
    remove: Callable[[], object]  # what it returns is not looked at
