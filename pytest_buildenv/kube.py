"""What the kind and pod kinds both ask of a Kubernetes API: a client for a kubeconfig and context, why
a pod is not ready and what a failed call means, in one line each, in the cluster's own words. The
kubernetes client is imported on first use."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import BackendUnavailable, BuildEnvError

# What a user does about a container that cannot start, by the kubelet's reason ({image} is its image).
REMEDIES = {
    "ErrImageNeverPull": "the image is not in the cluster's nodes: load it into them first (kind load docker-image "
                         "{image}), or set image_pull_policy IfNotPresent with a registry they pull from",
    "ErrImagePull": "the nodes could not pull {image}: push it to a registry they pull from, or load it into them "
                    "(kind load docker-image {image})",
    "ImagePullBackOff": "the nodes could not pull {image}: push it to a registry they pull from, or load it into "
                        "them (kind load docker-image {image})",
    "CrashLoopBackOff": "the container keeps exiting: fix its command or image",
    "CreateContainerConfigError": "a ConfigMap or Secret it names is missing",
}


def kubernetes_client() -> Any:
    try:
        from kubernetes import client
    except ImportError:  # a tool missing, as for any kind: doctor says so, an explicit selection fails
        raise BackendUnavailable("the kubernetes client is missing", "pip install 'pytest-buildenv[pod]'") from None
    return client


@dataclass(frozen=True)
class Cluster:
    """Which cluster: a kubeconfig file and one of its contexts (None: its current one)."""

    kubeconfig: Path
    context: Optional[str] = None
    source: str = "the default"  # where the kubeconfig's path came from, for messages

    @classmethod
    def chosen(cls, kubeconfig: Optional[str], context: Optional[str], source: str = "ini buildenv_kubeconfig") -> Cluster:
        """The setting's kubeconfig, else KUBECONFIG's first file, else ~/.kube/config (as kubectl picks)."""
        if kubeconfig:
            return cls(Path(kubeconfig).expanduser(), context or None, source)
        if os.environ.get("KUBECONFIG"):
            return cls(Path(os.environ["KUBECONFIG"].split(os.pathsep)[0]).expanduser(), context or None, "KUBECONFIG")
        return cls(Path.home() / ".kube" / "config", context or None, "the default (~/.kube/config)")

    def describe(self) -> str:
        """'context C of kubeconfig K (from KUBECONFIG)': the context as kubectl would pick it."""
        context = self.context
        if context is None:
            from kubernetes import config as kube_config

            try:
                context = str(kube_config.list_kube_config_contexts(str(self.kubeconfig))[1]["name"]) + " (current)"
            except Exception:  # no current context: api() says so
                context = "(none)"
        return f"context {context} of kubeconfig {self.kubeconfig} (from {self.source})"

    def api(self) -> Any:
        """An ApiClient for this cluster; a kubeconfig or context that is not there is one line."""
        kubernetes_client()
        from kubernetes import config as kube_config

        if not self.kubeconfig.is_file():
            raise BackendUnavailable(f"no kubeconfig at {self.kubeconfig} (from {self.source})",
                                     "point KUBECONFIG or ini buildenv_kubeconfig at your cluster's kubeconfig "
                                     "(kind get kubeconfig --name NAME > FILE)")
        try:
            return kube_config.new_client_from_config(config_file=str(self.kubeconfig), context=self.context)
        except kube_config.ConfigException as exc:
            contexts = ", ".join(c["name"] for c in kube_config.list_kube_config_contexts(str(self.kubeconfig))[0])
            raise BackendUnavailable(f"{self.describe()} cannot be used: {exc}",
                                     f"pick a context it has ({contexts}) with --buildenv-kube-context") from None


def server_of(api: Any) -> str:
    return str(api.configuration.host)


def pod_not_ready(api: Any, pod: Any, remedies: Mapping[str, str] = REMEDIES) -> str:
    """'' for a ready pod; else the pod and why, as the cluster says it: the scheduler's message
    for a Pending pod, the kubelet's reason for a container that does not start (with a crashing
    container's exit code and last words), an init container that failed, the unready containers
    of a running pod."""
    name, status = f"pod/{pod.metadata.name}", pod.status
    if status.phase == "Succeeded":
        return ""
    unscheduled = [c for c in status.conditions or [] if c.type == "PodScheduled" and c.status == "False"]
    if unscheduled:
        return f"{name} Pending: {unscheduled[0].message or unscheduled[0].reason}"
    for c in status.init_container_statuses or []:
        terminated = c.state.terminated if c.state else None
        if terminated and terminated.exit_code:
            return f"{name} init container {c.name} exited {terminated.exit_code}{_last_words(api, pod, c, False)}"
    inits = {c.name for c in status.init_container_statuses or []}
    for c in [*(status.init_container_statuses or []), *(status.container_statuses or [])]:
        waiting = c.state.waiting if c.state else None
        if waiting and waiting.reason not in (None, "ContainerCreating", "PodInitializing"):
            why = f"{name} {f'init container {c.name} ' if c.name in inits else ''}{waiting.reason}"
            if waiting.reason == "CrashLoopBackOff":
                why += _last_words(api, pod, c)
            elif waiting.message:
                why += f": {waiting.message.strip().splitlines()[0][:300]}"
            remedy = remedies.get(waiting.reason)
            return f"{why}; {remedy.format(image=c.image)}" if remedy else why
    unready = [c for c in status.container_statuses or [] if not c.ready]
    if status.phase == "Running" and not unready:
        return ""
    for c in unready:  # between two crashes a container is Running again, and not yet ready
        if c.restart_count and c.last_state and c.last_state.terminated:
            return (f"{name} restarting ({c.restart_count} restarts){_last_words(api, pod, c)}; "
                    f"{remedies['CrashLoopBackOff']}")
    return f"{name} {status.phase}" + (f", not ready: {', '.join(c.name for c in unready)}" if unready else "")


def _last_words(api: Any, pod: Any, container: Any, crashed: bool = True) -> str:
    """', exit 3: <the last lines it printed>' for a container that crashed (or, `crashed` False, exited)."""
    k8s = kubernetes_client()
    state = container.last_state if crashed else container.state
    terminated = state.terminated if state else None
    said = f", exit {terminated.exit_code}" if terminated and crashed else ""
    log = ""
    # The crashed instance's log, else the current one's (a crash loop prints the same): the kubelet
    # keeps one dead instance, and answers "unable to retrieve container logs" once it is removed.
    for previous in (True, False) if crashed else (False,):
        try:
            log = str(k8s.CoreV1Api(api).read_namespaced_pod_log(
                pod.metadata.name, pod.metadata.namespace, container=container.name, previous=previous,
                tail_lines=3) or "")
        except Exception:  # gone with the container: the exit code still says something
            log = ""
        if log and not log.startswith("unable to retrieve container logs"):
            break
        log = ""
    words = " | ".join(line.strip() for line in log.splitlines() if line.strip())
    return f"{said}: {words[-300:]}" if words else said


# --- the API server's answers, in one line --------------------------------------------------
def unreachable(exc: BaseException) -> bool:
    """The API server did not answer (as opposed to answering no)."""
    import urllib3

    if getattr(exc, "status", None) in (0, 502, 503, 504):  # 0: an exec stream's own connection failed
        return True
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def api_error(action: str, exc: BaseException) -> BuildEnvError:
    """The API server's answer: its message, not the client's dump of headers and body."""
    body = getattr(exc, "body", None)
    try:
        message = str(json.loads(body)["message"]) if body else str(exc)
    except (ValueError, KeyError, TypeError):
        message = str(exc)
    fix = ("the kubeconfig's user needs namespaces, pods, pods/exec and configmaps (README: Builder pods)"
           if getattr(exc, "status", None) == 403 else "look at the cluster's events (kubectl get events)")
    return BuildEnvError(f"{action}: the cluster said {message.splitlines()[0] if message else repr(exc)}; {fix}")


def gone(api: Any, action: str, seconds: float = 0, exc: Optional[BaseException] = None) -> BackendUnavailable:
    why = f" ({str(exc).splitlines()[0][:200]})" if exc is not None and str(exc) else ""
    waited = f" for {seconds:g} s" if seconds else ""
    return BackendUnavailable(f"the cluster's API server at {server_of(api)} did not answer{waited} while {action}{why}",
                              "start it again, or point the kubeconfig at one that answers")


def failure(api: Any, action: str, exc: BaseException) -> BuildEnvError:
    """One line for a failed API call: the server gone, or what it said."""
    return gone(api, action, 0, exc) if unreachable(exc) else api_error(action, exc)


MADE_ALREADY, GONE_ALREADY = 409, 404  # the answers that say a create or a delete has nothing left to do


def call(api: Any, action: str, method: Any, *args: Any, fine: int = 0, **kwargs: Any) -> bool:
    """An API call of at most 30 s. An answer of status `fine` (MADE_ALREADY, GONE_ALREADY) is what was
    asked for: False; any other failure is one line (`failure`). True when the call itself succeeded."""
    try:
        method(*args, _request_timeout=30, **kwargs)
    except Exception as exc:
        if fine and getattr(exc, "status", None) == fine:
            return False
        raise failure(api, action, exc) from None
    return True
