"""`caches` on a cluster: one PersistentVolumeClaim per cache name, kept across sessions.

A claim is namespaced, and a session's namespace goes with its session: the claims live in one
namespace that outlives them all, CACHE_NAMESPACE, and a pod that mounts a cache runs there
(labelled with its session like any pod, so it is removed, or reaped, the same way). Claims are
labelled caches: no sweep removes them; `reap --include-cache` does. They ask for ReadWriteMany
(every node's pods share a cache) of the cache_storage_class (default: the cluster's default class).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any, Optional

from ...kube import GONE_ALREADY, MADE_ALREADY, call, failure, kubernetes_client
from ...naming import LABEL_CACHE, LABEL_KIND, LABEL_SESSION, Labelled, Owner
from .spec import claim_name, identity_map

CACHE_NAMESPACE = "buildenv-caches"


def identity_for(session: str) -> str:
    """A session's passwd-and-group ConfigMap in the cache namespace (sessions of other machines share it)."""
    return f"buildenv-identity-{session}"


def prepare(api: Any, caches: Mapping[str, str], size: str, storage_class: Optional[str], owner: Owner) -> None:
    """The cache namespace, this session's identity in it, and a claim per cache; each made if missing."""
    core = kubernetes_client().CoreV1Api(api)
    meta = {"name": CACHE_NAMESPACE, "labels": {LABEL_KIND: "pod", LABEL_CACHE: "namespace"},
            "annotations": {**owner.labels("pod"), LABEL_CACHE: "the pod kind's caches"}}
    made: list[tuple[Any, tuple[Any, ...]]] = [
        (core.create_namespace, ({"apiVersion": "v1", "kind": "Namespace", "metadata": meta},)),
        (core.create_namespaced_config_map, (CACHE_NAMESPACE, identity_map(identity_for(owner.session), owner)))]
    for name in caches:
        spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": size}}}
        if storage_class is not None:
            spec["storageClassName"] = storage_class
        claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                 "metadata": {"name": claim_name(name), "labels": {LABEL_KIND: "pod", LABEL_CACHE: "true"},
                              "annotations": {**owner.labels("cache"), LABEL_CACHE: f"cache:{name}"}},
                 "spec": spec}
        made.append((core.create_namespaced_persistent_volume_claim, (CACHE_NAMESPACE, claim)))
    for create, args in made:  # there already (another worker's, an earlier session's): fine
        call(api, f"making the caches in namespace {CACHE_NAMESPACE}", create, *args, fine=MADE_ALREADY)


def held(api: Any) -> str:
    """For doctor: the caches' claims, their sizes and phases."""
    core = kubernetes_client().CoreV1Api(api)
    try:
        claims = core.list_namespaced_persistent_volume_claim(CACHE_NAMESPACE, label_selector=LABEL_CACHE,
                                                              _request_timeout=10).items
    except Exception as exc:
        raise failure(api, "listing the caches", exc) from None
    listed = ", ".join(f"{(c.metadata.annotations or {}).get(LABEL_CACHE, c.metadata.name).removeprefix('cache:')} "
                       f"{(c.spec.resources.requests or {}).get('storage', '?')} {c.status.phase}" for c in claims)
    return f"caches (namespace {CACHE_NAMESPACE}): {listed or 'none'}"


def leftovers(api: Any, session: Optional[str]) -> Iterator[Labelled]:
    """In the cache namespace: sessions' pods and identities, and the claims (caches: kept unless asked)."""
    core = kubernetes_client().CoreV1Api(api)
    selector = f"{LABEL_SESSION}={session}" if session else LABEL_SESSION
    try:
        pods = core.list_namespaced_pod(CACHE_NAMESPACE, label_selector=selector, _request_timeout=10).items
        maps = core.list_namespaced_config_map(CACHE_NAMESPACE, label_selector=selector, _request_timeout=10).items
        claims = core.list_namespaced_persistent_volume_claim(CACHE_NAMESPACE, label_selector=LABEL_CACHE,
                                                              _request_timeout=10).items
    except Exception as exc:
        raise failure(api, f"listing namespace {CACHE_NAMESPACE}", exc) from None
    deletes = {"pod": partial(core.delete_namespaced_pod, grace_period_seconds=0),
               "configmap": core.delete_namespaced_config_map, "cache": core.delete_namespaced_persistent_volume_claim}
    for resource, items in (("pod", pods), ("configmap", maps), ("cache", claims)):
        for item in items:
            if item.metadata.deletion_timestamp is None:
                name = item.metadata.name
                yield Labelled(resource, name, name, dict(item.metadata.annotations or {}),
                               partial(call, api, f"deleting {resource} {name} in namespace {CACHE_NAMESPACE}",
                                       deletes[resource], name, CACHE_NAMESPACE, fine=GONE_ALREADY))
