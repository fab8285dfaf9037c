"""`kind`: a throwaway KIND cluster, and a workspace whose commands see it via KUBECONFIG.

`KindCluster` works without pytest. The kind, kubectl and helm CLIs have no
Python API: they run with argument lists (never a shell). The Kubernetes API is
reached with the kubernetes client (the `kind` extra), imported on first use.

kind labels its node containers with io.x-k8s.kind.cluster=<name> but takes no
labels of ours, so each cluster we create is shadowed by a tiny labelled Docker
volume naming it: the reaper finds the volume, and removes the cluster's node
containers with it.

`Clusters` is the kind's session-wide manager: one cluster per distinct
settings, shared by every xdist worker. The first process that asks creates it
(under sharing.py's lock) and records it; the others attach to the record. Only
the session owner deletes them, at the very end, after exporting their logs if
the run failed. With ini buildenv_reuse=kind it keeps them instead, for later
sessions of the same key to adopt (reuse.py claims them, kind_reset.py resets them).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union
from collections.abc import Iterator, Mapping, Sequence

import yaml

from ..engine import endpoint_of, probe, where
from ..engine.endpoint import Endpoint, describe, resolve
from ..engine.images import save_as
from ..engine.resources import quietly
from ..errors import Check, ClusterError, ConfigError, tail
from ..events import emit
from ..handle import BuildEnv
from ..kube import REMEDIES, pod_not_ready
from ..naming import (ANY_OWNED, KIND_CLUSTER_LABEL, LABEL_CLUSTER, LABEL_CREATED, LABEL_REUSE, LABEL_SESSION, PREFIX,
                      Labelled, Owner)
from ..progress import KIND_STEP, Progress, follow
from ..registry import KindSpec, SessionEnd, TestInfo
from ..result import Result
from ..reuse import Pool, ago, expired
from ..reuse import describe as describe_kept
from ..reuse import labels as kept_labels
from ..services import Services
from ..settings import CommonSettings, SettingError
from ..sharing import state_root
from . import kind_reset
from .local import LocalEnv

if TYPE_CHECKING:
    import docker


@dataclass(frozen=True)
class KindSettings(CommonSettings):
    image: Optional[str] = None  # node image (kind create cluster --image)
    config: Union[Path, dict[str, Any], None] = None  # a kind Cluster config: file or mapping
    wait: str = "120s"
    cluster: Optional[str] = None  # reuse this existing cluster; it is then never deleted
    kind_bin: str = "kind"  # the kind executable (--kind-bin)

    def __post_init__(self) -> None:
        """The cluster's name and config, checked as settings load (a config file is read once per process)."""
        super().__post_init__()
        try:
            if self.cluster:
                validate_name(self.cluster)
        except ConfigError as exc:
            raise SettingError("cluster", str(exc)) from None
        try:
            validate_config(self.config)
        except ConfigError as exc:
            raise SettingError("config", str(exc)) from None

    @property
    def cluster_key(self) -> str:
        """Which session cluster these settings ask for, by content: a config given as a file and the same
        config given as a mapping are one cluster."""
        return hashlib.sha256(json.dumps([self.image, validate_config(self.config), self.wait, self.cluster],
                                         default=str, sort_keys=True).encode()).hexdigest()[:8]

# On the shadow volume: how its creator ran kind, for the reaper to delete the cluster the same way.
LABEL_KIND_BIN, LABEL_PROVIDER, LABEL_KUBECONFIG = (f"{PREFIX}.{key}" for key in ("kind-bin", "kind-provider",
                                                                                   "kubeconfig"))

NAME_RE = re.compile(r"^[a-z0-9.-]+$")
NAME_MAX = 50  # kind appends "-control-plane" to make a hostname (max 64)


def validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ConfigError(f"KIND cluster name {name!r} is invalid; use only a-z, 0-9, '.' and '-'")
    if len(name) > NAME_MAX:
        raise ConfigError(f"KIND cluster name {name!r} is {len(name)} characters; kind allows {NAME_MAX}")
    return name


@functools.lru_cache(maxsize=32)
def _read_config(path: Path) -> Any:
    """A config file's content, read once per process (every test's settings name it)."""
    if not path.is_file():
        raise ConfigError(f"KIND config {path} not found; fix config=")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"KIND config {path} is not valid YAML ({str(exc).splitlines()[0]}); fix the file") from exc


def validate_config(config: Union[Path, Mapping[str, Any], None]) -> Optional[dict[str, Any]]:
    """A kind Cluster config as a dict (from a path or a mapping), checked before kind sees it."""
    if config is None:
        return None
    data = _read_config(config) if isinstance(config, Path) else dict(config)
    api_version = str(data.get("apiVersion", "")) if isinstance(data, dict) else ""
    if not isinstance(data, dict) or data.get("kind") != "Cluster" or not api_version.startswith("kind.x-k8s.io/"):
        raise ConfigError("KIND config must be a mapping with kind: Cluster and apiVersion: kind.x-k8s.io/v1alpha4")
    return data


def provider() -> str:
    """kind's node provider, as kind picks it: KIND_EXPERIMENTAL_PROVIDER (podman, nerdctl), else docker."""
    return os.environ.get("KIND_EXPERIMENTAL_PROVIDER") or "docker"


def kind_environment(endpoint: Endpoint) -> dict[str, str]:
    """kind drives the Docker CLI (its docker provider, `kind load docker-image`): the session's engine."""
    return endpoint.cli_environment


def _run(argv: Sequence[str], *, timeout: Optional[float] = None, env: Optional[Mapping[str, str]] = None,
         stderr_log: Optional[Path] = None) -> Result:
    """Run a CLI; its stderr to `stderr_log` if given (so progress.follow can read it as it comes)."""
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            err = stack.enter_context(stderr_log.open("w")) if stderr_log else subprocess.PIPE
            proc = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout,
                                  env={**os.environ, **(env or {})})
    except FileNotFoundError as exc:
        raise ClusterError(f"{argv[0]} not found; install it or point the plugin at it (--kind-bin)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{' '.join(argv[:3])} timed out after {timeout:g} s") from exc
    stderr = stderr_log.read_text(errors="replace") if stderr_log else proc.stderr
    return Result(" ".join(argv), proc.returncode, proc.stdout, stderr, time.monotonic() - started)


def _last_error(result: Result) -> str:
    """The cause, first: kind's "ERROR: ... command "docker run <50 arguments>" failed with error: exit
    status 125" buries it in the "Command Output:" line after; that line leads, the command shortened."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    error = (errors or lines or [f"exit {result.exit_code}"])[-1]
    error = _KIND_COMMAND.sub(lambda m: f"`{' '.join(m.group(1).split()[:2])} ...`", error)
    # The command's output runs from "Command Output:" to the end, progress first ("Trying to pull
    # ..."): its last error line is the cause, else its last line.
    starts = [i for i, line in enumerate(lines) if line.startswith("Command Output:")]
    if not starts:
        return error
    output = [lines[starts[-1]].split(":", 1)[1].strip(), *lines[starts[-1] + 1:]]
    output = [line for line in output if line]
    causes = [line for line in output if line.lower().startswith("error")] or output
    return f"{causes[-1]} ({error})" if causes else error


_KIND_COMMAND = re.compile(r'command "([^"]*)"')


class KindCluster:
    """One KIND cluster: created (or reused by name), used, deleted."""

    def __init__(self, name: str, state_dir: Path, *, kind_bin: str = "kind", image: Optional[str] = None,
                 config: Union[Path, Mapping[str, Any], None] = None, wait: str = "120s", reuse: bool = False,
                 kubectl_bin: str = "kubectl", helm_bin: str = "helm", owner: Optional[Owner] = None,
                 client: Optional[docker.DockerClient] = None, progress: Optional[Progress] = None,
                 labels: Optional[Mapping[str, str]] = None) -> None:
        self.name = validate_name(name)
        self.state_dir = Path(state_dir)
        self.kind_bin, self.kubectl_bin, self.helm_bin = kind_bin, kubectl_bin, helm_bin
        self.image, self.wait, self.reuse = image, wait, reuse
        self.config = validate_config(config)
        self.kubeconfig = self.state_dir / f"kubeconfig-{name}"
        self.owner = owner
        self.client = client
        self.progress = progress  # kind's step lines as it creates the cluster
        self.labels = dict(labels or {})  # the shadow's, besides its owner's (a kept cluster's key and expiry)
        self.endpoint = endpoint_of(client) if client is not None else resolve()  # the engine kind drives
        self._api: Any = None

    # --- lifecycle -------------------------------------------------------
    def create(self) -> KindCluster:
        """Create the cluster (or, when reusing, fetch its kubeconfig). Never touches ~/.kube/config."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.reuse:
            result = self._kind("get", "kubeconfig", "--name", self.name)
            if not result.ok:
                raise ClusterError(f"cannot reuse KIND cluster {self.name!r}: {_last_error(result)}; "
                                   "check `kind get clusters` or drop --kind-cluster")
            self.kubeconfig.write_text(result.stdout)
            return self
        argv = ["create", "cluster", "--name", self.name, "--kubeconfig", str(self.kubeconfig), "--wait", self.wait]
        if self.image:
            argv += ["--image", self.image]
        if self.config is not None:
            config_path = self.state_dir / f"kind-config-{self.name}.yaml"
            config_path.write_text(yaml.safe_dump(self.config))
            argv += ["--config", str(config_path)]
        # Before creating: a SIGKILL mid-create still leaves something to reap. A shadow that is
        # already there is another cluster's of this name (kind refuses the clash): never ours to remove.
        shadowed = self._shadow()
        result = self._kind(*argv, steps=True)
        if not result.ok:
            if shadowed:
                self._unshadow()
            raise ClusterError(f"kind create cluster {self.name} failed: {_last_error(result)}\n{tail(result.stderr)}")
        emit("created", "cluster", self.name, self.owner.session if self.owner else "")
        if LABEL_REUSE in self.labels:  # kept for later sessions
            self._remember_kubeconfig()
        return self

    def delete(self) -> None:
        """Delete the cluster; a reused cluster is never deleted."""
        if self.reuse:
            return
        result = self._kind("delete", "cluster", "--name", self.name, "--kubeconfig", str(self.kubeconfig))
        if not result.ok:
            raise ClusterError(f"kind delete cluster {self.name} failed: {_last_error(result)}")
        self._unshadow()
        self._remembered_kubeconfig().unlink(missing_ok=True)
        emit("removed", "cluster", self.name, self.owner.session if self.owner else "")

    def adopt(self) -> str:
        """A cluster kept by an earlier session, for this one: its kubeconfig, its nodes and API
        checked, and what earlier sessions applied removed. Returns what was removed."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.require_nodes()
        remembered = self._remembered_kubeconfig()
        pending = None
        if remembered.is_file():  # kind's own answer costs 0.4 s a session (measured with Podman's nodes)
            shutil.copyfile(remembered, self.kubeconfig)
            with contextlib.suppress(ApiException, HTTPError, OSError):  # stale: the cluster was made again
                pending = _nodes_not_ready(self.api, None, "")
        try:
            if pending is None:
                self._api = None
                result = self._kind("get", "kubeconfig", "--name", self.name)
                if not result.ok:
                    raise ClusterError(f"kind get kubeconfig --name {self.name} failed: {_last_error(result)}")
                self.kubeconfig.write_text(result.stdout)
                pending = _nodes_not_ready(self.api, None, "")
        except (ApiException, HTTPError, OSError) as exc:
            raise ClusterError(f"its API server does not answer ({str(exc).splitlines()[0][:200]})") from None
        if pending:
            raise ClusterError(f"not ready: {', '.join(pending)}")
        self._remember_kubeconfig()
        return kind_reset.reset(self.api, self.helm_uninstall)

    def _remembered_kubeconfig(self) -> Path:
        """This user's copy of a kept cluster's kubeconfig, for the next session that adopts it."""
        return state_root() / "kept" / f"kubeconfig-{self.name}"

    def _remember_kubeconfig(self) -> None:
        remembered = self._remembered_kubeconfig()
        remembered.parent.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(self.kubeconfig, remembered)

    def helm_uninstall(self, release: str, namespace: str = "default") -> None:
        result = _run([self.helm_bin, "uninstall", release, "--namespace", namespace, "--kubeconfig",
                       str(self.kubeconfig), "--wait", "--timeout", "120s"], timeout=180)
        if not result.ok:
            raise ClusterError(f"helm uninstall {release} --namespace {namespace} failed: {_last_error(result)}")

    def require_nodes(self) -> None:
        """Every node container of the cluster running, or one line naming the cluster and what became of
        which node: a killed node fails every kubectl after it with a timeout that names nothing."""
        lost = self.lost_nodes()
        if lost:
            raise ClusterError(f"KIND cluster {self.name} lost {', '.join(lost)} mid-run; a node container was "
                               f"stopped, killed or removed (docker ps -a --filter label={KIND_CLUSTER_LABEL}="
                               f"{self.name}); the session deletes the cluster at its end: rerun the tests")

    def lost_nodes(self) -> list[str]:
        """Its node containers that are not running, with their status; all of them when none is left of
        a cluster we created (a reused one's nodes may be on an engine we do not see)."""
        if self.client is None:
            return []
        found = self.client.api.containers(all=True, filters={"label": [f"{KIND_CLUSTER_LABEL}={self.name}"]})
        if not found:
            return [] if self.reuse else ["every node container (none is left)"]
        return [f"node {node['Names'][0].lstrip('/')} ({node.get('Status') or node.get('State')})"
                for node in found if node.get("State") != "running"]

    def export_logs(self, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        result = self._kind("export", "logs", str(dest), "--name", self.name)
        if not result.ok:
            raise ClusterError(f"kind export logs for {self.name} failed: {_last_error(result)}")
        return dest

    def __enter__(self) -> KindCluster:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def _kind(self, *args: str, timeout: Optional[float] = 900, steps: bool = False) -> Result:
        """kind; with `steps`, its status lines (which node step, the wait for Ready) go to progress as they come."""
        argv, env = [self.kind_bin, *args], kind_environment(self.endpoint)
        if not steps or self.progress is None:
            return _run(argv, timeout=timeout, env=env)
        log = self.state_dir / f"kind-{args[0]}-{self.name}.log"
        with follow(log, self.progress, KIND_STEP):
            return _run(argv, timeout=timeout, env=env, stderr_log=log)

    # The labelled volume that lets the reaper find a cluster whose owner died, and delete it as this
    # process would: with kind, its provider and the kubeconfig that holds the cluster's entries.
    def _shadow(self) -> bool:
        """Label the cluster's name with its owner; False if a shadow of that name exists already."""
        import docker

        if self.owner is None or self.client is None:
            return False
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.inspect_volume(f"{self.name}-owner")
            return False
        labels = {**self.owner.labels("kind"), **self.labels, LABEL_CLUSTER: self.name, LABEL_KIND_BIN: self.kind_bin,
                  LABEL_PROVIDER: provider(), LABEL_KUBECONFIG: str(self.kubeconfig)}
        self.client.api.create_volume(name=f"{self.name}-owner", labels=labels)
        return True

    def _unshadow(self) -> None:
        if self.owner is None or self.client is None:
            return
        import docker

        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_volume(f"{self.name}-owner", force=True)

    # --- use -------------------------------------------------------------
    def kubectl(self, *args: str, check: bool = True, timeout: Optional[float] = 300) -> Result:
        result = _run([self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args], timeout=timeout)
        return result.check() if check else result

    @property
    def api(self) -> Any:
        """A kubernetes ApiClient for this cluster (needs the `kind` extra)."""
        if self._api is None:
            try:
                from kubernetes import config as kube_config
            except ImportError as exc:
                raise ConfigError("the kubernetes client is missing; pip install 'pytest-buildenv[kind]'") from exc
            self._api = kube_config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api

    def load_image(self, tag_or_archive: str) -> None:
        """Into every node: `kind load image-archive` for a file; for a tag on the session's engine,
        `kind load docker-image` when that engine is Docker (kind saves it with the Docker CLI), else
        (Podman) the image saved from the engine and loaded as an archive."""
        if Path(tag_or_archive).is_file():
            result = self._kind("load", "image-archive", str(tag_or_archive), "--name", self.name)
        elif self.client is None:
            result = self._kind("load", "docker-image", tag_or_archive, "--name", self.name)
        else:
            image = self._local_image(tag_or_archive)
            if describe(self.client).product == "Docker":
                result = self._kind("load", "docker-image", tag_or_archive, "--name", self.name)
            else:
                result = self._load_from_podman(image, tag_or_archive)
        if not result.ok:
            raise ClusterError(f"kind load of {tag_or_archive} into {self.name} failed: {_last_error(result)}")

    def _load_from_podman(self, image: Any, tag: str) -> Result:
        """Podman names what it builds localhost/NAME, and saves it so: in the nodes a pod's `image:
        NAME` would then not be found (the kubelet reads it as docker.io/NAME). The archive names
        the image as the kubelet reads it; one archive per call, as workers load at once."""
        archive = self.state_dir / f"image-{uuid.uuid4().hex[:12]}.tar"
        try:
            save_as(image, kubelet_reference(tag), archive)
            return self._kind("load", "image-archive", str(archive), "--name", self.name)
        finally:
            archive.unlink(missing_ok=True)

    def _local_image(self, tag: str) -> Any:
        import docker

        assert self.client is not None
        try:
            return self.client.images.get(tag)
        except docker.errors.ImageNotFound:
            raise ClusterError(f"image {tag!r} is not on the engine at {where(self.client)}; build or pull it "
                               "before load_image()") from None

    def apply(self, manifest: Union[str, Path], namespace: str = "default") -> list[Any]:
        """Create every object of a (multi-document) manifest, given as a path or as YAML text."""
        from kubernetes import utils

        text = manifest.read_text() if isinstance(manifest, Path) else str(manifest)
        if "\n" not in text and Path(text).is_file():
            text = Path(text).read_text()
        created = []
        for document in yaml.safe_load_all(text):
            if document:
                created.extend(utils.create_from_dict(self.api, document, namespace=namespace))
        return created

    def helm_install(self, release: str, chart: str, values: Optional[Mapping[str, Any]] = None,
                     namespace: Optional[str] = None, timeout: str = "5m") -> Result:
        argv = [self.helm_bin, "upgrade", "--install", release, chart, "--kubeconfig", str(self.kubeconfig),
                "--wait", "--timeout", timeout]
        if namespace:
            argv += ["--namespace", namespace, "--create-namespace"]
        if values:
            values_file = self.state_dir / f"values-{release}.yaml"
            values_file.write_text(yaml.safe_dump(dict(values)))
            argv += ["--values", str(values_file)]
        result = _run(argv, timeout=None)
        if not result.ok:
            # helm's own words lead; when the release was made (it rendered, then did not become ready),
            # what the cluster says of the pods. No release: the chart itself failed (a template error).
            lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
            error = next((line for line in reversed(lines) if line.startswith("Error:")), _last_error(result))
            scope = ["--namespace", namespace] if namespace else []
            made = _run([self.helm_bin, "status", release, "--kubeconfig", str(self.kubeconfig), *scope], timeout=60).ok
            pending = self._not_ready("pod", None, namespace or "default") if made else []
            raise ClusterError(f"helm install {release} ({chart}) failed: {error}"
                               + (f"; not ready: {', '.join(pending)}" if pending else "") + f"\n{tail(result.stderr)}")
        return result

    def wait_ready(self, what: str = "deployment", name: Optional[str] = None, namespace: str = "default",
                   timeout: float = 180, interval: float = 0.5) -> None:
        """Poll the API until deployments, pods or nodes are ready; else say which are not."""
        deadline = time.monotonic() + timeout
        while True:
            pending = self._not_ready(what, name, namespace)
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(f"not ready after {timeout:g} s in {self.name}: {', '.join(pending)}")
            time.sleep(interval)

    def _not_ready(self, what: str, name: Optional[str], namespace: str) -> list[str]:
        checks = {"deployment": _deployments_not_ready, "pod": _pods_not_ready, "node": _nodes_not_ready}
        check = checks.get(what.rstrip("s"))
        if check is None:
            raise ConfigError(f"wait_ready() knows deployment, pod and node, not {what!r}")
        return check(self.api, name, namespace)

    @contextlib.contextmanager
    def port_forward(self, target: str, remote_port: int, local_port: Optional[int] = None,
                     namespace: str = "default", timeout: float = 60) -> Iterator[int]:
        """`kubectl port-forward` in the background; yields the local port once it answers."""
        local_port = local_port or _free_port()
        argv = [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), "port-forward", "--namespace", namespace,
                "--address", "127.0.0.1", target, f"{local_port}:{remote_port}"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + timeout
            while not _answers(local_port):
                if proc.poll() is not None:
                    raise ClusterError(f"kubectl port-forward {target} exited {proc.returncode}: "
                                       f"{(proc.stderr.read() if proc.stderr else '').strip()[-300:]}")
                if time.monotonic() >= deadline:
                    raise ClusterError(f"port-forward to {target}:{remote_port} did not answer within {timeout:g} s")
                time.sleep(0.1)
            yield local_port
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def _deployments_not_ready(api: Any, name: Optional[str], namespace: str) -> list[str]:
    """Each deployment short of ready replicas, with why its pods are not ready."""
    from kubernetes import client as k8s

    apps: Any = k8s.AppsV1Api(api)
    items = [apps.read_namespaced_deployment(name, namespace)] if name else apps.list_namespaced_deployment(namespace).items
    pending = []
    for d in items:
        if (d.status.ready_replicas or 0) >= (d.spec.replicas or 0):
            continue
        selector = ",".join(f"{k}={v}" for k, v in (d.spec.selector.match_labels or {}).items())
        pods = k8s.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
        why = [reason for p in pods if (reason := _pod_not_ready(api, p))]
        pending.append(f"deployment/{d.metadata.name} ({d.status.ready_replicas or 0}/{d.spec.replicas} ready"
                       + (f": {'; '.join(why)}" if why else "") + ")")
    return pending


def _pods_not_ready(api: Any, name: Optional[str], namespace: str) -> list[str]:
    from kubernetes import client as k8s

    core: Any = k8s.CoreV1Api(api)
    items = [core.read_namespaced_pod(name, namespace)] if name else core.list_namespaced_pod(namespace).items
    return [reason for p in items if (reason := _pod_not_ready(api, p))]


# What a user of a KIND cluster does about a container that cannot start, by the kubelet's reason.
_PULL_REMEDY = ("the nodes could not pull it: kind_cluster.load_image({image!r}) puts a local image in "
                "every node (with imagePullPolicy IfNotPresent or Never)")
_REMEDIES = {
    **REMEDIES,
    "ErrImageNeverPull": "the image is not in the cluster's nodes: kind_cluster.load_image({image!r}) first",
    "ErrImagePull": _PULL_REMEDY,
    "ImagePullBackOff": _PULL_REMEDY,  # the same cause, after the kubelet's back-off
}


def _pod_not_ready(api: Any, pod: Any) -> str:
    return pod_not_ready(api, pod, _REMEDIES)


def _nodes_not_ready(api: Any, name: Optional[str], namespace: str) -> list[str]:
    from kubernetes import client as k8s

    items = [n for n in k8s.CoreV1Api(api).list_node().items if name is None or n.metadata.name == name]
    if not items:
        return ["no nodes yet"]
    pending = []
    for n in items:
        ready = next((c for c in n.status.conditions or [] if c.type == "Ready"), None)
        if ready is None or ready.status != "True":
            pending.append(f"node/{n.metadata.name}" + (f" ({ready.message})" if ready and ready.message else ""))
    return pending


def kubelet_reference(name: str) -> str:
    """An image name as the kubelet resolves a pod's `image:` (Docker's rules): a registry only when
    the first part looks like a host, docker.io and library/ otherwise, :latest when untagged."""
    repository, at, digest = name.partition("@")
    first, _, rest = repository.partition("/")
    if not rest:
        repository = f"docker.io/library/{repository}"
    elif "." not in first and ":" not in first and first != "localhost":
        repository = f"docker.io/{repository}"
    if at:
        return f"{repository}@{digest}"
    return repository if ":" in repository.rsplit("/", 1)[1] else f"{repository}:latest"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class KindEnv(LocalEnv):
    """A host workspace whose commands run with KUBECONFIG pointing at the throwaway cluster."""

    kind = "kind"

    def __init__(self, workspace: Path, cluster: KindCluster, *, environment: Optional[Mapping[str, str]] = None,
                 timeout: Optional[float] = None) -> None:
        super().__init__(workspace, environment={**(environment or {}), "KUBECONFIG": str(cluster.kubeconfig)},
                         timeout=timeout)
        self.cluster = cluster


# --- the session-wide manager ------------------------------------------------------------
class Clusters:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._clusters: dict[str, KindCluster] = {}

    @property
    def client(self) -> docker.DockerClient:
        return self.services.engine.client

    def open(self, settings: KindSettings, workspace: Path, test: TestInfo) -> KindEnv:
        cluster = self.cluster_for(settings)
        cluster.require_nodes()
        return KindEnv(workspace, cluster, environment=settings.environment, timeout=settings.timeout)

    def cluster_for(self, settings: KindSettings) -> KindCluster:
        """The session's cluster for these settings: created by the first process that asks."""
        key = settings.cluster_key
        if key not in self._clusters:
            def create() -> dict[str, Any]:
                if self.services.reuse.enabled("kind") and not settings.cluster:
                    return self._kept(settings)
                name = settings.cluster or f"buildenv-{self.services.owner.session}-{key[:6]}"
                self.services.progress(f"reusing KIND cluster {name}" if settings.cluster
                                       else f"creating KIND cluster {name}")
                self._handle(name, bool(settings.cluster), settings.kind_bin, settings).create()
                return {"type": "kind", "name": name, "reuse": bool(settings.cluster), "kind_bin": settings.kind_bin}

            record = self.services.shared.get_or_create(f"kind-{key}", create)
            self._clusters[key] = self._handle(record["name"], record["reuse"], record["kind_bin"])
        return self._clusters[key]

    def _kept(self, settings: KindSettings) -> dict[str, Any]:
        """A free cluster kept by an earlier session with the same key, claimed, checked and reset; else a
        new one to keep. Sessions of one key at once get one each (the claims are reuse.py's)."""
        key, owner = self._reuse_key(settings), self.services.session_owner
        pool = Pool("kind", key)
        kept = {item.name: item for item in leftovers(self.services, None) if item.labels.get(LABEL_REUSE) == key}
        with pool.locked():
            free = [name for name in sorted(kept) if pool.free(name, owner) and not expired(kept[name].labels)]
            names = (f"buildenv-reuse-{key[:10]}-{n}" for n in itertools.count())
            name = free[0] if free else next(n for n in names if n not in kept and pool.free(n, owner))
            pool.take(name, owner)
        try:
            cluster = self._handle(name, False, settings.kind_bin, settings,
                                   labels=kept_labels(key, self.services.reuse.ttl))
            if not (free and self._adopted(cluster, kept[name])):
                self.services.progress(f"creating KIND cluster {name}, kept for later sessions (ini buildenv_reuse; "
                                       f"key {key[:10]}, expires in {ago(self.services.reuse.ttl)})")
                cluster.create()
                kind_reset.record_baseline(cluster.api)
        except BaseException:
            pool.release(name, owner)
            raise
        return {"type": "kind", "name": name, "reuse": False, "kept": key, "kind_bin": settings.kind_bin}

    def _adopted(self, cluster: KindCluster, item: Labelled) -> bool:
        """Adopt a kept cluster; False (after deleting it) if it fails its check, to be made again."""
        started = time.monotonic()
        try:
            removed = cluster.adopt()
        except ClusterError as exc:
            self.services.progress(f"kept KIND cluster {cluster.name} failed its check "
                                   f"({str(exc).splitlines()[0]}); deleting it, to make it again")
            cluster.delete()
            return False
        made = ago(time.time() - float(item.labels.get(LABEL_CREATED, "0") or 0))
        said = (f"reused KIND cluster {cluster.name} (ini buildenv_reuse; key {item.labels[LABEL_REUSE][:10]}, "
                f"made {made} ago), ready in {time.monotonic() - started:.1f} s: {removed}")
        self.services.progress(said)
        self.services.notices.append(said)
        return True

    def _reuse_key(self, settings: KindSettings) -> str:
        """Everything that made a cluster: kind's version and provider, the node image (by its ID when the
        engine has it: a rebuilt image of the same tag is another cluster), the config."""
        import docker

        image_id = None
        if settings.image:
            with contextlib.suppress(docker.errors.APIError):
                image_id = self.client.api.inspect_image(settings.image)["Id"]  # type: ignore[no-untyped-call]
        made_of = ["kind", _version([settings.kind_bin, "version"]), provider(), settings.image, image_id,
                   validate_config(settings.config)]
        return hashlib.sha256(json.dumps(made_of, default=str, sort_keys=True).encode()).hexdigest()[:16]

    def close(self, env: BuildEnv) -> None:
        env.close()

    def describe_kept(self, env: BuildEnv) -> str:
        return f"kind workspace {env.workspace}"

    def finish(self, end: SessionEnd) -> None:
        """Session owner: export logs (if the run failed), then delete each cluster we made (or keep it)."""
        if not end.session_owner:
            return
        for record in self.services.shared.records().values():
            if record.get("type") != "kind":
                continue
            cluster = self._handle(record["name"], record["reuse"], record["kind_bin"])
            if end.failed and end.artifacts is not None:
                cluster.export_logs(end.artifacts / f"kind-{cluster.name}")
            if self.services.owner.keep:
                end.kept.append(f"kind cluster {cluster.name}: KUBECONFIG={cluster.kubeconfig} "
                                f"(kind delete cluster --name {cluster.name})")
            if record.get("kept"):
                self._let_go(cluster, record["kept"])
            elif not record["reuse"] and not self.services.owner.keep:
                cluster.delete()

    def _let_go(self, cluster: KindCluster, key: str) -> None:
        """A kept cluster, reset for a later session (whose adoption then has little left to do), and ours
        no more, whether the reset worked or not (the adopter resets it again). Kept with --buildenv-keep,
        it is left as the tests left it, to be looked at."""
        try:
            if self.services.owner.keep:
                return
            removed = kind_reset.reset(cluster.api, cluster.helm_uninstall, wait=False)
            self.services.notices.append(f"kept KIND cluster {cluster.name} for later sessions (ini buildenv_reuse), "
                                         f"after this session's things went: {removed}")
        finally:
            Pool("kind", key).release(cluster.name, self.services.session_owner)

    def _handle(self, name: str, reuse: bool, kind_bin: str, settings: Optional[KindSettings] = None,
                labels: Optional[Mapping[str, str]] = None) -> KindCluster:
        """A handle on a session cluster; `settings` and `labels` only matter to the process that creates it."""
        options: dict[str, Any] = {}
        if settings is not None:
            options = {"image": settings.image, "config": settings.config, "wait": settings.wait,
                       "progress": self.services.progress, "labels": labels}
        # Clusters belong to the process that outlives every worker.
        return KindCluster(name, self.services.shared.directory, kind_bin=kind_bin, reuse=reuse,
                           owner=self.services.session_owner, client=self.client, **options)


def check(services: Services, defaults: Mapping[str, Any]) -> Check:
    """kind on PATH and the engine it drives; kubectl and helm are reported, not required."""
    kind_bin = str(defaults.get("kind_bin") or "kind")
    tools = {name: _version(argv) for name, argv in (("kind", [kind_bin, "version"]),
                                                      ("kubectl", ["kubectl", "version", "--client"]),
                                                      ("helm", ["helm", "version", "--short"]))}
    found = "; ".join(f"{name}: {v or 'not on PATH'}" for name, v in tools.items())
    if tools["kind"] is None:
        return Check(False, f"`{kind_bin}` executable not found on PATH ({found})",
                     "install kind (a release binary from kind.sigs.k8s.io) on PATH, or pass --kind-bin")
    engine = probe(services.endpoint)
    if not engine.ok:
        return Check(False, f"{found}; {engine.detail}", engine.fix)
    uses = {"kubectl": ".kubectl() and .port_forward()", "helm": ".helm_install()"}
    missing = [f"{name} missing: {uses[name]} will fail" for name in uses if tools[name] is None]
    nodes = f"nodes on {provider()}" + (" (KIND_EXPERIMENTAL_PROVIDER)" if provider() != "docker" else "")
    return Check(True, f"{found}; {nodes}" + (f" ({'; '.join(missing)})" if missing else ""))


def _version(argv: list[str]) -> Optional[str]:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "?"


def leftovers(services: Services, session: Optional[str]) -> Iterator[Labelled]:
    """Clusters we created, by the labelled volume that shadows each; removing one removes its nodes."""
    client = services.engine.client
    api = client.api
    # One label in the query, the other checked here: Podman's API matches a volume having *any* of
    # several labels (Docker: all), and one session's sweep then deleted every session's clusters.
    owned = f"{LABEL_SESSION}={session}" if session else ANY_OWNED["label"][0]
    for volume in api.volumes(filters={"label": [owned]}).get("Volumes") or []:
        cluster = (volume.get("Labels") or {}).get(LABEL_CLUSTER)
        if cluster is None:
            continue
        remove = partial(_remove_cluster, api, services.endpoint, cluster, volume["Name"], volume["Labels"])
        yield Labelled("cluster", volume["Name"], cluster, volume["Labels"], quietly(remove, client))


def _remove_cluster(api: Any, endpoint: Endpoint, cluster: str, shadow_volume: str,
                    labels: Mapping[str, str]) -> None:
    """`kind delete cluster`, with the provider and kubeconfig its creator used, so its nodes go from
    whichever engine kind put them on, and its kubeconfig entries with them; without kind (gone from
    PATH), what kind does on the session's engine: remove the nodes. Then the shadow."""
    argv = [labels.get(LABEL_KIND_BIN, "kind"), "delete", "cluster", "--name", cluster]
    if labels.get(LABEL_KUBECONFIG):
        argv += ["--kubeconfig", labels[LABEL_KUBECONFIG]]
    env = {**kind_environment(endpoint), "KIND_EXPERIMENTAL_PROVIDER": labels.get(LABEL_PROVIDER, "docker")}
    try:
        deleted = _run(argv, timeout=300, env=env).ok
    except ClusterError:  # no kind here
        deleted = False
    if not deleted:
        for node in api.containers(all=True, filters={"label": [f"{KIND_CLUSTER_LABEL}={cluster}"]}):
            api.remove_container(node["Id"], force=True, v=True)
    api.remove_volume(shadow_volume, force=True)


def kept(services: Services) -> list[Labelled]:
    """The clusters kept for later sessions on the session's engine, oldest first."""
    found = [item for item in leftovers(services, None) if LABEL_REUSE in item.labels]
    return sorted(found, key=lambda item: float(item.labels.get(LABEL_CREATED, "0") or 0))


def inventory(services: Services) -> str:
    """For doctor: each kept cluster with its key, age, expiry and holder."""
    found = kept(services)
    return "kept for reuse: " + ("; ".join(f"{item.name} ({describe_kept(item)})" for item in found) if found
                                 else "none (ini buildenv_reuse=kind keeps clusters for later sessions)")


def header(services: Services) -> str:
    """The session header, when clusters are kept: for how long, and how many this engine holds."""
    if not services.reuse.enabled("kind"):
        return ""
    found = kept(services)
    return (f"kind: clusters kept for later sessions (ini buildenv_reuse; each lives {ago(services.reuse.ttl)} from "
            f"when it is made); {len(found)} kept here" + (f": {', '.join(item.name for item in found)}" if found else ""))


KIND = KindSpec(settings=KindSettings, manager=Clusters, check=check, leftovers=leftovers, inventory=inventory,
                header=header, reusable=True)
