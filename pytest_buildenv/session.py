"""One test session's environments: settings, creation, teardown, bookkeeping.

Works without pytest: the plugin hands it plain values (the selection text,
the config file, the marker's keyword arguments) and asks it for handles.
What each family of kinds shares across a session lives in its own module:
builders.py (container, dind), clusters.py (kind), goldens.py (vm).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from .backends import check_tooling
from .backends.base import BuildEnv
from .config import DOCKER_KINDS, ContainerSettings, KindSettings, Layer, Selection, Settings, VMSettings, merge
from .errors import ConfigError
from .naming import Owner
from .sharing import SharedState

if TYPE_CHECKING:
    import docker

    from .builders import Builders
    from .clusters import Clusters
    from .goldens import Goldens
    from .reaper import Finding
    from .spares import SparePool

Progress = Callable[[str], None]


@dataclass
class Stats:
    made: Counter[str] = field(default_factory=Counter)
    setup_seconds: float = 0.0
    teardown_seconds: float = 0.0
    kept: list[str] = field(default_factory=list)

    def add(self, other: Mapping[str, Any]) -> None:
        self.made.update(other.get("made", {}))
        self.setup_seconds += other.get("setup_seconds", 0.0)
        self.teardown_seconds += other.get("teardown_seconds", 0.0)
        self.kept.extend(other.get("kept", []))

    def as_dict(self) -> dict[str, Any]:
        return {"made": dict(self.made), "setup_seconds": self.setup_seconds,
                "teardown_seconds": self.teardown_seconds, "kept": list(self.kept)}


class BuildEnvSession:
    def __init__(self, selection: Selection, owner: Owner, *, session_owner: Optional[Owner] = None,
                 file_layers: Optional[dict[str, Layer]] = None,
                 ini_layers: Optional[dict[str, Layer]] = None, is_session_owner: bool = True,
                 kind_bin: str = "kind", artifacts_dir: Optional[Path] = None,
                 progress: Optional[Progress] = None, share_network: bool = True) -> None:
        self.selection = selection
        self.owner = owner
        # Shared resources (session images, clusters) belong to the process that
        # outlives every worker, so a crashed worker cannot get them reaped.
        self.session_owner = session_owner or owner
        self.owner_lock: Any = None
        self.findings_at_end: list[Finding] = []
        self.left_behind = 0
        self.file_layers = file_layers or {}
        self.ini_layers = ini_layers or {}
        self.kind_bin = kind_bin
        self.artifacts_dir = artifacts_dir
        self.share_network = share_network
        self.failed = False  # set by the plugin: a failed run exports cluster logs
        self.spares: Optional[SparePool] = None  # the plugin turns pre-starting on
        self.more_tests_coming = True  # the plugin says when a process runs its last test: no spares then
        self.is_session_owner = is_session_owner
        self.progress = progress or (lambda line: None)
        self.shared = SharedState(owner.session, labels=self.session_owner.labels("state"))
        self.stats = Stats()
        self._client: Optional[docker.DockerClient] = None
        # One per family of kinds, made when first needed (each imports what it needs then).
        self._builders: Optional[Builders] = None
        self._clusters: Optional[Clusters] = None
        self._goldens: Optional[Goldens] = None

    # --- tooling ---------------------------------------------------------
    def check_explicit_kinds(self) -> None:
        """An explicitly enabled kind with missing tooling is an error, never a skip."""
        if self.selection.explicit:
            for kind in self.selection.kinds:
                check_tooling(kind, self.kind_bin)

    @property
    def uses_docker(self) -> bool:
        return any(kind in DOCKER_KINDS for kind in self.selection.kinds)

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            from .engine import connect

            self._client = connect()
        return self._client

    @property
    def builders(self) -> Builders:
        """container and dind: images, spares, shared network namespaces."""
        if self._builders is None:
            from .builders import Builders

            self._builders = Builders(self.client, self.owner, self.session_owner, self.shared, self.progress,
                                      share_network=self.share_network)
        return self._builders

    @property
    def clusters(self) -> Clusters:
        """kind: the session's clusters."""
        if self._clusters is None:
            from .clusters import Clusters

            self._clusters = Clusters(self.shared, self.owner, self.session_owner, self.client,
                                      kind_bin=self.kind_bin, progress=self.progress)
        return self._clusters

    @property
    def goldens(self) -> Goldens:
        """vm: golden VMs and their clones."""
        if self._goldens is None:
            from .goldens import Goldens

            self._goldens = Goldens(self.shared, self.owner, self.progress)
        return self._goldens

    # --- settings --------------------------------------------------------
    def settings(self, kind: str, marker_values: Mapping[str, Any], test_dir: Path, test: str = "") -> Settings:
        layers = [layer for layer in (self.ini_layers.get(kind), self.file_layers.get(kind)) if layer is not None]
        if marker_values:
            layers.append(Layer(marker_values, test_dir, f"@pytest.mark.{kind} of {test or test_dir}"))
        return merge(kind, layers)

    # --- environments ----------------------------------------------------
    def open(self, kind: str, settings: Settings, workspace: Path, test: str = "") -> BuildEnv:
        started = time.monotonic()
        env = self._make(kind, settings, workspace, test)
        self.stats.made[kind] += 1
        self.stats.setup_seconds += time.monotonic() - started
        return env

    def _make(self, kind: str, settings: Settings, workspace: Path, test: str) -> BuildEnv:
        if kind == "local":
            from .backends.local import LocalEnv

            return LocalEnv(workspace, environment=settings.environment, timeout=settings.timeout)
        if kind in ("container", "dind"):
            assert isinstance(settings, ContainerSettings)
            return self.builders.open(kind, settings, workspace, test, self.spares, self.more_tests_coming)
        if kind == "kind":
            assert isinstance(settings, KindSettings)
            return self.clusters.open(settings, workspace)
        if kind == "vm":
            assert isinstance(settings, VMSettings)
            return self.goldens.open(settings, workspace, test)
        check_tooling(kind, self.kind_bin)  # raises BackendUnavailable for kinds this version lacks
        raise ConfigError(f"cannot make a {kind} environment")

    def close(self, env: BuildEnv) -> None:
        started = time.monotonic()
        if self.owner.keep:
            self.stats.kept.append(describe_kept(env))
        elif env.kind == "vm":
            self.goldens.close(env)
        elif env.kind in ("container", "dind"):
            self.builders.close(env)
        else:
            env.close()
        self.stats.teardown_seconds += time.monotonic() - started

    # --- session start and end (session owner only) ----------------------
    @property
    def reaps(self) -> bool:
        return self.uses_docker or "vm" in self.selection.kinds

    @property
    def _docker_or_none(self) -> Optional[docker.DockerClient]:
        """What the reaper needs: the engine if a kind uses it (a vm-only run never connects)."""
        return self.client if self.uses_docker else None

    def reap_dead(self) -> list[Finding]:
        from .reaper import reap

        return [f for f in reap(self._docker_or_none) if f.action == "remove"]

    def sweep(self) -> list[Finding]:
        """Remove whatever this session still owns: a crashed worker's leftovers, shared images."""
        from .reaper import reap

        self.wait_for_teardown()
        if "kind" in self.selection.kinds:
            export_to = self.artifacts_dir if self.failed else None
            self.clusters.teardown(export_to, kept=self.stats.kept if self.owner.keep else None)
        if self.owner.keep:
            return []  # kept: the shared directory still holds the kept clusters' kubeconfigs
        self.shared.remove()  # first: our own state directory is not a leftover to report
        return reap(self._docker_or_none, session=self.owner.session, force=True) if self.reaps else []

    def wait_for_teardown(self) -> None:
        """Builders are removed in the background; this is where the process waits for them."""
        started = time.monotonic()
        if self._goldens is not None:
            self._goldens.close_idle()
        if self._builders is not None:
            self._builders.wait(self.spares)
        self.stats.teardown_seconds += time.monotonic() - started

    def finish(self) -> None:
        """Session owner, at the very end: sweep, then count what is still there."""
        self.findings_at_end = self.sweep()
        if self.reaps and not self.owner.keep:
            from .reaper import reap

            self.left_behind = len(reap(self._docker_or_none, session=self.owner.session, dry_run=True, force=True))

    def summary_lines(self) -> list[str]:
        made = ", ".join(f"{n} {kind}" for kind, n in sorted(self.stats.made.items())) or "none"
        lines = [f"buildenv: session {self.owner.session}: environments made: {made}; "
                 f"setup {self.stats.setup_seconds:.1f} s, teardown {self.stats.teardown_seconds:.1f} s; "
                 f"swept at end: {len(self.findings_at_end)}; left behind: {self.left_behind}"]
        if self.owner.keep:
            lines.append("buildenv: kept (--buildenv-keep):")
            lines.extend(f"  {entry}" for entry in self.stats.kept)
            lines.append(f"  remove them all with: python -m pytest_buildenv reap --session {self.owner.session} --include-kept")
        return lines


def describe_kept(env: BuildEnv) -> str:
    if env.kind == "vm":
        return f"vm {getattr(env, 'domain', '?')}: cd {getattr(env, 'dir', '?')} && vagrant ssh"
    name = getattr(env, "name", None)
    if name:
        return f"{env.kind} {name}: docker exec -it {name} sh   (workspace {env.workspace})"
    return f"{env.kind} workspace {env.workspace}"
