"""`python -m pytest_buildenv doctor`: for each kind, usable here or exactly why not, and the fix."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Optional

from .config import KINDS
from .errors import BackendUnavailable


@dataclass(frozen=True)
class Check:
    kind: str
    ok: bool
    detail: str
    fix: str = ""


def _version(argv: list[str]) -> Optional[str]:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else "?"


def _docker() -> Check:
    from .engine import connect

    try:
        client = connect(timeout=10)
    except BackendUnavailable as exc:
        return Check("container", False, str(exc).split(";")[0], str(exc).split("; ", 1)[-1])
    version = client.version()
    client.close()
    return Check("container", True, f"Docker engine {version.get('Version')} (API {version.get('ApiVersion')}) reachable")


def _dind(docker: Check) -> Check:
    if not docker.ok:
        return Check("dind", False, docker.detail, docker.fix)
    from .backends.dind import docker_socket

    try:
        sock = docker_socket()
    except BackendUnavailable as exc:
        return Check("dind", False, str(exc).split(";")[0], "point DOCKER_HOST at a local unix socket")
    gid = sock.stat().st_gid
    detail = f"socket {sock} (group id {gid}) is mounted into dind builders only, with that group added"
    return Check("dind", True, detail)


def _kind(docker: Check, kind_bin: str) -> Check:
    tools = {name: _version(argv) for name, argv in (("kind", [kind_bin, "version"]),
                                                      ("kubectl", ["kubectl", "version", "--client"]),
                                                      ("helm", ["helm", "version", "--short"]))}
    found = "; ".join(f"{name}: {v or 'not on PATH'}" for name, v in tools.items())
    if tools["kind"] is None:
        return Check("kind", False, found, "install kind (a release binary from kind.sigs.k8s.io) on PATH, or pass --kind-bin")
    if not docker.ok:
        return Check("kind", False, f"{found}; {docker.detail}", docker.fix)
    uses = {"kubectl": ".kubectl() and .port_forward()", "helm": ".helm_install()"}
    missing = [f"{name} missing: {uses[name]} will fail" for name in uses if tools[name] is None]
    note = f" ({'; '.join(missing)})" if missing else ""
    return Check("kind", True, found + note)


def _vm() -> Check:
    from .backends import check_vagrant

    vagrant = _version(["vagrant", "--version"])
    kvm = ("/dev/kvm accessible" if os.access("/dev/kvm", os.R_OK | os.W_OK)
           else "/dev/kvm not accessible (QEMU runs under TCG)")
    try:
        check_vagrant()
    except BackendUnavailable as exc:
        detail, _, fix = str(exc).partition("; ")
        return Check("vm", False, f"{detail}; {kvm}", fix)
    return Check("vm", True, f"{vagrant}; vagrant-libvirt; libvirt qemu:///system reachable; {kvm}")


def checks(kind_bin: str = "kind") -> list[Check]:
    docker = _docker()
    found = [Check("local", True, "host workspace; commands run with sh and subprocess"), docker, _dind(docker),
             _kind(docker, kind_bin), _vm()]
    return sorted(found, key=lambda check: KINDS.index(check.kind))


def run_doctor(kinds_text: str = "", write: Callable[[str], None] = print, kind_bin: str = "kind") -> int:
    required = [k.strip() for k in kinds_text.split(",") if k.strip()]
    unknown = [k for k in required if k not in KINDS]
    if unknown:
        write(f"unknown kind {unknown[0]!r}; choose from {', '.join(KINDS)}")
        return 2
    failed = []
    for check in checks(kind_bin):
        write(f"{check.kind:9} {'available' if check.ok else 'unavailable'}: {check.detail}")
        if check.fix and not check.ok:
            write(f"{'':9} fix: {check.fix}")
        if check.kind in required and not check.ok:
            failed.append(check.kind)
    if failed:
        write(f"required but unavailable: {', '.join(failed)}")
        return 1
    return 0
