"""The seed's full KIND flow on a REAL cluster: build an app image, load it, helm install,
wait, reach it through a port-forward, delete. Runs wherever kind, kubectl and helm are on
PATH (and Docker can run kindest/node); skipped elsewhere, saying why."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data" / "kind"


def _real_kind() -> str:
    for tool in ("kind", "kubectl", "helm"):
        if shutil.which(tool) is None:
            return f"needs a real `{tool}` on PATH (this machine has none; tests/test_kind.py covers the fake)"
    version = subprocess.run(["kind", "version"], capture_output=True, text=True).stdout
    if "fake" in version:
        return "the kind on PATH is the contract fake"
    return ""


pytestmark = pytest.mark.skipif(bool(_real_kind()), reason=_real_kind() or "real kind present")


def test_build_load_install_wait_reach_delete(tmp_path):
    import docker

    from pytest_buildenv.kinds.kind import KindCluster
    from pytest_buildenv.engine.images import BuildSpec, ImageBuilder
    from pytest_buildenv.naming import Owner, new_session_id
    from pytest_buildenv.reaper import reap_kinds

    client = docker.from_env()
    owner = Owner(new_session_id())
    builder = ImageBuilder(client, owner)
    image = builder.build(BuildSpec(DATA / "app" / "Dockerfile", DATA / "app"))
    cluster = KindCluster(f"buildenv-{owner.session}-real", tmp_path, owner=owner, client=client)
    try:
        with cluster:
            cluster.wait_ready("nodes", timeout=300)
            cluster.load_image(image)
            cluster.helm_install("hello", str(DATA / "chart"), values={"image": image})
            cluster.wait_ready("deployment", "hello", timeout=300)
            with cluster.port_forward("svc/hello", 80) as port:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
            assert body == "hello from kind\n"
            assert "hello" in cluster.kubectl("get", "deployments", "-o", "name").stdout
        assert cluster.name not in subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True).stdout
    finally:
        reap_kinds(["container", "kind"], session=owner.session, force=True)
