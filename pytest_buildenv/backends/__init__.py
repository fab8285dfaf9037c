"""One module per kind behind the BuildEnv handle; this file says which kinds exist."""

from __future__ import annotations

import shutil

from .. import __version__
from ..errors import BackendUnavailable
from .base import BuildEnv

__all__ = ["BuildEnv", "check_tooling"]


def check_tooling(kind: str, kind_bin: str = "kind") -> None:
    """Return if `kind` can run on this machine, else raise BackendUnavailable saying why."""
    if kind == "local":
        return
    if kind in ("container", "dind", "kind"):
        from ..engine import connect

        if kind == "kind" and shutil.which(kind_bin) is None:
            raise BackendUnavailable(f"`{kind_bin}` executable not found on PATH; install kind "
                                     "(https://kind.sigs.k8s.io) or pass --kind-bin")
        connect().close()
        return
    raise BackendUnavailable(f"the {kind} kind is not available in pytest-buildenv {__version__} yet")


def available(kind: str, kind_bin: str = "kind") -> bool:
    try:
        check_tooling(kind, kind_bin)
    except BackendUnavailable:
        return False
    return True
