"""A kept KIND cluster made as good as new (ini buildenv_reuse=kind): by the session that lets it go,
without waiting for its namespaces to go, and again by the one that adopts it (an earlier session
may have died before its reset), which waits for them.

What earlier sessions applied goes: their Helm releases (uninstalled, so a chart's cluster-wide
objects go too), every namespace made after the cluster was (its first ones are recorded in a
ConfigMap when it is made), and the default namespace's objects. What stays: the nodes and the
images loaded into them (much of the point), and cluster-wide objects a test made itself outside a
chart (CRDs, ClusterRoles), which nothing here can tell from the cluster's own.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Callable

from ..errors import ClusterError

BASELINE = "pytest-buildenv-baseline"  # a ConfigMap in kube-system: the namespaces the cluster was made with
# The default namespace's own objects, which the control plane makes (and would make again).
_OWN = {"service": "kubernetes", "config_map": "kube-root-ca.crt", "service_account": "default"}


def record_baseline(api: Any) -> None:
    """When a cluster to keep is made: which namespaces are its own."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(api)
    names = sorted(ns.metadata.name for ns in core.list_namespace().items)
    core.create_namespaced_config_map("kube-system", k8s.V1ConfigMap(
        metadata=k8s.V1ObjectMeta(name=BASELINE), data={"namespaces": " ".join(names)}))


def reset(api: Any, uninstall: Callable[[str, str], None], wait: bool = True, timeout: float = 120) -> str:
    """Remove what earlier sessions applied; what was removed, in a few words. With `wait`, until the
    namespaces are gone. A refusal of the API server is a ClusterError (the cluster is then made again)."""
    from kubernetes.client.exceptions import ApiException

    try:
        return _reset(api, uninstall, timeout if wait else 0)
    except ApiException as exc:
        raise ClusterError(f"its API server refused the reset: {exc.status} {exc.reason}") from None


def _reset(api: Any, uninstall: Callable[[str, str], None], timeout: float) -> str:
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    core = k8s.CoreV1Api(api)
    try:
        baseline = set(core.read_namespaced_config_map(BASELINE, "kube-system").data["namespaces"].split())
    except (ApiException, KeyError, AttributeError) as exc:
        raise ClusterError(f"it has no record of its own namespaces (ConfigMap kube-system/{BASELINE}: "
                           f"{getattr(exc, 'reason', exc)})") from None
    # Helm keeps a release as Secrets labelled owner=helm, one per revision, in the release's namespace.
    releases = dict.fromkeys((s.metadata.labels.get("name", ""), s.metadata.namespace)
                             for s in core.list_secret_for_all_namespaces(label_selector="owner=helm").items)
    for release, namespace in releases:
        uninstall(release, namespace)
    extra = [ns for ns in core.list_namespace().items if ns.metadata.name not in baseline]
    going = [ns.metadata.name for ns in extra if ns.status.phase == "Terminating"]  # an earlier reset's
    removed = [ns.metadata.name for ns in extra if ns.metadata.name not in going]
    for namespace in removed:
        _gone_already(partial(core.delete_namespace, namespace))
        # A terminating namespace takes no new pods; its pods go now, not after their grace period
        # (a `sleep` as PID 1 ignores SIGTERM, and would hold the namespace for 30 s).
        core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
    _empty_default(api)
    if timeout:
        _wait_gone(core, removed + going, timeout)
    return (f"removed {len(releases)} Helm release(s), {len(removed)} namespace(s)"
            + (f" ({', '.join(removed)})" if removed else "") + " and the default namespace's objects"
            + (f"; waited for {len(going)} namespace(s) an earlier session removed" if going and timeout else ""))


def _empty_default(api: Any) -> None:
    """The default namespace as a new cluster has it: controllers first (so they make no new pods), then the rest."""
    from kubernetes import client as k8s

    apps, batch, core = k8s.AppsV1Api(api), k8s.BatchV1Api(api), k8s.CoreV1Api(api)
    net, rbac = k8s.NetworkingV1Api(api), k8s.RbacAuthorizationV1Api(api)
    controllers = [apps.delete_collection_namespaced_deployment, apps.delete_collection_namespaced_stateful_set,
                   apps.delete_collection_namespaced_daemon_set, apps.delete_collection_namespaced_replica_set,
                   batch.delete_collection_namespaced_cron_job, batch.delete_collection_namespaced_job]
    for delete in controllers:
        delete("default", propagation_policy="Background")
    core.delete_collection_namespaced_pod("default", grace_period_seconds=0)
    for delete in (core.delete_collection_namespaced_persistent_volume_claim, core.delete_collection_namespaced_secret,
                   net.delete_collection_namespaced_ingress, net.delete_collection_namespaced_network_policy,
                   rbac.delete_collection_namespaced_role, rbac.delete_collection_namespaced_role_binding):
        delete("default")
    for kind, own in _OWN.items():
        getattr(core, f"delete_collection_namespaced_{kind}")("default", field_selector=f"metadata.name!={own}")


def _gone_already(delete: Callable[[], object]) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        delete()
    except ApiException as exc:
        if exc.status not in (404, 409):  # gone, or going
            raise


def _wait_gone(core: Any, namespaces: list[str], timeout: float) -> None:
    """A session that makes a namespace of the same name must not find it terminating."""
    deadline = time.monotonic() + timeout
    while True:
        left = sorted({ns.metadata.name for ns in core.list_namespace().items} & set(namespaces))
        if not left:
            return
        if time.monotonic() >= deadline:
            raise ClusterError(f"namespace(s) {', '.join(left)} still terminating after {timeout:g} s")
        time.sleep(0.2)
