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
    if kind == "vm":
        check_vagrant()
        return
    raise BackendUnavailable(f"the {kind} kind is not available in pytest-buildenv {__version__}")


def check_vagrant() -> None:
    """vagrant, a provider plugin, a reachable libvirt, and python-vagrant."""
    import subprocess

    if shutil.which("vagrant") is None:
        raise BackendUnavailable("`vagrant` not found on PATH; apt-get install vagrant vagrant-libvirt "
                                 "libvirt-daemon-system qemu-system-x86 (or install Vagrant and a provider)")
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True).stdout
    if "vagrant-libvirt" not in plugins:
        raise BackendUnavailable("no Vagrant provider: vagrant-libvirt is not installed; "
                                 "apt-get install vagrant-libvirt (or vagrant plugin install vagrant-libvirt)")
    probe = subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no answer"])[-1]
        raise BackendUnavailable(f"libvirt unreachable at qemu:///system ({reason}); start libvirtd "
                                 "(and virtlogd), and be root or in the libvirt group")
    try:
        import vagrant  # noqa: F401
    except ImportError:
        raise BackendUnavailable("python-vagrant is missing; pip install 'pytest-buildenv[vm]'") from None


def available(kind: str, kind_bin: str = "kind") -> bool:
    try:
        check_tooling(kind, kind_bin)
    except BackendUnavailable:
        return False
    return True
