"""The session's KIND clusters: one per distinct settings, shared by every xdist worker.

The first process that asks creates a cluster (under sharing.py's lock) and
records it; the others attach to the record. Only the session owner deletes
them, at the very end, after exporting their logs if the run failed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from .config import KindSettings
from .naming import Owner
from .sharing import SharedState

if TYPE_CHECKING:
    import docker

    from .backends.kind import KindCluster, KindEnv


class Clusters:
    def __init__(self, shared: SharedState, owner: Owner, session_owner: Owner, client: docker.DockerClient,
                 kind_bin: str = "kind", progress: Callable[[str], None] = lambda line: None) -> None:
        self.shared = shared
        self.owner = owner
        self.session_owner = session_owner  # clusters belong to the process that outlives every worker
        self.client = client
        self.kind_bin = kind_bin
        self.progress = progress
        self._clusters: dict[str, KindCluster] = {}

    def open(self, settings: KindSettings, workspace: Path) -> KindEnv:
        from .backends.kind import KindEnv

        return KindEnv(workspace, self.cluster_for(settings), environment=settings.environment,
                       timeout=settings.timeout)

    def cluster_for(self, settings: KindSettings) -> KindCluster:
        """The session's cluster for these settings: created by the first process that asks."""
        key = hashlib.sha256(json.dumps([settings.image, settings.config, settings.wait, settings.cluster],
                                        default=str).encode()).hexdigest()[:8]
        if key not in self._clusters:
            def create() -> dict[str, Any]:
                name = settings.cluster or f"buildenv-{self.owner.session}-{key[:6]}"
                self.progress(f"creating KIND cluster {name}" if not settings.cluster else f"reusing KIND cluster {name}")
                self._handle(name, reuse=bool(settings.cluster), settings=settings).create()
                return {"type": "kind", "name": name, "reuse": bool(settings.cluster)}

            record = self.shared.get_or_create(f"kind-{key}", create)
            self._clusters[key] = self._handle(record["name"], reuse=record["reuse"])
        return self._clusters[key]

    def teardown(self, export_logs_to: Optional[Path], kept: Optional[list[str]] = None) -> list[str]:
        """Session owner, at the end: export logs (if asked), then delete each cluster we made.

        With `kept` (--buildenv-keep), nothing is deleted: each cluster's line is added to it.
        """
        done = []
        for record in self.shared.records().values():
            if record.get("type") != "kind":
                continue
            cluster = self._handle(record["name"], reuse=record["reuse"])
            if export_logs_to is not None:
                cluster.export_logs(export_logs_to / f"kind-{cluster.name}")
            if kept is not None:
                kept.append(f"kind cluster {cluster.name}: KUBECONFIG={cluster.kubeconfig} "
                            f"(kind delete cluster --name {cluster.name})")
            elif not record["reuse"]:
                cluster.delete()
                done.append(cluster.name)
        return done

    def _handle(self, name: str, reuse: bool, settings: Optional[KindSettings] = None) -> KindCluster:
        """A handle on a session cluster; `settings` only matter to the process that creates it."""
        from .backends.kind import KindCluster

        options: dict[str, Any] = {}
        if settings is not None:
            options = {"image": settings.image, "config": settings.config, "wait": settings.wait}
        return KindCluster(name, self.shared.directory, kind_bin=self.kind_bin, reuse=reuse,
                           owner=self.session_owner, client=self.client, **options)
