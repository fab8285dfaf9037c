"""One test session's environments: settings, creation, teardown, bookkeeping.

Works without pytest: the plugin hands it plain values (the selection text,
the config file, the marker's keyword arguments) and asks it for handles.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, cast

from .backends import check_tooling
from .backends.base import BuildEnv
from .config import DOCKER_KINDS, ContainerSettings, KindSettings, Layer, Selection, Settings, VMSettings, merge
from .errors import ConfigError
from .naming import Owner
from .sharing import SharedState

if TYPE_CHECKING:
    import docker

    from .backends.container import ContainerEnv
    from .backends.kind import KindCluster
    from .backends.vm import GoldenVM
    from .hostpaths import HostPaths
    from .images import ImageBuilder
    from .netns import SharedNetworks
    from .spares import SparePool
    from .reaper import Finding

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
        self.failed = False  # set by the plugin: a failed run exports cluster logs
        self._clusters: dict[str, KindCluster] = {}
        self._goldens: dict[tuple[str, str], GoldenVM] = {}
        self._idle_vms: dict[str, Any] = {}  # reset="snapshot": each process's clone between tests
        self.spares: Optional[SparePool] = None  # the plugin turns pre-starting on
        self.more_tests_coming = True  # the plugin says when a process runs its last test: no spares then
        self.is_session_owner = is_session_owner
        self.progress = progress or (lambda line: None)
        self.shared = SharedState(owner.session)
        self.stats = Stats()
        self._client: Optional[docker.DockerClient] = None
        self._images: Optional[ImageBuilder] = None
        self._host_paths: Optional[HostPaths] = None
        self.share_network = share_network
        self._networks: Optional[SharedNetworks] = None

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
    def host_paths(self) -> HostPaths:
        """How the daemon sees our paths (different when pytest runs in a runner container)."""
        if self._host_paths is None:
            from .hostpaths import detect

            self._host_paths = detect(self.client)
        return self._host_paths

    @property
    def images(self) -> ImageBuilder:
        if self._images is None:
            from .images import ImageBuilder

            self._images = ImageBuilder(self.client, self.session_owner, self.shared, self.progress)
        return self._images

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
            return self._builder(kind, settings, workspace, test)
        if kind == "kind":
            assert isinstance(settings, KindSettings)
            from .backends.kind import KindEnv

            return KindEnv(workspace, self.cluster_for(settings), environment=settings.environment,
                           timeout=settings.timeout)
        if kind == "vm":
            assert isinstance(settings, VMSettings)
            from .backends.vm import VMClone

            golden = self.golden_for(settings)
            if settings.reset == "snapshot" and golden.box in self._idle_vms:
                clone = self._idle_vms.pop(golden.box)
                clone.reset(workspace)
                return clone
            clone = VMClone(golden.box, workspace, self.shared.directory, self.owner, test=test,
                            environment=settings.environment, timeout=settings.timeout,
                            boot_timeout=settings.boot_timeout)
            if settings.reset == "snapshot":
                clone.save_boot_snapshot()
                clone.reusable = True
            return clone
        check_tooling(kind, self.kind_bin)  # raises BackendUnavailable for kinds this version lacks
        raise ConfigError(f"cannot make a {kind} environment")

    def _builder(self, kind: str, settings: ContainerSettings, workspace: Path, test: str) -> BuildEnv:
        """A container or dind builder: a spare if one is ready, on a shared network namespace."""
        from .backends.container import ContainerEnv
        from .backends.dind import DindEnv

        cls = DindEnv if kind == "dind" else ContainerEnv
        image, to_host, networks = self.image_for(settings, kind), self.host_paths.to_host, self.networks

        def start(where: Path, test: str, network: Optional[str]) -> ContainerEnv:
            return cls(self.client, image, where, self.owner, test=test, network=network,
                       ssh_agent=settings.ssh_agent, to_host=to_host,
                       environment=settings.environment, timeout=settings.timeout)

        def make(where: Path, test: str = test) -> ContainerEnv:
            mode = networks.mode_for_new_builder(settings.network, image)
            try:
                return start(where, test, mode)
            except Exception:
                if mode == settings.network:
                    raise
                networks.holder_failed()  # its holder is gone (a test removed it?): lend another
                return start(where, test, networks.mode_for_new_builder(settings.network, image))

        key = (kind, image, settings.network, settings.ssh_agent,
               tuple(sorted(settings.environment.items())), settings.timeout)
        spare = self.spares.take(key) if self.spares is not None else None
        env = cast(ContainerEnv, spare) if spare is not None else make(workspace)
        if self.spares is not None:
            self.spares.restock(key, lambda where: make(where, "spare"), self.more_tests_coming)
        if not networks.claim(env):
            # Its holder is taken by another open builder (two in one test) or was removed:
            # this test gets a builder with a namespace of its own instead.
            env.close()
            env = start(env.workspace, test, settings.network)
        return env

    @property
    def networks(self) -> SharedNetworks:
        if self._networks is None:
            from .backends.container import InvokingUser
            from .netns import SharedNetworks

            self._networks = SharedNetworks(self.client, self.owner, InvokingUser(),
                                            enabled=self.share_network and not self.owner.keep)
        return self._networks

    def cluster_for(self, settings: KindSettings) -> KindCluster:
        """The session's cluster for these settings: created by the first process that asks."""
        import hashlib
        import json

        key = hashlib.sha256(json.dumps([settings.image, settings.config, settings.wait, settings.cluster],
                                        default=str).encode()).hexdigest()[:8]
        if key not in self._clusters:
            def create() -> dict[str, Any]:
                name = settings.cluster or f"buildenv-{self.owner.session}-{key[:6]}"
                self.progress(f"creating KIND cluster {name}" if not settings.cluster else f"reusing KIND cluster {name}")
                self._cluster(name, reuse=bool(settings.cluster), settings=settings).create()
                return {"type": "kind", "name": name, "reuse": bool(settings.cluster)}

            record = self.shared.get_or_create(f"kind-{key}", create)
            self._clusters[key] = self._cluster(record["name"], reuse=record["reuse"])
        return self._clusters[key]

    def golden_for(self, settings: VMSettings) -> GoldenVM:
        """The golden VM for these settings, provisioned at most once per content (across sessions too)."""
        from .backends.vm import GoldenVM

        if settings.vagrantfile is None:
            raise ConfigError("no Vagrantfile for the vm kind; pass @pytest.mark.vm(vagrantfile=...), "
                              "vm: vagrantfile: in buildenv.yaml, or --vagrantfile")
        key = (str(settings.vagrantfile), settings.provider)
        if key not in self._goldens:  # hashing the Vagrantfile's directory once per session is enough
            golden = GoldenVM(settings.vagrantfile, self.shared.directory, provider=settings.provider,
                              progress=self.progress)
            record = self.shared.get_or_create(f"golden-{golden.hash[:16]}", lambda: {
                "type": "golden", "box": golden.ensure(), "provisioned": golden.provisioned_now})
            golden.provisioned_now = bool(record["provisioned"] and record["created_here"])
            golden.owner = self.owner
            self._goldens[key] = golden
        return self._goldens[key]

    def _cluster(self, name: str, reuse: bool, settings: Optional[KindSettings] = None) -> KindCluster:
        """A handle on a session cluster; `settings` only matter to the process that creates it."""
        from .backends.kind import KindCluster

        options: dict[str, Any] = {}
        if settings is not None:
            options = {"image": settings.image, "config": settings.config, "wait": settings.wait}
        return KindCluster(name, self.shared.directory, kind_bin=self.kind_bin, reuse=reuse,
                           owner=self.session_owner, client=self.client, **options)

    def teardown_clusters(self) -> list[str]:
        """Session owner, at the end: export logs if anything failed, then delete each cluster we made."""
        done = []
        for record in self.shared.records().values():
            if record.get("type") != "kind":
                continue
            cluster = self._cluster(record["name"], reuse=record["reuse"])
            if self.failed and self.artifacts_dir is not None:
                cluster.export_logs(self.artifacts_dir / f"kind-{cluster.name}")
            if self.owner.keep:
                self.stats.kept.append(f"kind cluster {cluster.name}: KUBECONFIG={cluster.kubeconfig} "
                                       f"(kind delete cluster --name {cluster.name})")
            elif not record["reuse"]:
                cluster.delete()
                done.append(cluster.name)
        return done

    def image_for(self, settings: ContainerSettings, kind: str) -> str:
        from .images import BuildSpec

        if settings.dockerfile is not None:
            context = settings.context or settings.dockerfile.parent
            base = self.images.build(BuildSpec(settings.dockerfile, context, settings.target, settings.build_args))
        elif settings.image:
            base = self.images.from_tag(settings.image)
        else:
            base = ""
        if base and settings.provision:
            return self.images.snapshot(base, settings.provision, settings.provision_user)
        if base:
            return base
        raise ConfigError(f"no image for the {kind} kind; pass @pytest.mark.{kind}(image=...) or dockerfile=, "
                          f"set {kind}: image: in buildenv.yaml, or ini buildenv_image")

    def close(self, env: BuildEnv) -> None:
        started = time.monotonic()
        if self.owner.keep:
            self.stats.kept.append(describe_kept(env))
        elif getattr(env, "reusable", False):
            self._idle_vms[getattr(env, "box")] = env  # restored when the next test takes it; destroyed at the end
        else:
            env.close()
            if self._networks is not None:
                self._networks.release(env)
        self.stats.teardown_seconds += time.monotonic() - started

    # --- session start and end (session owner only) ----------------------
    @property
    def reaps(self) -> bool:
        return self.uses_docker or "vm" in self.selection.kinds

    def reap_dead(self) -> list[Finding]:
        from .reaper import reap

        return [f for f in reap(self.client if self.uses_docker else None) if f.action == "remove"]

    def sweep(self) -> list[Finding]:
        """Remove whatever this session still owns: a crashed worker's leftovers, shared images."""
        from .reaper import reap

        self.wait_for_teardown()
        if "kind" in self.selection.kinds:
            self.teardown_clusters()
        if self.owner.keep:
            return []  # kept: the shared directory still holds the kept clusters' kubeconfigs
        found = reap(self.client if self.uses_docker else None, session=self.owner.session, force=True) \
            if self.reaps else []
        self.shared.remove()
        return found

    def wait_for_teardown(self) -> None:
        """Containers are removed in the background; this is where the session waits for them."""
        if self.spares is not None:
            self.spares.drain()
        while self._idle_vms:
            self._idle_vms.popitem()[1].close()
        if self._client is not None:
            from .backends.container import wait_for_removals

            started = time.monotonic()
            if self._networks is not None:
                self._networks.close()
            wait_for_removals()
            self.stats.teardown_seconds += time.monotonic() - started

    def finish(self) -> None:
        """Session owner, at the very end: sweep, then count what is still there."""
        self.findings_at_end = self.sweep()
        if self.reaps and not self.owner.keep:
            from .reaper import reap

            client = self.client if self.uses_docker else None
            self.left_behind = len(reap(client, session=self.owner.session, dry_run=True, force=True))

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
