"""What a user sets for a builder pod (`PodSettings`, checked when settings load), and the pod that
becomes (`manifest`): the invoking user's, unprivileged, token-less, with a deadline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Optional

from ...engine.containers import InvokingUser
from ...engine.copied import SYNC
from ...kube import Cluster
from ...naming import LABEL_KIND, LABEL_SESSION, LABEL_TEST, Owner, slug
from ...settings import CommonSettings, SettingError
from .agent import CONTAINER, TOOLS, tools_setup

WORKDIR = PurePosixPath("/work")

# A container's settings that a cluster cannot honour, and the one line a user gets for each.
REFUSED = {
    "dockerfile": "an image built here reaches the nodes only through a registry they pull from: build and push "
                  "it, then set image=",
    "context": "it is a Dockerfile build's context (see dockerfile); the cluster's context is kube_context",
    "target": "it is a Dockerfile build's target (see dockerfile)",
    "build_args": "they are a Dockerfile build's (see dockerfile)",
    "provision": "a provisioned snapshot is an image the nodes must pull, which needs a registry: provision in "
                 "the image's Dockerfile, push it, and set image=",
    "network": "a pod's network is the cluster's (its CNI)",
    "ssh_agent": "this machine's agent socket cannot reach a pod on another node",
    "docker_options": "they are the container engine's; a pod's spec is the cluster's (memory, cpus, deadline)",
    "pids": "a pod's process limit is the kubelet's (podPidsLimit in its configuration, or a KIND config's "
            "KubeletConfiguration patch)",
}


@dataclass(frozen=True)
class PodSettings(CommonSettings):
    """What a user sets for a builder pod, each value checked when settings load."""

    image: Optional[str] = None
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    helper_image: str = "busybox:1.36"  # brings a static busybox (tar, sh, ...) into every pod
    memory: Optional[str] = None  # "512m", as for a container: the pod's request and limit
    cpus: Optional[float] = None
    kubeconfig: Optional[str] = None  # ini buildenv_kubeconfig; else KUBECONFIG, else ~/.kube/config
    kube_context: Optional[str] = None  # --buildenv-kube-context; else the kubeconfig's current context
    deadline: int = 14400  # activeDeadlineSeconds: the cluster ends a pod that no session removed
    start_timeout: float = 120  # seconds for a pod to be scheduled, pulled and started
    workspace: Optional[Literal["bind", "copy"]] = None  # copy only: no cluster sees this machine's files
    caches: dict[str, str] = field(default_factory=dict)  # name -> path: a PersistentVolumeClaim each (caches.py)
    cache_size: str = "10Gi"  # what each cache's claim asks for
    cache_storage_class: Optional[str] = None  # the claims' class (default: the cluster's default class)
    # A container's settings that cannot apply on a cluster: taken by type, refused by name (REFUSED).
    dockerfile: Optional[Path] = None
    context: Optional[Path] = None
    target: Optional[str] = None
    build_args: dict[str, str] = field(default_factory=dict)
    provision: tuple[str, ...] = ()
    provision_user: str = "root"
    network: Optional[str] = None
    ssh_agent: bool = False
    docker_options: dict[str, Any] = field(default_factory=dict)
    pids: Optional[int] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, why in REFUSED.items():
            if getattr(self, key) not in (None, False, (), {}):
                raise SettingError(key, f"{key} cannot apply to a pod: {why}")
        if self.workspace == "bind":
            raise SettingError("workspace", "workspace='bind' cannot apply to a pod: no cluster sees this machine's "
                                            "files; a pod's workspace is copied in and out (drop workspace)")
        if self.memory is not None and quantity(self.memory) is None:
            raise SettingError("memory", f"memory={self.memory!r} is not a size; write it as Docker does, e.g. '512m'")
        for name, path in self.caches.items():
            inside = PurePosixPath(path)
            if not inside.is_absolute() or any(inside == top or top in inside.parents for top in (WORKDIR, SYNC)):
                raise SettingError("caches", f"caches entry {name}: {path!r} must be an absolute path in the pod, "
                                             f"outside {WORKDIR} (copied back after every command) and {SYNC}")
        if self.deadline <= 0:
            raise SettingError("deadline", f"deadline={self.deadline} must be a positive number of seconds")

    @property
    def cluster(self) -> Cluster:
        return Cluster.chosen(self.kubeconfig, self.kube_context)

    @property
    def cache_key(self) -> tuple[Any, ...]:
        """The claims these settings need, as made: a process makes each set once."""
        return tuple(sorted(self.caches)), self.cache_size, self.cache_storage_class


def quantity(memory: str) -> Optional[str]:
    """Docker's '512m' as Kubernetes' '512Mi' (None: not a size)."""
    number, unit = (memory[:-1], memory[-1].lower()) if memory[-1:].isalpha() else (memory, "b")
    suffix = {"b": "", "k": "Ki", "m": "Mi", "g": "Gi"}.get(unit)
    return f"{number}{suffix}" if suffix is not None and number.isdigit() else None


def claim_name(cache: str) -> str:
    """The PersistentVolumeClaim of a cache (caches.py)."""
    return f"buildenv-cache-{slug(cache, 40)}"


def manifest(name: str, settings: PodSettings, owner: Owner, test: str, identity: str,
             user: Optional[InvokingUser] = None) -> dict[str, Any]:
    """The builder pod: an init container bringing the helper's tools, then the builder, idle, as the user."""
    user = user or InvokingUser()
    restricted = {"allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]}}
    volumes: list[dict[str, Any]] = [{"name": "work", "emptyDir": {}}, {"name": "sync", "emptyDir": {}}]
    tools = [{"name": "sync", "mountPath": str(SYNC)}]
    mounts: list[dict[str, Any]] = [{"name": "work", "mountPath": str(WORKDIR)}, *tools]
    for i, (cache, path) in enumerate(sorted(settings.caches.items())):
        volumes.append({"name": f"cache-{i}", "persistentVolumeClaim": {"claimName": claim_name(cache)}})
        mounts.append({"name": f"cache-{i}", "mountPath": path})
    if identity:  # this machine's passwd and group, so that the user has a name inside
        volumes.append({"name": "identity", "configMap": {"name": identity}})
        mounts += [{"name": "identity", "mountPath": f"/etc/{f}", "subPath": f, "readOnly": True}
                   for f in ("passwd", "group")]
    pull = settings.image_pull_policy
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {LABEL_SESSION: owner.session, LABEL_KIND: "pod"},
                     # Label values allow few characters: the owner's labels (and the test's id) are annotations.
                     "annotations": {**owner.labels("pod"), LABEL_TEST: test[:1000]}},
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": settings.deadline,
            "terminationGracePeriodSeconds": 0,  # a builder has nothing to save: deletion is immediate
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"runAsUser": user.uid, "runAsGroup": user.gid, "fsGroup": user.gid,
                                "supplementalGroups": [int(g) for g in user.extra_groups()],
                                **({"runAsNonRoot": True} if user.uid else {})},
            # A session's pods spread over the nodes (preferred: never a reason to stay Pending).
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                           "whenUnsatisfiable": "ScheduleAnyway",
                                           "labelSelector": {"matchLabels": {LABEL_SESSION: owner.session}}}],
            "initContainers": [{"name": "helper-image", "image": settings.helper_image, "imagePullPolicy": pull,
                                "command": tools_setup(), "volumeMounts": tools, "securityContext": restricted}],
            "containers": [{"name": CONTAINER, "image": settings.image, "imagePullPolicy": pull,
                            "command": [str(TOOLS / "sleep"), "2147483647"], "workingDir": str(WORKDIR),
                            "env": [{"name": "HOME", "value": str(WORKDIR)}], "volumeMounts": mounts,
                            "resources": _resources(settings), "securityContext": restricted}],
            "volumes": volumes,
        },
    }


def identity_map(name: str, owner: Owner) -> dict[str, Any]:
    """This machine's passwd and group as a ConfigMap: mounted in the pod, they give the user a name."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {LABEL_SESSION: owner.session, LABEL_KIND: "pod"},
                         "annotations": owner.labels("pod")},
            "data": {file: Path(f"/etc/{file}").read_text() for file in ("passwd", "group")}}


def _resources(settings: PodSettings) -> dict[str, dict[str, str]]:
    """memory and cpus as the pod's limits, and as its requests (the scheduler places it by them)."""
    limits = {}
    if settings.memory:
        limits["memory"] = str(quantity(settings.memory))
    if settings.cpus:
        limits["cpu"] = f"{int(settings.cpus * 1000)}m"
    return {"limits": limits, "requests": dict(limits)} if limits else {}
