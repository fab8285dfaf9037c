"""The KIND kind on a real Kubernetes.

The real kind CLI (Debian's 0.33) creates clusters from the node image .ci/kind-node-image builds
offline: systemd, containerd and runc, a kubelet, and kubeadm's control plane (etcd, the API
server, the controller manager, the scheduler), kube-proxy, CoreDNS and a CNI, all built here from
Go modules and Debian packages. On the host: the real kubectl and helm of the same build.

The CI stage runs this file and examples/kind_app with -n 2, as root (kind's Podman provider;
Docker here refuses privileged containers, and kind's rootless Podman needs cgroup v2, which
these machines lack): KIND_EXPERIMENTAL_PROVIDER=podman, DOCKER_HOST at rootful Podman's socket,
--buildenv=kind,container --kind-bin=<Debian's kind> --kind-image=<the node image>.

Most tests share the session's two-node cluster through `kind_cluster` (marked `SHARED`), each in
a namespace of its own; the lifecycle tests make clusters of their own.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import docker
import pytest
import yaml

from pytest_buildenv import ClusterError, ConfigError
from pytest_buildenv.events import read as read_events
from pytest_buildenv.kinds.kind import KindCluster
from pytest_buildenv.naming import KIND_CLUSTER_LABEL, LABEL_SESSION, Owner, new_session_id

DATA = Path(__file__).parent / "data" / "kind"
BUSYBOX = "buildenv-test/busybox:1"
NODE_PORT = 30080
# The session's cluster: a control plane publishing NODE_PORT on the host, and a worker. CI's stage
# makes it every test's (tests/data/kind/stage.yaml), so that examples/kind_app shares it too.
SHARED = pytest.mark.kind(config=DATA / "two-nodes.yaml")

pytestmark = pytest.mark.kind  # skipped unless --buildenv=kind; an error if kind is missing then


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
def client(suite_endpoint):
    from pytest_buildenv.engine import connect

    return connect(suite_endpoint)  # the suite's engine: the one kind's nodes are on in the kind stage


def nodes(client, name):
    return client.containers.list(all=True, filters={"label": f"{KIND_CLUSTER_LABEL}={name}"})


def node_exec(client, node: str, *argv: str) -> str:
    return client.containers.get(node).exec_run(list(argv)).output.decode()


@pytest.fixture
def namespace(kind_cluster):
    """A namespace of the test's own in the shared cluster (tests on other workers use it too)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kind_cluster.kubectl("create", "namespace", name)
    yield name
    kind_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def busybox_loaded(kind_cluster):
    kind_cluster.load_image(BUSYBOX)
    return BUSYBOX


def pod(name: str, command: str, **spec) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
                           "spec": {"containers": [{"name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
                                                    "command": ["sh", "-c", command]}], **spec}})


# --- the cluster is a real one ----------------------------------------------------------
@SHARED
def test_a_real_cluster_of_two_ready_nodes(kind_cluster):
    kind_cluster.wait_ready("nodes", timeout=120)
    listed = json.loads(kind_cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    names = sorted(n["metadata"]["name"] for n in listed)
    assert names == [f"{kind_cluster.name}-control-plane", f"{kind_cluster.name}-worker"]
    versions = {n["status"]["nodeInfo"]["kubeletVersion"] for n in listed}
    runtimes = {n["status"]["nodeInfo"]["containerRuntimeVersion"] for n in listed}
    assert len(versions) == 1 and versions.pop().startswith("v1."), listed
    assert all(r.startswith("containerd://2.") for r in runtimes), runtimes
    # Discovery, which the fake API server never had, is what every kubectl verb starts with.
    resources = kind_cluster.kubectl("api-resources", "-o", "name").stdout.split()
    assert {"deployments.apps", "pods", "customresourcedefinitions.apiextensions.k8s.io"} <= set(resources)
    # The worker's daemon-set pods may still be starting when the cluster first answers: wait for them all.
    kind_cluster.wait_ready("pod", namespace="kube-system", timeout=120)
    system = json.loads(kind_cluster.kubectl("get", "pods", "-n", "kube-system", "-o", "json").stdout)["items"]
    running = {p["metadata"]["name"] for p in system if p["status"]["phase"] == "Running"}
    for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):  # static pods
        assert f"{component}-{kind_cluster.name}-control-plane" in running, running
    for component in ("kube-proxy", "buildenv-cni", "coredns"):
        assert sum(name.startswith(f"{component}-") for name in running) >= (1 if component == "coredns" else 2), running


@SHARED
def test_load_image_lands_in_every_node_under_its_own_name(kind_cluster, client, busybox_loaded):
    for node in (f"{kind_cluster.name}-control-plane", f"{kind_cluster.name}-worker"):
        listed = node_exec(client, node, "crictl", "images", "-o", "json")
        tags = {t for image in json.loads(listed)["images"] for t in image["repoTags"]}
        assert f"docker.io/{BUSYBOX}" in tags, (node, tags)  # what a pod's `image: buildenv-test/busybox:1` means
    with pytest.raises(ClusterError, match="'buildenv-test/absent:1' is not on the engine at "):
        kind_cluster.load_image("buildenv-test/absent:1")


@SHARED
def test_load_image_archive(kind_cluster, client, tmp_path):
    archive = tmp_path / "busybox.tar"
    archive.write_bytes(b"".join(client.images.get(BUSYBOX).save(named=True)))
    kind_cluster.load_image(str(archive))
    listed = node_exec(client, f"{kind_cluster.name}-worker", "crictl", "images")
    assert "buildenv-test/busybox" in listed


@SHARED
def test_pods_on_both_nodes_reach_each_other_through_a_service(kind_cluster, namespace, busybox_loaded):
    """A pod on the worker serves; a pod on the control plane fetches it by the service's DNS name:
    the CNI's routes between nodes, kube-proxy's rules and CoreDNS, for real."""
    worker, control_plane = f"{kind_cluster.name}-worker", f"{kind_cluster.name}-control-plane"
    kind_cluster.apply(pod("web", "mkdir /www && hostname > /www/index.html && httpd -f -p 8080 -h /www",
                           nodeName=worker), namespace=namespace)
    kind_cluster.apply(yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                                       "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
                       namespace=namespace)
    kind_cluster.apply(pod("client", "sleep 3600", nodeName=control_plane), namespace=namespace)
    kind_cluster.wait_ready("pod", namespace=namespace, timeout=120)
    # busybox's nslookup asks CoreDNS for the fully qualified name (the trailing dot: no search
    # domains, so no name outside the cluster); nc sends the request, and only to the service's
    # address (Debian's static busybox wget segfaults).
    address = ""
    for _ in range(20):  # CoreDNS learns of a new service within moments
        answer = kind_cluster.kubectl("exec", "-n", namespace, "client", "--", "nslookup",
                                      f"web.{namespace}.svc.cluster.local.", check=False).stdout
        found = [line.split()[-1] for line in answer.splitlines()[2:] if line.startswith("Address")]
        if found:
            address = found[-1]
            break
        time.sleep(0.5)
    assert address and ipaddress.ip_address(address) in ipaddress.ip_network("10.96.0.0/16"), answer  # kind's services
    fetched = kind_cluster.kubectl("exec", "-n", namespace, "client", "--", "sh", "-c",
                                   f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {address} 80")
    assert fetched.stdout.splitlines()[0].startswith("HTTP/1.") and fetched.stdout.strip().endswith("\nweb"), \
        fetched.stdout  # the worker's pod answered (its hostname is the pod's name)


# --- the kubernetes-API helpers ---------------------------------------------------------
MANIFEST = f"""
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{greeting: hello}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          image: {BUSYBOX}
          imagePullPolicy: Never
          command: [sh, -c, "mkdir /www && echo ok > /www/index.html && httpd -f -p 8080 -h /www"]
          readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
"""


@SHARED
def test_apply_then_wait_ready(kind_cluster, namespace, busybox_loaded):
    from kubernetes import client as k8s

    created = kind_cluster.apply(MANIFEST, namespace=namespace)
    assert [type(o).__name__ for o in created] == ["V1ConfigMap", "V1Deployment"]
    kind_cluster.wait_ready("deployment", "web", namespace=namespace, timeout=120)
    deployment = k8s.AppsV1Api(kind_cluster.api).read_namespaced_deployment("web", namespace)
    assert deployment.status.ready_replicas == 2
    maps = k8s.CoreV1Api(kind_cluster.api).list_namespaced_config_map(namespace).items
    assert [m.data for m in maps if m.metadata.name == "settings"] == [{"greeting": "hello"}]


def deployment(name: str, image: str, command: str = "sleep 3600", **spec) -> str:
    return yaml.safe_dump({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                                    "template": {"metadata": {"labels": {"app": name}},
                                                 "spec": {"containers": [{"name": "main", "image": image,
                                                                          "imagePullPolicy": spec.pop("pull", "Never"),
                                                                          "command": ["sh", "-c", command],
                                                                          **spec.pop("container", {})}],
                                                          **spec}}}})


@SHARED
def test_wait_ready_says_why_each_pod_is_not_ready(kind_cluster, namespace, busybox_loaded):
    kind_cluster.apply(deployment("never-loaded", "buildenv-test/never-loaded:1"), namespace=namespace)
    kind_cluster.apply(deployment("no-registry", "buildenv-test/never-loaded:1", pull="IfNotPresent"), namespace=namespace)
    # Without a readiness probe a crashing container is Ready, as Kubernetes says, for the instant it
    # runs between two crashes (CI saw wait_ready return then, once): a probe it never passes.
    never_ready = {"readinessProbe": {"exec": {"command": ["test", "-e", "/tmp/ready"]}, "periodSeconds": 1}}
    kind_cluster.apply(deployment("crashing", BUSYBOX, "echo the last words; exit 3", container=never_ready),
                       namespace=namespace)
    kind_cluster.apply(deployment("unschedulable", BUSYBOX, nodeSelector={"disk": "none-has-it"}), namespace=namespace)

    def why(name: str, timeout: float) -> str:
        with pytest.raises(ClusterError) as raised:
            kind_cluster.wait_ready("deployment", name, namespace=namespace, timeout=timeout, interval=1)
        message = str(raised.value)
        assert message.startswith(f"not ready after {timeout:g} s in {kind_cluster.name}: deployment/{name} (0/1 ready: pod/")
        assert "\n" not in message
        return message

    assert "ErrImageNeverPull" in (line := why("never-loaded", 20)) and "load_image('buildenv-test/never-loaded:1')" in line
    assert any(reason in (line := why("no-registry", 20)) for reason in ("ErrImagePull", "ImagePullBackOff")), line
    assert "the nodes could not pull it: kind_cluster.load_image('buildenv-test/never-loaded:1')" in line
    crash = why("crashing", 60)  # in CrashLoopBackOff, or Running again between two crashes
    assert re.search(r"(CrashLoopBackOff|restarting \(\d+ restarts\)), exit 3: the last words; the container keeps", crash), crash
    pending = why("unschedulable", 10)
    assert "Pending: 0/2 nodes are available" in pending and "node affinity/selector" in pending, pending
    with pytest.raises(ConfigError, match="knows deployment, pod and node"):
        kind_cluster.wait_ready("statefulset")


# --- helm, port-forward, NodePort: the flow users write -------------------------------------
@SHARED
def node_port_answer(port: int, within: float) -> str:
    """The app's answer on a published NodePort. kube-proxy programs a Service's NodePort after the Service is
    made, on its own schedule (a ready deployment does not wait for it): until then the port refuses (seen
    once in CI). A readiness wait, as for any Service, not a timed assertion."""
    deadline = time.monotonic() + within
    while True:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1)


def test_helm_install_then_reach_the_app_by_port_forward_and_node_port(kind_cluster, client, namespace, busybox_loaded):
    kind_cluster.helm_install("hello", str(DATA / "chart"), namespace=namespace,
                              values={"image": BUSYBOX, "service": {"type": "NodePort", "nodePort": NODE_PORT}})
    kind_cluster.wait_ready("deployment", "hello", namespace=namespace, timeout=120)
    releases = json.loads(subprocess.run([kind_cluster.helm_bin, "list", "-n", namespace, "-o", "json", "--kubeconfig",
                                          str(kind_cluster.kubeconfig)], capture_output=True, text=True, check=True).stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("hello", "deployed")]

    with kind_cluster.port_forward("svc/hello", 80, namespace=namespace) as port:
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode() == "hello from kind\n"

    # kind published the control plane's NodePort on the host (extraPortMappings, hostPort 0).
    bindings = client.containers.get(f"{kind_cluster.name}-control-plane").attrs["NetworkSettings"]["Ports"]
    host_port = int(bindings[f"{NODE_PORT}/tcp"][0]["HostPort"])
    assert node_port_answer(host_port, within=60) == "hello from kind\n"


@SHARED
def test_port_forward_to_nothing_is_kubectls_own_words(kind_cluster, namespace):
    with pytest.raises(ClusterError, match=r"kubectl port-forward svc/missing exited 1: .*services \"missing\" not found"):
        with kind_cluster.port_forward("svc/missing", 80, namespace=namespace):
            pass


@SHARED
def test_a_chart_that_fails_is_helms_own_error(kind_cluster, namespace, busybox_loaded):
    with pytest.raises(ClusterError) as raised:
        kind_cluster.helm_install("broken", str(DATA / "broken-chart"), namespace=namespace)
    first = str(raised.value).splitlines()[0]
    assert first.startswith("helm install broken (") and "failed: Error: template: broken/templates/config.yaml:6:" in first
    assert "nil pointer evaluating interface {}.field" in first, first
    with pytest.raises(ClusterError) as raised:  # installs, but its pods never get ready
        kind_cluster.helm_install("unready", str(DATA / "chart"), namespace=namespace, timeout="15s",
                                  values={"image": "buildenv-test/never-loaded:1"})
    first = str(raised.value).splitlines()[0]
    assert "failed: Error: " in first and "deadline exceeded; not ready: pod/unready-" in first, first
    assert "ErrImageNeverPull" in first, first


@SHARED
def test_export_logs_has_each_nodes_own(kind_cluster, tmp_path):
    dest = kind_cluster.export_logs(tmp_path / "logs")
    for role in ("control-plane", "worker"):
        node = dest / f"{kind_cluster.name}-{role}"
        assert (node / "kubernetes-version.txt").read_text().startswith("v1.")
        assert "Started kubelet" in (node / "journal.log").read_text() or (node / "kubelet.log").stat().st_size > 0
        assert "registry.k8s.io/kube-proxy" in (node / "images.log").read_text()
        assert list((node / "pods").glob("kube-system_kube-proxy-*")), sorted(p.name for p in node.iterdir())


@SHARED
def test_reuse_by_name_never_deletes_and_a_clash_never_touches_the_owner(kind_cluster, client, tmp_path):
    reused = KindCluster(kind_cluster.name, tmp_path / "reused", reuse=True, kind_bin=kind_cluster.kind_bin).create()
    assert yaml.safe_load(reused.kubeconfig.read_text())["current-context"] == f"kind-{kind_cluster.name}"
    reused.delete()
    assert len(nodes(client, kind_cluster.name)) == 2
    clash = KindCluster(kind_cluster.name, tmp_path / "clash", kind_bin=kind_cluster.kind_bin,
                        owner=Owner(new_session_id()), client=client)
    with pytest.raises(ClusterError) as raised:
        clash.create()
    assert str(raised.value).splitlines()[0] == (
        f"kind create cluster {kind_cluster.name} failed: ERROR: failed to create cluster: "
        f'node(s) already exist for a cluster with the name "{kind_cluster.name}"')
    client.volumes.get(f"{kind_cluster.name}-owner")  # the owner's shadow is still there


# --- clusters of their own: lifecycle, bad input --------------------------------------------
@pytest.fixture
def make_cluster(tmp_path, client, kind_bin, node_image):
    made = []

    def make(name, **kwargs):
        kwargs.setdefault("image", node_image)
        cluster = KindCluster(name, tmp_path / "state", kind_bin=kind_bin, owner=Owner(new_session_id()),
                              client=client, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:  # whatever a test left, gone
        subprocess.run([kind_bin, "delete", "cluster", "--name", cluster.name, "--kubeconfig", str(cluster.kubeconfig)],
                       capture_output=True)
        cluster._unshadow()
    for cluster in made:
        assert nodes(client, cluster.name) == [], f"kind left nodes of {cluster.name}"


def test_one_node_cluster_lifecycle_with_an_isolated_kubeconfig(make_cluster, client, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    name = f"bt-{new_session_id()}"
    steps: list[str] = []
    cluster = make_cluster(name, progress=steps.append).create()
    assert [n.name for n in nodes(client, name)] == [f"{name}-control-plane"]
    # kind's steps, as it went: each started and ended, the wait for the control plane among them
    assert "✓ Preparing nodes 📦" in steps and any(line.startswith("✓ Waiting ≤ 2m0s for control-plane") for line in steps), steps
    kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
    assert kubeconfig["current-context"] == f"kind-{name}"
    assert cluster.kubeconfig.parent == tmp_path / "state"
    assert not (tmp_path / "home" / ".kube" / "config").exists(), "never the user's ~/.kube/config"
    assert client.volumes.get(f"{name}-owner").attrs["Labels"]["pytest-buildenv.cluster"] == name
    # One node: kind untaints the control plane, so workloads schedule on it.
    cluster.wait_ready("nodes", timeout=120)
    taints = json.loads(cluster.kubectl("get", "node", f"{name}-control-plane", "-o", "json").stdout)["spec"].get("taints")
    assert not [t for t in taints or [] if t["key"] == "node-role.kubernetes.io/control-plane"], taints
    cluster.delete()
    assert nodes(client, name) == []
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get(f"{name}-owner")
    left = yaml.safe_load(cluster.kubeconfig.read_text())  # kind removes the cluster's entries
    assert not left.get("clusters") and not left.get("contexts") and not left.get("users"), left


def test_missing_node_image_shows_kinds_stderr(make_cluster, client):
    name = f"bt-{new_session_id()}"
    with pytest.raises(ClusterError) as raised:  # no registry here: kind's pull fails
        make_cluster(name, image="kindest/node:v0.0.0-absent").create()
    first = str(raised.value).splitlines()[0]  # the cause (podman's last words), then kind's line
    assert first.startswith(f"kind create cluster {name} failed: Error: initializing source "), first
    assert 'failed to pull image "docker.io/kindest/node:v0.0.0-absent"' in first
    assert nodes(client, name) == []
    with pytest.raises(docker.errors.NotFound):  # the shadow goes too when creation fails
        client.volumes.get(f"{name}-owner")


def test_an_image_that_is_not_a_node_is_kinds_cause_first(make_cluster, client):
    """busybox is no node: it has no init, so kind never sees the node come up."""
    name = f"bt-{new_session_id()}"
    with pytest.raises(ClusterError) as raised:
        make_cluster(name, image=f"localhost/{BUSYBOX}", wait="10s").create()
    first = str(raised.value).splitlines()[0]
    assert first.startswith(f"kind create cluster {name} failed: ") and "ERROR" in first, first
    assert nodes(client, name) == []


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


@pytest.mark.parametrize("given, resolved", [
    ("busybox", "docker.io/library/busybox:latest"), ("team/app:1", "docker.io/team/app:1"),
    ("localhost/app:dev", "localhost/app:dev"), ("registry.example:5000/app", "registry.example:5000/app:latest"),
    ("app@sha256:" + "0" * 64, "docker.io/library/app@sha256:" + "0" * 64)])
def test_images_load_under_the_name_the_kubelet_resolves(given, resolved):
    from pytest_buildenv.kinds.kind import kubelet_reference

    assert kubelet_reference(given) == resolved


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


# --- the plugin in sessions of its own: one cluster per run, shared by xdist workers ---------
PLUGIN_TESTS = """
import os
import pytest

@pytest.mark.parametrize("n", range(3))
def test_cluster(kind_cluster, n):
    assert "Ready" in kind_cluster.kubectl("get", "nodes").stdout

@pytest.mark.kind
@pytest.mark.parametrize("n", range(3))
def test_workspace_sees_kubeconfig(buildenv, n):
    result = buildenv.run("kubectl get nodes -o name", check=True)  # KUBECONFIG is the cluster's
    assert result.stdout.strip() == f"node/{buildenv.cluster.name}-control-plane"

def test_fails(kind_cluster):
    assert False
"""


@pytest.fixture
def run_session(kind_bin, node_image):
    def run(project: Path, log: Path, *args: str, **env: str) -> subprocess.Popen[str]:
        """A session of its own; a later --buildenv in `args` wins over kind alone."""
        return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--buildenv=kind",
                                 f"--kind-bin={kind_bin}", f"--kind-image={node_image}", *args], cwd=project, text=True,
                                env={**os.environ, "PYTEST_BUILDENV_EVENTS": str(log), **env},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return run


@SHARED
@pytest.mark.usefixtures("one_session_at_a_time")
def test_one_cluster_per_run_under_xdist_and_its_logs_when_a_test_fails(tmp_path, client, run_session, kind_cluster):
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_k.py").write_text(PLUGIN_TESTS)
    proc = run_session(project, tmp_path / "e.jsonl", "-n", "2", "--buildenv-artifacts=artifacts")
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 1 and re.search(r"\b1 failed, 6 passed\b", out), out
    events = [e for e in read_events(str(tmp_path / "e.jsonl")) if e["resource"] == "cluster"]
    created = [e["name"] for e in events if e["event"] == "created"]
    removed = [e["name"] for e in events if e["event"] == "removed"]
    assert len(created) == 1 and removed == created, events  # one cluster for both workers
    assert nodes(client, created[0]) == []
    exported = list((project / "artifacts").glob("kind-buildenv-*/*-control-plane/kubelet.log"))
    assert len(exported) == 1 and exported[0].stat().st_size > 0
    # Its end swept its own resources, never another session's: this run's cluster is still here
    # (on Podman, a sweep once took every session's clusters: its API ORs label filters).
    assert len(nodes(client, kind_cluster.name)) == 2


@SHARED
@pytest.mark.usefixtures("one_session_at_a_time")
def test_reaped_after_sigkill(tmp_path, client, wait_written, run_session, kind_cluster):
    project = tmp_path / "project"
    project.mkdir()
    ready = tmp_path / "ready"
    (project / "test_k.py").write_text(
        "import time, pathlib\n"
        "def test_hold(kind_cluster):\n"
        f"    pathlib.Path({str(ready)!r}).write_text(kind_cluster.name)\n"
        "    time.sleep(300)\n")
    proc = run_session(project, tmp_path / "e.jsonl")
    name = wait_written(ready, proc, timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(nodes(client, name)) == 1
    out = subprocess.run([sys.executable, "-m", "pytest_buildenv", "reap"], capture_output=True, text=True).stdout
    assert f"remove: cluster {name} " in out
    assert nodes(client, name) == []
    assert len(nodes(client, kind_cluster.name)) == 2  # the living session's cluster stays


LOSES_ITS_NODE = """
import docker

def test_1_kills_the_node(kind_cluster):
    docker.from_env().containers.get(f"{kind_cluster.name}-control-plane").kill()

def test_2_next(kind_cluster):
    kind_cluster.kubectl("get", "nodes")

def test_3_later(kind_cluster):
    kind_cluster.kubectl("get", "nodes")
"""


@pytest.mark.usefixtures("one_session_at_a_time")
def test_a_node_killed_mid_run_is_one_line_for_every_later_test_and_nothing_is_left(tmp_path, client, run_session):
    """Before: each later test's kubectl failed with `connection refused` on 127.0.0.1:PORT, the API
    server's forwarded port, and kubectl's five lines of retries: nothing named the cluster or the node.
    Now each fails at setup, in one line naming both and what became of the node."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_k.py").write_text(LOSES_ITS_NODE)
    proc = run_session(project, tmp_path / "e.jsonl")
    out = proc.communicate(timeout=600)[0]
    created = [e["name"] for e in read_events(str(tmp_path / "e.jsonl"))
               if e["resource"] == "cluster" and e["event"] == "created"]
    assert len(created) == 1, out
    name = created[0]
    assert re.search(r"\b1 passed, 2 errors\b", out), out
    said = [line for line in out.splitlines() if line.startswith("KIND cluster ")]  # each error's one line
    assert len(said) == 2 and all(line.startswith(f"KIND cluster {name} lost node {name}-control-plane (Exited (137)")
                                  and "mid-run" in line for line in said), out
    assert "Traceback" not in out and "INTERNALERROR" not in out, out
    assert nodes(client, name) == [], "the session deleted its cluster, dead node and all"


CRASHING_WORKER = """
import os, pathlib, signal
import pytest

@pytest.mark.parametrize("n", range(6))
def test_cluster_and_builder(kind_cluster, builder_container, n):
    assert "Ready" in kind_cluster.kubectl("get", "nodes").stdout
    builder_container.run("true", check=True)
    crashed = pathlib.Path(os.environ["CRASHED"])
    if n == 1 and not crashed.exists():
        crashed.write_text(builder_container.name)
        os.kill(os.getpid(), signal.SIGKILL)  # in the middle of the test: its builder and spares are left
"""


@pytest.mark.usefixtures("one_session_at_a_time")
def test_a_worker_killed_mid_test_leaves_the_others_going_and_nothing_behind(tmp_path, client, run_session):
    """kill -9 of one xdist worker mid-test while the session shares a KIND cluster and spare builders:
    the other worker goes on, xdist's replacement joins the same cluster, and the session (not the
    next one) removes the dead worker's builders."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_k.py").write_text(CRASHING_WORKER)
    (project / "tox.ini").write_text(f"[pytest]\nbuildenv_image = {BUSYBOX}\n")
    events = tmp_path / "e.jsonl"
    proc = run_session(project, events, "--buildenv=kind,container", "-n", "2", CRASHED=str(tmp_path / "c"))
    out = proc.communicate(timeout=900)[0]
    assert re.search(r"\b1 failed, 5 passed\b", out) and "crashed" in out, out
    seen = read_events(str(events))
    clusters = [e["name"] for e in seen if e["resource"] == "cluster" and e["event"] == "created"]
    assert len(clusters) == 1 and nodes(client, clusters[0]) == [], seen  # one cluster, the replacement's too
    made = {e["name"]: e["pid"] for e in seen if e["resource"] == "container" and e["event"] == "created"}
    ended = {e["name"] for e in seen if e["resource"] == "container" and e["event"] in ("removed", "reaped")}
    crashed = (tmp_path / "c").read_text()
    assert crashed in made and set(made) <= ended, (made, ended)
    session = {e["session"] for e in seen if e["resource"] == "container"}
    left = [c.name for s in session for c in client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={s}"})]
    assert left == [], left


# --- clusters kept for later sessions (ini buildenv_reuse=kind) -------------------------------
def test_the_reuse_key_is_what_made_the_cluster(client, kind_bin, node_image, tmp_path):
    """The same content is one key, given as a file or as a mapping; another config or node image is
    another key (and so another cluster: kept clusters are named for their key)."""
    from pytest_buildenv.kinds.kind import Clusters, KindSettings
    from pytest_buildenv.services import Services

    clusters = Clusters(Services(Owner(new_session_id())))
    one_node = {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "nodes": [{"role": "control-plane"}]}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(one_node))
    key = clusters._reuse_key(KindSettings(image=node_image, kind_bin=kind_bin, config=one_node))
    assert clusters._reuse_key(KindSettings(image=node_image, kind_bin=kind_bin, config=tmp_path / "one.yaml")) == key
    assert clusters._reuse_key(KindSettings(image=node_image, kind_bin=kind_bin, config=one_node, wait="30s")) == key
    labelled = {**one_node, "nodes": [{"role": "control-plane", "labels": {"tier": "a"}}]}
    assert clusters._reuse_key(KindSettings(image=node_image, kind_bin=kind_bin, config=labelled)) != key
    assert clusters._reuse_key(KindSettings(image=BUSYBOX, kind_bin=kind_bin, config=one_node)) != key


LEAVES_THINGS = f"""
import os, pathlib

def test_leave_things(kind_cluster):
    pathlib.Path(os.environ["SEEN"]).write_text(kind_cluster.name)
    kind_cluster.load_image({BUSYBOX!r})
    kind_cluster.kubectl("create", "namespace", "left")
    kind_cluster.kubectl("create", "configmap", "left-cm", "--from-literal=a=b")
    kind_cluster.helm_install("left", {str(DATA / "chart")!r}, namespace="default")
"""

DIES_HOLDING = """
import os, pathlib, time

def test_dies(kind_cluster):
    kind_cluster.kubectl("create", "namespace", "left2")
    pathlib.Path(os.environ["SEEN"]).write_text(kind_cluster.name)
    time.sleep(600)
"""

RACER = """
import json, os, pathlib, subprocess, time

def test_hold(kind_cluster):
    def names(*args):
        return kind_cluster.kubectl(*args, "-o", "name").stdout.split()
    helm = subprocess.run([kind_cluster.helm_bin, "list", "-A", "-q", "--kubeconfig", str(kind_cluster.kubeconfig)],
                          capture_output=True, text=True, check=True).stdout.split()
    seen = {"name": kind_cluster.name, "namespaces": names("get", "namespaces"), "helm": helm,
            "default": names("get", "deployments,pods,services,configmaps,secrets", "-n", "default")}
    written = pathlib.Path(os.environ["SEEN"] + ".tmp")
    written.write_text(json.dumps(seen))
    written.replace(os.environ["SEEN"])  # whole, as the test reads it
    go = pathlib.Path(os.environ["GO"])
    deadline = time.monotonic() + 600
    while not go.exists() and time.monotonic() < deadline:  # both sessions hold their cluster till then
        time.sleep(0.2)
"""


def _reap(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "pytest_buildenv", "reap", "--buildenv=kind", *args],
                          capture_output=True, text=True, timeout=600).stdout


@pytest.mark.usefixtures("one_session_at_a_time")
def test_a_kept_cluster_is_adopted_reset_raced_for_expired_and_reaped(tmp_path, client, wait_written, run_session,
                                                                     kind_bin):
    """A session keeps its cluster, reset as it lets it go (its namespace, ConfigMap and Helm release
    gone, its loaded image still in the node); a second adopts it and is killed holding it, with a
    namespace of its own made; of two later sessions at once, one adopts it (freed by the death, and
    reset again) and the other makes a second; neither is reaped while held; the second has expired
    (ttl 1s) when its session ends, which deletes it; reap keeps the first, reap --include-reusable
    removes it."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "tox.ini").write_text("[pytest]\nbuildenv_reuse = kind\n")
    (project / "test_k.py").write_text(LEAVES_THINGS)
    first = run_session(project, tmp_path / "e1.jsonl", SEEN=str(tmp_path / "first"))
    out = first.communicate(timeout=900)[0]
    kept = (tmp_path / "first").read_text()
    try:
        assert first.returncode == 0 and "1 passed" in out, out
        assert re.match(r"^buildenv-reuse-[0-9a-f]{10}-0$", kept), kept
        assert f"creating KIND cluster {kept}, kept for later sessions (ini buildenv_reuse; key " in out, out
        assert "left behind: 0" in out and len(nodes(client, kept)) == 1, out  # kept, and not a leftover
        assert "buildenv: kind: clusters kept for later sessions (ini buildenv_reuse; each lives 24.0 h" in out, out
        assert (f"buildenv: kept KIND cluster {kept} for later sessions (ini buildenv_reuse), after this session's "
                "things went: removed 1 Helm release(s), 1 namespace(s) (left) and the default namespace's objects") in out

        (project / "test_k.py").write_text(DIES_HOLDING)
        dies = run_session(project, tmp_path / "e2.jsonl", SEEN=str(tmp_path / "dies"))
        assert wait_written(tmp_path / "dies", dies, timeout=300) == kept
        dies.send_signal(signal.SIGKILL)
        dies.wait()

        (project / "test_k.py").write_text(RACER)
        racers = [run_session(project, tmp_path / f"r{n}.jsonl", "-o", "buildenv_reuse_ttl=1s",
                              SEEN=str(tmp_path / f"seen{n}"), GO=str(tmp_path / "go")) for n in (1, 2)]
        seen = [json.loads(wait_written(tmp_path / f"seen{n}", racer, timeout=600))
                for n, racer in zip((1, 2), racers)]
        held = _reap("--include-reusable", "--dry-run")
        (tmp_path / "go").write_text("")
        outs = [racer.communicate(timeout=300)[0] for racer in racers]
        assert all(r.returncode == 0 and "1 passed" in o and f"; 1 kept here: {kept}\n" in o
                   for r, o in zip(racers, outs)), outs  # each session's header
        names = sorted(s["name"] for s in seen)
        second = kept[:-1] + "1"
        assert names == [kept, second], names  # one each, never one for both
        for name in names:
            assert re.search(rf"keep: cluster {name} .*kept for reuse \(key .*in use by session", held), held
        adopter, adopted = next((o, s) for o, s in zip(outs, seen) if s["name"] == kept)
        assert re.search(rf"reused KIND cluster {kept} \(ini buildenv_reuse; key [0-9a-f]{{10}}, made \d+ .* ago\), "
                         r"ready in [\d.]+ s: removed 0 Helm release\(s\), 1 namespace\(s\) \(left2\)", adopter), adopter
        assert not {"namespace/left", "namespace/left2"} & set(adopted["namespaces"]) and adopted["helm"] == [], adopted
        assert adopted["default"] == ["service/kubernetes", "configmap/kube-root-ca.crt"], adopted
        images = node_exec(client, f"{kept}-control-plane", "crictl", "images")
        assert "buildenv-test/busybox" in images  # what the first session loaded is still there

        # The second was made with buildenv_reuse_ttl=1s: expired when its session let it go, whose
        # sweep then deleted it; the first lives on.
        creator = next(n for n, s in zip((1, 2), seen) if s["name"] == second)
        expired = [e for e in read_events(str(tmp_path / f"r{creator}.jsonl"))
                   if e["event"] == "reaped" and e["name"] == second]
        assert len(expired) == 1 and "expired" in expired[0]["reason"], expired
        reaped = _reap()
        assert re.search(rf"keep: cluster {kept} .*free\); remove with reap --include-reusable", reaped), reaped
        assert nodes(client, second) == [] and len(nodes(client, kept)) == 1
        doctor = subprocess.run([sys.executable, "-m", "pytest_buildenv", "doctor", f"--kind-bin={kind_bin}"],
                                capture_output=True, text=True, timeout=120).stdout
        assert re.search(rf"kept for reuse: {kept} \(key [0-9a-f]{{10}}, made .* ago, expires in .*, free\)", doctor), doctor
    finally:
        reaped = _reap("--include-reusable")
    assert f"remove: cluster {kept} " in reaped, reaped
    assert nodes(client, kept) == [] and nodes(client, kept[:-1] + "1") == []
