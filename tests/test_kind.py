"""The KIND kind on the real kind CLI (Debian's kind 0.33), nodes from an offline FAKE NODE image.

kind runs for real: it starts node containers (kind's Podman provider here: Docker on these
machines refuses privileged containers), waits for them, runs kubeadm, kubectl, ctr and crictl in
them, writes the kubeconfig, loads images, exports logs, deletes. What runs *inside* a node is fake
(tests/fakes/kind_node, built by .ci/kind-node-image): no Kubernetes, but a FAKE API server behind
kind's published port, so the kubeconfig kind writes works with the kubernetes client.
The CI stage: KIND_EXPERIMENTAL_PROVIDER=podman, DOCKER_HOST at rootful Podman's socket (where
kind's nodes live), --buildenv=kind --kind-bin=<Debian's kind> --kind-image=<the node image>, as
root (kind's rootless Podman needs cgroup v2; these machines have v1).
tests/test_kind_real.py runs a real cluster (real node image, helm) where one can be had.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import docker
import pytest
import yaml

from pytest_buildenv import ClusterError, ConfigError
from pytest_buildenv.events import read as read_events
from pytest_buildenv.kinds.kind import KindCluster
from pytest_buildenv.naming import KIND_CLUSTER_LABEL, Owner, new_session_id

FAKES = Path(__file__).parent / "fakes"
FAKE_KUBECTL = str(FAKES / "kubectl")  # on the host: only port-forward (no kubectl binary exists here)
sys.path.insert(0, str(FAKES))
from fake_kube_api import FakeKubeAPI  # noqa: E402

# Every test here needs a kind cluster: skipped unless --buildenv=kind, an error if kind is missing then.
# They start pytest sessions of their own, and every session reaps dead owners' resources when it
# starts: one at a time (see one_session_at_a_time in conftest.py).
pytestmark = [pytest.mark.kind, pytest.mark.usefixtures("one_session_at_a_time")]


@pytest.fixture(scope="module")
def kind_bin(pytestconfig):
    return pytestconfig.getoption("kind_bin") or "kind"


@pytest.fixture(scope="module")
def node_image(pytestconfig):
    image = pytestconfig.getoption("kind_image")
    if not image:
        pytest.fail("no node image: pass --kind-image (CI builds one with .ci/kind-node-image)", pytrace=False)
    return image


@pytest.fixture
def client():
    from pytest_buildenv.engine import connect

    return connect()  # the suite's engine: the one kind's nodes are on in the kind stage


@pytest.fixture
def cluster_name():
    return f"bt-{new_session_id()}"


@pytest.fixture
def make_cluster(tmp_path, client, kind_bin, node_image):
    made = []

    def make(name, **kwargs):
        kwargs.setdefault("image", node_image)
        cluster = KindCluster(name, tmp_path / "state", kind_bin=kind_bin, kubectl_bin=FAKE_KUBECTL,
                              owner=Owner(new_session_id()), client=client, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:  # whatever a test left, gone
        subprocess.run([kind_bin, "delete", "cluster", "--name", cluster.name, "--kubeconfig", str(cluster.kubeconfig)],
                       capture_output=True)
        cluster._unshadow()
    for cluster in made:
        assert nodes(client, cluster.name) == [], f"kind left nodes of {cluster.name}"


def node_exec(client, node: str, *argv: str) -> str:
    return client.containers.get(node).exec_run(list(argv)).output.decode()


def nodes(client, name):
    return client.containers.list(all=True, filters={"label": f"{KIND_CLUSTER_LABEL}={name}"})


def test_create_and_delete_with_isolated_kubeconfig(make_cluster, client, cluster_name, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    cluster = make_cluster(cluster_name, config={"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4",
                                                 "nodes": [{"role": "control-plane"}, {"role": "worker"}]})
    cluster.create()
    assert sorted(n.name for n in nodes(client, cluster_name)) == [f"{cluster_name}-control-plane", f"{cluster_name}-worker"]
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    assert kubeconfig["current-context"] == f"kind-{cluster_name}"
    assert cluster.kubeconfig.parent == tmp_path / "state"
    assert not (tmp_path / "home" / ".kube" / "config").exists(), "never the user's ~/.kube/config"
    assert client.volumes.get(f"{cluster_name}-owner").attrs["Labels"]["pytest-buildenv.cluster"] == cluster_name
    cluster.delete()
    assert nodes(client, cluster_name) == []
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get(f"{cluster_name}-owner")
    left = yaml.safe_load(cluster.kubeconfig.read_text())  # kind removes the cluster's entries
    assert not left.get("clusters") and not left.get("contexts") and not left.get("users"), left


def test_name_clash_is_one_line_with_kinds_own_words(make_cluster, cluster_name):
    make_cluster(cluster_name).create()
    with pytest.raises(ClusterError) as raised:
        make_cluster(cluster_name).create()
    first = str(raised.value).splitlines()[0]
    assert first == (f"kind create cluster {cluster_name} failed: ERROR: failed to create cluster: "
                     f'node(s) already exist for a cluster with the name "{cluster_name}"')


def test_missing_node_image_shows_kinds_stderr(make_cluster, cluster_name, client):
    with pytest.raises(ClusterError) as raised:  # no registry here: kind's pull fails
        make_cluster(cluster_name, image="kindest/node:v0.0.0-absent").create()
    first = str(raised.value).splitlines()[0]  # the cause (podman's last words), then kind's line
    assert first.startswith(f"kind create cluster {cluster_name} failed: Error: initializing source "), first
    assert 'failed to pull image "docker.io/kindest/node:v0.0.0-absent"' in first
    assert nodes(client, cluster_name) == []
    with pytest.raises(docker.errors.NotFound):  # the shadow goes too when creation fails
        client.volumes.get(f"{cluster_name}-owner")


def test_an_image_that_is_not_a_node_is_kinds_cause_first(make_cluster, cluster_name, client):
    """busybox is no node: it has no init, so kind never sees the node come up."""
    with pytest.raises(ClusterError) as raised:
        make_cluster(cluster_name, image="localhost/buildenv-test/busybox:1", wait="10s").create()
    first = str(raised.value).splitlines()[0]
    assert first.startswith(f"kind create cluster {cluster_name} failed: ") and "ERROR" in first, first
    assert nodes(client, cluster_name) == []


@pytest.mark.parametrize("name", ["Upper", "under_score", "x" * 51])
def test_invalid_names_are_refused_before_kind_runs(name, tmp_path):
    with pytest.raises(ConfigError, match="KIND cluster name"):
        KindCluster(name, tmp_path)


def test_invalid_configs(tmp_path):
    with pytest.raises(ConfigError, match="kind: Cluster"):
        KindCluster("ok", tmp_path, config={"kind": "Pod"})
    bad = tmp_path / "kind.yaml"
    bad.write_text("kind: Cluster\nnodes: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        KindCluster("ok", tmp_path, config=bad)
    with pytest.raises(ConfigError, match="not found"):
        KindCluster("ok", tmp_path, config=tmp_path / "absent.yaml")


TWO_NODES = {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4",
             "nodes": [{"role": "control-plane"}, {"role": "worker"}]}


def test_load_image_lands_in_every_node(make_cluster, cluster_name, client):
    cluster = make_cluster(cluster_name, config=TWO_NODES).create()
    cluster.load_image("buildenv-test/busybox:1")  # from the session's engine, into each node's containerd
    for node in (f"{cluster_name}-control-plane", f"{cluster_name}-worker"):
        assert "buildenv-test/busybox:1" in node_exec(client, node, "crictl", "images"), node
    with pytest.raises(ClusterError, match="'buildenv-test/absent:1' is not on the engine at "):
        cluster.load_image("buildenv-test/absent:1")


def test_load_image_archive(make_cluster, cluster_name, client, tmp_path):
    cluster = make_cluster(cluster_name).create()
    archive = tmp_path / "app.tar"
    archive.write_bytes(b"".join(client.images.get("buildenv-test/gcc:1").save(named=True)))
    cluster.load_image(str(archive))
    assert "buildenv-test/gcc:1" in node_exec(client, f"{cluster_name}-control-plane", "crictl", "images")


def test_reuse_by_name_never_deletes(make_cluster, cluster_name, client):
    original = make_cluster(cluster_name).create()
    reused = make_cluster(cluster_name, reuse=True).create()
    assert yaml.safe_load(reused.kubeconfig.read_text())["current-context"] == f"kind-{cluster_name}"
    reused.delete()
    assert len(nodes(client, cluster_name)) == 1
    original.delete()
    with pytest.raises(ClusterError, match=f"cannot reuse KIND cluster '{cluster_name}'"):
        make_cluster(cluster_name, reuse=True).create()


def test_export_logs(make_cluster, cluster_name, tmp_path):
    cluster = make_cluster(cluster_name).create()
    dest = cluster.export_logs(tmp_path / "logs")
    node = dest / f"{cluster_name}-control-plane"
    assert (node / "inspect.json").is_file() and (node / "kubernetes-version.txt").read_text().startswith("v1.")
    assert "kubeadm init" in (node / "fake-kubeadm.log").read_text()  # the node's /var/log, as kind dumps it


# --- the kubernetes-API helpers, against the FAKE API server -------------------
MANIFEST = """
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: "buildenv-test/busybox:1"}]
"""


@pytest.fixture
def api_cluster(tmp_path):
    """A handle whose kubeconfig points at a FAKE API server on the host, whose readiness the test steers."""
    pytest.importorskip("kubernetes")
    with FakeKubeAPI(ready_after=3) as api:
        cluster = KindCluster("fake-api", tmp_path, kubectl_bin=FAKE_KUBECTL, reuse=True)
        cluster.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": api.url}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "users": [{"name": "fake", "user": {"token": "fake"}}]}))
        yield cluster, api


def test_apply_and_wait_ready_through_the_kubeconfig_kind_wrote(make_cluster, cluster_name):
    """kind's kubeconfig (TLS to its published port) reaches the node's FAKE API server."""
    pytest.importorskip("kubernetes")
    from kubernetes import client as k8s

    cluster = make_cluster(cluster_name).create()
    cluster.apply(MANIFEST)
    cluster.wait_ready("deployment", "web", timeout=20, interval=0.1)
    cluster.wait_ready("nodes", timeout=20)
    maps = k8s.CoreV1Api(cluster.api).list_namespaced_config_map("default").items
    assert [m.data for m in maps if m.metadata.name == "settings"] == [{"greeting": "hello"}]


def test_apply_multi_document_then_wait_ready(api_cluster):
    cluster, api = api_cluster
    cluster.apply(MANIFEST)
    assert [(m, p) for m, p in api.requests if m == "POST"] == [
        ("POST", "/api/v1/namespaces/default/configmaps"), ("POST", "/apis/apps/v1/namespaces/default/deployments")]
    cluster.wait_ready("deployment", "web", timeout=10, interval=0.05)
    reads = [p for m, p in api.requests if m == "GET" and p.endswith("/deployments/web")]
    assert len(reads) == 3  # it polled until ready, and no longer
    cluster.wait_ready("nodes", timeout=5)


def test_wait_ready_names_what_is_not_ready(api_cluster):
    cluster, api = api_cluster
    api.ready_after = 10 ** 6
    cluster.apply(MANIFEST)
    with pytest.raises(ClusterError, match=r"not ready after 0.3 s in .*: deployment/web \(0/2 ready\)"):
        cluster.wait_ready("deployment", timeout=0.3, interval=0.05)
    api.nodes_ready = False
    with pytest.raises(ClusterError, match="node/fake-control-plane"):
        cluster.wait_ready("node", timeout=0.2, interval=0.05)


def test_port_forward_yields_only_once_the_port_answers(api_cluster):
    cluster, _ = api_cluster
    started = time.monotonic()
    with cluster.port_forward("svc/web", 80) as port:
        waited = time.monotonic() - started
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
    assert body == "forwarded to svc/web:80\n"
    assert waited >= 1.0  # the fake listens after 1 s; we did not return before
    with pytest.raises(ClusterError, match='kubectl port-forward svc/missing exited 1: .*NotFound'):
        with cluster.port_forward("svc/missing", 80):
            pass


# --- the plugin: one cluster per run, shared by xdist workers ------------------
PLUGIN_TESTS = """
import os
import pytest

@pytest.mark.parametrize("n", range(3))
def test_cluster(kind_cluster, n):
    assert os.path.exists(kind_cluster.kubeconfig)

@pytest.mark.kind
@pytest.mark.parametrize("n", range(3))
def test_workspace_sees_kubeconfig(buildenv, n):
    result = buildenv.run("echo $KUBECONFIG", check=True)
    assert result.stdout.strip() == str(buildenv.cluster.kubeconfig)
    assert buildenv.cluster.name.startswith("buildenv-")
"""


@pytest.fixture
def run_session(kind_bin, node_image):
    def run(project: Path, log: Path, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--buildenv=kind",
                                 f"--kind-bin={kind_bin}", f"--kind-image={node_image}", *args], cwd=project, text=True,
                                env={**os.environ, "PYTEST_BUILDENV_EVENTS": str(log)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return run


def test_one_cluster_per_run_under_xdist_and_unique_across_runs(tmp_path, client, run_session):
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_k.py").write_text(PLUGIN_TESTS)
    logs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    procs = [run_session(project, log, "-n", "2") for log in logs]
    for proc in procs:
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, out
        assert "6 passed" in out
    names = []
    for log in logs:
        events = [e for e in read_events(str(log)) if e["resource"] == "cluster"]
        created = [e["name"] for e in events if e["event"] == "created"]
        removed = [e["name"] for e in events if e["event"] == "removed"]
        assert len(created) == 1 and removed == created, events
        names += created
    assert len(set(names)) == 2
    for name in names:
        assert nodes(client, name) == []


def test_failed_run_exports_cluster_logs_to_artifacts(tmp_path, client, run_session):
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_k.py").write_text("def test_fails(kind_cluster):\n    assert False\n")
    proc = run_session(project, tmp_path / "e.jsonl", "--buildenv-artifacts=artifacts")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, out
    exported = list((project / "artifacts").glob("kind-buildenv-*/*-control-plane/inspect.json"))
    assert len(exported) == 1


def test_reaped_after_sigkill(tmp_path, client, wait_written, run_session):
    project = tmp_path / "project"
    project.mkdir()
    ready = tmp_path / "ready"
    (project / "test_k.py").write_text(
        "import time, pathlib\n"
        "def test_hold(kind_cluster):\n"
        f"    pathlib.Path({str(ready)!r}).write_text(kind_cluster.name)\n"
        "    time.sleep(120)\n")
    proc = run_session(project, tmp_path / "e.jsonl")
    name = wait_written(ready, proc, timeout=120)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(nodes(client, name)) == 1
    out = subprocess.run([sys.executable, "-m", "pytest_buildenv", "reap"], capture_output=True, text=True).stdout
    assert f"remove: cluster {name} " in out
    assert nodes(client, name) == []


def test_kinds_own_error_line_leads_with_the_cause():
    # The shape real kind prints when its Docker provider cannot start a node (these machines' Docker
    # refuses privileged containers): kind's own words, kept as printed; the provider cannot run here.
    from pytest_buildenv.kinds.kind import _last_error
    from pytest_buildenv.result import Result

    stderr = ('Creating cluster "x" ...\n \u2717 Preparing nodes\n'
              'ERROR: failed to create cluster: command "docker run --name x-control-plane --hostname '
              'x-control-plane --label io.x-k8s.kind.role=control-plane --privileged kindest/node:v1" '
              'failed with error: exit status 125\n'
              'Command Output: docker: Error response from daemon: unable to apply caps: operation not permitted.\n')
    line = _last_error(Result("kind create cluster", 1, "", stderr, 0.1))
    assert line == ("docker: Error response from daemon: unable to apply caps: operation not permitted. "
                    "(ERROR: failed to create cluster: `docker run ...` failed with error: exit status 125)")
