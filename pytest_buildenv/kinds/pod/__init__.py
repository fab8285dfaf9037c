"""`pod`: each test's builder is a pod on an existing Kubernetes cluster (a kubeconfig and context),
for suites that outgrow one machine: `pytest -n 32 --buildenv=pod` spreads them over its nodes.

- spec.py: `PodSettings` (a container's settings where they mean something on a cluster; the rest
  refused by name) and the pod's manifest: the invoking user's, unprivileged, no service-account
  token, a process limit where the kubelet sets one, activeDeadlineSeconds as a last resort.
- builder.py: `PodEnv`, the handle: the workspace copied in and out as in copy mode.
- agent.py: the pod's end of every exec, and what it does about the exec stream's pitfalls.
- here: `Pods`, the manager (a client per cluster; the session's namespace; spares), and what doctor,
  the session header and the reaper say.

Each session (every xdist worker of it) uses one namespace, labelled with its owner: made by whichever
worker comes first (creating it is idempotent, so nothing needs a lock across machines), deleted by the
session owner at the end, and by the reaper once its owner is dead. The kubernetes client (the `pod`
extra) is imported on first use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Optional

from ...engine.spares import SparePool
from ...errors import BuildEnvError, Check
from ...handle import BuildEnv
from ...kube import GONE_ALREADY, MADE_ALREADY, Cluster, call, failure, kubernetes_client, server_of
from ...naming import LABEL_KIND, LABEL_SESSION, Labelled
from ...registry import KindSpec, SessionEnd, TestInfo
from ...services import Services
from . import caches
from .builder import PodEnv
from .spec import REFUSED, PodSettings, identity_map

__all__ = ["KIND", "REFUSED", "PodEnv", "PodSettings", "Pods", "delete_namespace", "namespace_of"]
IDENTITY = "buildenv-identity"  # the ConfigMap of this machine's passwd and group, in the session's namespace


def namespace_of(session: str) -> str:
    return f"buildenv-{session}"


class Pods:
    """One process's pods: a client per cluster, the session's namespace on it made once (by whichever
    worker comes first: creating it is idempotent, so no lock spans machines)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._apis: dict[Cluster, Any] = {}
        self._ready: set[Any] = set()  # clusters (and their caches) made ready by this process
        self._lock = threading.Lock()
        self._spares: Optional[SparePool] = None

    def api_for(self, cluster: Cluster) -> Any:
        if cluster not in self._apis:
            self._apis[cluster] = cluster.api()
        return self._apis[cluster]

    def open(self, settings: PodSettings, workspace: Path, test: TestInfo) -> PodEnv:
        """A pod for one test: a spare started while the previous test ran, if one is ready (a pod takes
        seconds to be scheduled and started), else one made now."""
        cluster = settings.cluster
        api = self.api_for(cluster)
        with self._lock:
            if cluster not in self._ready:
                self._prepare(cluster, api)
                self._ready.add(cluster)
            if settings.caches and (cluster, settings.cache_key) not in self._ready:
                caches.prepare(api, settings.caches, settings.cache_size, settings.cache_storage_class,
                               self.services.session_owner)
                self._ready.add((cluster, settings.cache_key))
        key = json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str)
        spares = self._spare_pool(test.scratch)
        spare = spares.take(key) if spares is not None else None
        env = spare if isinstance(spare, PodEnv) and spare.running() else None
        if spare is not None and env is None:
            spare.close()  # gone (its deadline, or somebody's kubectl delete): never handed to a test
        env = env or self._start(api, settings, workspace, test.nodeid)
        if spares is not None:
            spares.restock(key, lambda where: self._start(api, settings, where, "spare"), test.more_tests_coming)
        return env

    def _start(self, api: Any, settings: PodSettings, workspace: Path, test: str) -> PodEnv:
        """A pod in the session's namespace; one with caches beside their claims (caches.py)."""
        session = self.services.owner.session
        namespace, identity = (caches.CACHE_NAMESPACE, caches.identity_for(session)) if settings.caches \
            else (namespace_of(session), IDENTITY)
        env = PodEnv(api, namespace, settings, workspace, self.services.owner,
                     test=test, identity=identity, wait=self.services.engine.settings.wait)
        try:
            return env.start()
        except BaseException:
            env.close()
            raise

    def _spare_pool(self, scratch: Optional[Path]) -> Optional[SparePool]:
        """One spare per settings (ini buildenv_spares 0: none): a pod holds a node's resources while it waits."""
        if self.services.engine.settings.spares <= 0 or scratch is None:
            return None
        if self._spares is None:
            self._spares = SparePool(scratch / "buildenv-pod-workspaces", depth=1)
        return self._spares

    def _prepare(self, cluster: Cluster, api: Any) -> None:
        """The session's namespace and the identity ConfigMap (this machine's passwd and group) in it."""
        core = kubernetes_client().CoreV1Api(api)
        namespace = namespace_of(self.services.owner.session)
        owner = self.services.session_owner  # the namespace outlives every worker
        self.services.shared.get_or_create(f"pod-namespace-{hashlib.sha256(repr(cluster).encode()).hexdigest()[:8]}",
                                           lambda: {"type": "pod-namespace", "kubeconfig": str(cluster.kubeconfig),
                                                    "context": cluster.context, "namespace": namespace})
        meta = {"name": namespace, "labels": {LABEL_SESSION: owner.session, LABEL_KIND: "pod"},
                "annotations": owner.labels("pod")}
        identity = identity_map(IDENTITY, owner)
        # Made by another worker already, fine.
        call(api, f"making namespace {namespace}", core.create_namespace,
             {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}, fine=MADE_ALREADY)
        call(api, f"making namespace {namespace}", core.create_namespaced_config_map, namespace, identity,
             fine=MADE_ALREADY)

    def close(self, env: BuildEnv) -> None:
        env.close()

    def describe_kept(self, env: BuildEnv) -> str:
        assert isinstance(env, PodEnv)
        cluster = env.settings.cluster
        context = f" --context {cluster.context}" if cluster.context else ""
        return (f"pod {env.name}: kubectl --kubeconfig {cluster.kubeconfig}{context} exec -it -n {env.namespace} "
                f"{env.name} -- sh -c 'cd {env.workdir} && exec sh'   (workspace {env.workspace}; the pod ends after "
                f"its deadline, {env.settings.deadline} s)")

    def finish(self, end: SessionEnd) -> None:
        """Every process removes its spares; the session owner deletes the session's namespaces (every
        worker's pods with them), and waits for them to go."""
        if self._spares is not None:
            self._spares.drain()
        if not end.session_owner:
            return
        for record in self.services.shared.records().values():
            if record.get("type") != "pod-namespace":
                continue
            cluster = Cluster(Path(record["kubeconfig"]), record["context"])
            if self.services.owner.keep:
                context = f" --context {cluster.context}" if cluster.context else ""
                end.kept.append(f"pod namespace {record['namespace']}: kubectl --kubeconfig {cluster.kubeconfig}"
                                f"{context} delete namespace {record['namespace']}")
                continue
            delete_namespace(self.api_for(cluster), record["namespace"], wait=120)


def delete_namespace(api: Any, namespace: str, wait: float = 0) -> None:
    """Delete a namespace (its pods go with it); with `wait`, until it is gone."""
    core = kubernetes_client().CoreV1Api(api)
    if not call(api, f"deleting namespace {namespace}", core.delete_namespace, namespace, grace_period_seconds=0,
                fine=GONE_ALREADY):
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not call(api, f"waiting for namespace {namespace} to go", core.read_namespace, namespace,
                    fine=GONE_ALREADY):
            return
        time.sleep(0.5)
    if wait:
        raise BuildEnvError(f"namespace {namespace} was still terminating after {wait:g} s; "
                            f"kubectl get all -n {namespace} says what holds it")


# --- what doctor, the header and the reaper say -------------------------------------------
def _cluster(services: Services, defaults: Optional[Mapping[str, Any]] = None) -> Cluster:
    values = defaults if defaults is not None else services.defaults.get("pod", {})
    return Cluster.chosen(values.get("kubeconfig"), values.get("kube_context"))


def _describe(api: Any, cluster: Cluster) -> str:
    """The server, the context, its Kubernetes version (which also proves it answers)."""
    k8s = kubernetes_client()
    try:
        version = k8s.VersionApi(api).get_code(_request_timeout=10).git_version
    except Exception as exc:
        raise failure(api, "asking its version", exc) from None
    return f"cluster {server_of(api)}, {cluster.describe()}, Kubernetes {version}"


def check(services: Services, defaults: Mapping[str, Any]) -> Check:
    cluster = _cluster(services, defaults)
    api = cluster.api()
    return Check(True, f"{_describe(api, cluster)}; a namespace per session (buildenv-SESSION)")


def header(services: Services) -> str:
    cluster = _cluster(services)
    api = cluster.api()
    return (f"pods on {_describe(api, cluster)}; namespace {namespace_of(services.owner.session)}; "
            f"{_pids_limit(api)}")


def _pids_limit(api: Any) -> str:
    """What limits a pod's processes: the kubelet's podPidsLimit, as one node's configz says it."""
    k8s = kubernetes_client()
    try:
        core = k8s.CoreV1Api(api)
        node = core.list_node(limit=1, _request_timeout=10).items[0].metadata.name
        raw = core.connect_get_node_proxy_with_path(node, "configz", _preload_content=False, _request_timeout=10)
        limit = json.loads(raw.data)["kubeletconfig"].get("podPidsLimit", -1)
    except Exception:
        return "process limit per pod: unknown (no access to the nodes' configz)"
    if limit is None or int(limit) < 0:
        return "no process limit per pod (the kubelet's podPidsLimit is unset)"
    return f"process limit per pod {limit} (the kubelet's podPidsLimit, node {node})"


def leftovers(services: Services, session: Optional[str]) -> Iterator[Labelled]:
    """The sessions' namespaces on the default cluster (the one ini, KUBECONFIG and the options name),
    and what the cache namespace holds; one being deleted already is not listed."""
    cluster = _cluster(services)
    api = cluster.api()
    selector = f"{LABEL_SESSION}={session}" if session else LABEL_SESSION
    core = kubernetes_client().CoreV1Api(api)
    try:
        namespaces = core.list_namespace(label_selector=selector, _request_timeout=10).items
    except Exception as exc:
        raise failure(api, "listing namespaces", exc) from None
    for ns in namespaces:
        if ns.metadata.deletion_timestamp is None:
            name = ns.metadata.name
            yield Labelled("namespace", name, name, dict(ns.metadata.annotations or {}),
                           partial(delete_namespace, api, name, wait=60))
    yield from caches.leftovers(api, session)


def caches_held(services: Services) -> str:
    return caches.held(_cluster(services).api())


KIND = KindSpec(settings=PodSettings, manager=Pods, check=check, leftovers=leftovers, inventory=caches_held,
                header=header)
