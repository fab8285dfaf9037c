"""The Docker engine, reached through the docker SDK, with errors a person can act on."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Iterator

from .errors import BackendUnavailable

if TYPE_CHECKING:
    import docker


def describe_unreachable(exc: BaseException) -> str:
    """One line: where we looked for the daemon, why it failed, what fixes it."""
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    text = str(exc)
    if "Permission denied" in text or "PermissionError" in text:
        remedy = "add your user to the socket's group (usermod -aG docker $USER) and log in again"
    elif os.environ.get("DOCKER_HOST"):
        remedy = "fix or unset DOCKER_HOST, or start the daemon it names"
    else:
        remedy = "start it (systemctl start docker, or dockerd &) or set DOCKER_HOST"
    reason = text.splitlines()[0][:160] if text else type(exc).__name__
    return f"Docker daemon unreachable at {where} ({reason}); {remedy}"


def connect(timeout: int = 60) -> docker.DockerClient:
    """A client that has answered a ping, or BackendUnavailable saying why not."""
    import docker  # lazy: importing the plugin must not import docker

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:  # DockerException, requests' ConnectionError, ...
        raise BackendUnavailable(describe_unreachable(exc)) from exc
    return client


def is_connection_error(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, (requests.exceptions.ConnectionError, ConnectionError))


@contextlib.contextmanager
def daemon_errors(action: str) -> Iterator[None]:
    """Turn 'the daemon went away' mid-operation into one BackendUnavailable line."""
    try:
        yield
    except Exception as exc:
        if is_connection_error(exc):
            raise BackendUnavailable(f"while {action}: {describe_unreachable(exc)}") from exc
        raise
