"""The container engine (Docker, or anything speaking its API), reached through the docker SDK.

This package holds what every kind on the engine shares: the client and its
errors (here), containers' start and removal (containers.py), images
(images.py), shared network namespaces (netns.py), pre-started builders
(spares.py), host-path translation for runner containers (hostpaths.py), and
finding labelled resources for the reaper (resources.py).
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailable, Check
from .endpoint import Endpoint, describe

if TYPE_CHECKING:
    import docker

# The endpoint each client was made for: messages name the engine a client talks to (no module-wide choice).
_endpoints: weakref.WeakKeyDictionary[Any, Endpoint] = weakref.WeakKeyDictionary()


def endpoint_of(client: docker.DockerClient) -> Endpoint:
    """The engine `client` talks to, and what chose it."""
    return _endpoints.get(client) or Endpoint(str(client.api.base_url), "a client made elsewhere")


def where(client: docker.DockerClient) -> str:
    """The address of the engine `client` talks to, for messages."""
    return endpoint_of(client).url


def describe_unreachable(exc: BaseException, endpoint: Endpoint) -> tuple[str, str]:
    """(cause, remedy): where we looked for the daemon, why it failed, what fixes it."""
    text = str(exc)
    if "Permission denied" in text or "PermissionError" in text:
        remedy = "add your user to the socket's group (usermod -aG docker $USER) and log in again"
    elif endpoint.default:
        remedy = "start it (systemctl start docker, or dockerd &), or name another with --buildenv-engine or DOCKER_HOST"
    else:
        remedy = f"fix or unset {endpoint.source}, or start the daemon it names"
    reason = text.splitlines()[0][:160] if text else type(exc).__name__
    return f"container engine unreachable at {endpoint.url}, from {endpoint.source} ({reason})", remedy


def connect(endpoint: Endpoint, timeout: int = 60) -> docker.DockerClient:
    """A client that has answered a ping, or BackendUnavailable saying why not."""
    try:
        client = _client(endpoint, timeout)
        client.ping()
    except Exception as exc:  # DockerException, requests' ConnectionError, ...
        raise BackendUnavailable(*describe_unreachable(exc, endpoint)) from exc
    return client


def probe(endpoint: Endpoint, timeout: int = 10) -> Check:
    """Whether the engine answers, and what it is: for doctor and explicit selection."""
    try:
        client = _client(endpoint, timeout)
        info = describe(client)
    except Exception as exc:
        return Check(False, *describe_unreachable(exc, endpoint))
    client.close()
    return Check(True, f"{info} at {endpoint.url} (from {endpoint.source})")


def _client(endpoint: Endpoint, timeout: int) -> docker.DockerClient:
    import docker  # lazy: importing the plugin must not import docker

    client = docker.DockerClient(base_url=endpoint.url, timeout=timeout, use_ssh_client=endpoint.url.startswith("ssh://"))
    _endpoints[client] = endpoint
    return client


def not_back(seconds: float, endpoint: Endpoint) -> BackendUnavailable:
    return BackendUnavailable(f"the container engine at {endpoint.url} did not answer within {seconds:g} s",
                              "start it, or raise ini buildenv_engine_wait")


def engine_lost(exc: BaseException) -> bool:
    """Did `exc` come from the engine being unreachable (directly, or as the cause of our own error)?"""
    return is_connection_error(exc) or (isinstance(exc, BackendUnavailable) and exc.__cause__ is not None
                                        and is_connection_error(exc.__cause__))


def is_connection_error(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, (requests.exceptions.ConnectionError, ConnectionError))


def is_read_timeout(exc: BaseException) -> bool:
    """A call the engine took in and never answered within the client's timeout (a stopped daemon)."""
    import requests

    return isinstance(exc, requests.exceptions.ReadTimeout)


@contextlib.contextmanager
def lost_during(action: str, client: docker.DockerClient) -> Iterator[None]:
    """Inside a builder: the engine (or the builder with it) went away mid-way is one line naming the engine."""
    import docker

    try:
        yield
    except Exception as exc:
        gone = isinstance(exc, docker.errors.NotFound) or (
            isinstance(exc, docker.errors.APIError)
            and re.search(r"is not running|exec sessions on running containers", str(exc)))
        if not (gone or is_connection_error(exc)):
            raise
        detail = str(getattr(exc, "explanation", None) or exc).splitlines()[0][:160]
        raise BackendUnavailable(f"the container engine at {where(client)} went away during {action} ({detail})",
                                 "rerun once it is up: the builder went with it") from exc


@contextlib.contextmanager
def daemon_errors(action: str, client: docker.DockerClient) -> Iterator[None]:
    """Turn 'the daemon went away' mid-operation into one BackendUnavailable line."""
    try:
        yield
    except Exception as exc:
        if is_connection_error(exc):
            cause, remedy = describe_unreachable(exc, endpoint_of(client))
            raise BackendUnavailable(f"while {action}: {cause}", remedy) from exc
        raise
