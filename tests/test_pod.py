"""The pod kind on a real Kubernetes: builder pods on the two-node cluster of CI's pod stage.

CI makes that cluster with the real kind CLI from the suite's node image (tests/data/pod/cluster.yaml:
an untainted control plane and a worker, podPidsLimit 4096), loads the suite's images into its nodes,
and runs tests/test_contract.py, this file and examples/hello with -n 2, as the non-root CI user:
KUBECONFIG at the cluster, --buildenv=pod -o buildenv_config=tests/data/pod/contract.yaml.

The settings tests at the top need no cluster (they run in the main stage); the rest are marked pod.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pytest_buildenv import BuildEnvError, ConfigError
from pytest_buildenv.kinds.pod import REFUSED, PodEnv, PodSettings, namespace_of
from pytest_buildenv.naming import LABEL_PID, LABEL_SESSION, Owner
from pytest_buildenv.settings import SettingsLayer, merge

CONTRACT = Path(__file__).parent / "data" / "pod" / "contract.yaml"
ON_CLUSTER = pytest.mark.pod  # skipped unless --buildenv=pod; an error then if the cluster does not answer


# --- settings: no cluster needed --------------------------------------------------------
@pytest.mark.parametrize("key, value", [
    ("dockerfile", "Dockerfile"), ("context", "."), ("target", "base"), ("build_args", {"A": "1"}),
    ("provision", ["apt-get install gcc"]), ("network", "host"), ("ssh_agent", True),
    ("docker_options", {"privileged": True}), ("pids", 100),
])
def test_a_container_setting_that_cannot_apply_is_refused_by_name(key, value, tmp_path):
    assert key in REFUSED
    layer = SettingsLayer({"image": "x", key: value}, tmp_path, "@pytest.mark.pod of test_x")
    with pytest.raises(ConfigError) as raised:
        merge(PodSettings, "pod", [layer])
    line = str(raised.value)
    assert "\n" not in line and f"{key} cannot apply to a pod: {REFUSED[key]}" in line and "test_x" in line


def test_bind_and_bad_values_are_refused_and_copy_is_taken(tmp_path):
    def settings(**values):
        return merge(PodSettings, "pod", [SettingsLayer({"image": "x", **values}, tmp_path, "buildenv.yaml")])

    assert settings(workspace="copy").workspace == "copy"
    for values, words in (({"workspace": "bind"}, "no cluster sees this machine's files"),
                          ({"memory": "lots"}, "memory='lots' is not a size"),
                          ({"deadline": 0}, "deadline=0 must be a positive"),
                          ({"caches": {"c": "/work/c"}}, "caches entry c: '/work/c' must be an absolute path"),
                          ({"image_pull_policy": "Sometimes"}, "image_pull_policy")):
        with pytest.raises(ConfigError, match=words):
            settings(**values)


def test_the_pod_runs_as_you_unprivileged_with_limits_and_a_deadline(tmp_path):
    settings = PodSettings(image="b:1", memory="512m", cpus=1.5, deadline=600)
    spec = PodEnv(None, "ns", settings, tmp_path, Owner("s1"), test="t.py::test_x").manifest()["spec"]
    assert spec["securityContext"]["runAsUser"] == os.getuid() and spec["securityContext"]["fsGroup"] == os.getgid()
    assert spec["securityContext"]["runAsGroup"] == os.getgid()
    assert set(spec["securityContext"]["supplementalGroups"]) == set(os.getgroups()) - {os.getgid()}
    builder = spec["containers"][0]
    assert builder["resources"] == {"limits": {"memory": "512Mi", "cpu": "1500m"},
                                    "requests": {"memory": "512Mi", "cpu": "1500m"}}
    assert builder["securityContext"]["privileged"] is False and not builder["securityContext"]["allowPrivilegeEscalation"]
    assert spec["activeDeadlineSeconds"] == 600 and spec["automountServiceAccountToken"] is False


def test_a_cluster_that_is_not_there_is_one_line_at_session_start(pytester, tmp_path):
    pytester.makepyfile("def test_x(pod_builder):\n    pass\n")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t"}}]}))
    for path, words in ((tmp_path / "absent", f"no kubeconfig at {tmp_path / 'absent'} (from KUBECONFIG)"),
                        (kubeconfig, f"https://127.0.0.1:{port} did not answer")):
        result = _pytest_in(pytester.path, "--buildenv=pod", KUBECONFIG=str(path))
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
        assert result.returncode == 4 and len(errors) == 1 and words in errors[0], result.stderr
        assert "Traceback" not in result.stdout + result.stderr


def test_doctor_without_the_kubernetes_client_says_which_extra(tmp_path):
    code = ("import sys; sys.modules['kubernetes'] = None; from pytest_buildenv.__main__ import main; "
            "sys.exit(main(['doctor', '--buildenv=pod']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "KUBECONFIG": str(tmp_path / "absent")})
    lines = result.stdout.splitlines()
    pod = next(i for i, line in enumerate(lines) if line.startswith("pod "))
    assert result.returncode == 1 and lines[pod].endswith("unavailable: the kubernetes client is missing")
    assert lines[pod + 1].strip() == "fix: pip install 'pytest-buildenv[pod]'" and "Traceback" not in result.stderr


def _pytest_in(path, *args, **env):
    """A pytest session of its own, in `path`, as a real process."""
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=path,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


# --- on the cluster ----------------------------------------------------------------------
@pytest.fixture
def session(pytestconfig):
    from pytest_buildenv.plugin import SESSION_KEY

    return pytestconfig.stash[SESSION_KEY]


@pytest.fixture
def open_pods(session, tmp_path, request):
    """Open pods through the suite's own session (its settings layers: CI's contract.yaml)."""
    opened = []

    def open_(n, **values):
        settings = session.settings("pod", values, Path(request.node.path).parent, request.node.nodeid)
        for i in range(n):
            (tmp_path / f"w{len(opened)}").mkdir()
            opened.append(session.open("pod", settings, tmp_path / f"w{len(opened)}", request.node.nodeid))
        return opened[-n:]

    yield open_
    for env in opened:
        session.close(env)


def core(env):
    from kubernetes import client

    return client.CoreV1Api(env.api)


@ON_CLUSTER
def test_pods_land_on_every_node_in_the_sessions_labelled_namespace(open_pods, session):
    pods = open_pods(4)
    nodes = {n.metadata.name for n in core(pods[0]).list_node().items}
    assert len(nodes) == 2 and {env.node for env in pods} == nodes  # spread by the session's topology constraint
    namespace = core(pods[0]).read_namespace(pods[0].namespace)
    assert pods[0].namespace == namespace_of(session.owner.session)
    assert namespace.metadata.labels[LABEL_SESSION] == session.owner.session
    assert namespace.metadata.annotations[LABEL_PID] == str(session.services.session_owner.pid)
    pod = core(pods[0]).read_namespaced_pod(pods[0].name, pods[0].namespace)
    assert pod.metadata.labels[LABEL_SESSION] == session.owner.session and pod.spec.active_deadline_seconds > 0
    assert pods[0].run("id -u; id -g", check=True).stdout.split() == [str(os.getuid()), str(os.getgid())]
    assert pods[0].run("whoami").stdout.strip() == pwd_name()  # the identity ConfigMap names you
    assert not pods[0].run("ls /var/run/secrets/kubernetes.io").ok  # no service-account token


def pwd_name():
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@ON_CLUSTER
def test_the_header_names_the_cluster_namespace_and_process_limit(session):
    line = next(line for line in session.header_lines() if "pods on cluster" in line)
    assert "Kubernetes v1." in line and f"namespace buildenv-{session.owner.session}" in line
    assert "process limit per pod 4096 (the kubelet's podPidsLimit" in line  # tests/data/pod/cluster.yaml


@ON_CLUSTER
@pytest.mark.pod(image="buildenv-test/notar:1")
def test_an_image_without_tar_find_or_sha256sum_still_copies_the_workspace(pod_builder, tmp_path):
    assert not pod_builder.run("command -v tar || command -v find || command -v sha256sum").ok
    (tmp_path / "in.txt").write_text("to the pod\n")
    pod_builder.put(tmp_path / "in.txt", "in.txt")
    pod_builder.run("mkdir -p out && cat in.txt in.txt > out/twice.txt && rm in.txt", check=True)
    assert pod_builder.artifact("out/twice.txt").read_text() == "to the pod\n" * 2
    assert not (pod_builder.workspace / "in.txt").exists()


@ON_CLUSTER
def test_reproduce_builds_again_in_two_fresh_pods(pod_builder):
    pod_builder.run("echo source > in.txt", check=True)
    report = pod_builder.reproduce("cat /proc/sys/kernel/random/uuid > stamp.txt && cp in.txt copy.txt",
                                   artifacts=["stamp.txt", "copy.txt"])
    assert report.differences == ["stamp.txt"], report


@ON_CLUSTER
def test_user_is_refused_in_one_line(pod_builder):
    with pytest.raises(ConfigError, match=r"run\(user='root'\) cannot apply to a pod"):
        pod_builder.run("id", user="root")


@ON_CLUSTER
def test_files_outside_the_workspace(pod_builder, tmp_path):
    (tmp_path / "big.bin").write_bytes(os.urandom(3 << 20))
    pod_builder.put(tmp_path / "big.bin", "/tmp/big.bin")
    art = pod_builder.artifact("/tmp/big.bin")
    assert art.size == 3 << 20 and art.read_bytes() == (tmp_path / "big.bin").read_bytes()
    back = pod_builder.get("/tmp/big.bin", tmp_path / "back.bin")
    assert back.read_bytes() == (tmp_path / "big.bin").read_bytes() and back.stat().st_uid == os.getuid()
    assert pod_builder.artifact("/tmp/absent").exists is False


@ON_CLUSTER
def test_a_copy_that_arrives_short_or_corrupted_is_refused(pod_builder):
    data = b"0123456789" * 1000
    for size, sha, words in ((len(data) + 10, "0" * 64, "truncated"), (len(data), "0" * 64, "corrupted")):
        argv = ["/.buildenv-sync/bin/sh", "/.buildenv-sync/agent", "unpack", "t1", str(size), sha, "/tmp"]
        code, _, err, _ = pod_builder.agent.exchange(argv, data, 60, "")
        assert code == 125 and words.encode() in err


@ON_CLUSTER
def test_a_dropped_exec_stream_is_picked_up_again(open_pods):
    """The API server's connection is cut while a command runs (through a proxy of our own, as a load
    balancer's would be): the command runs on in the pod, and its whole output comes back."""
    env = open_pods(1)[0]
    proxy = CuttingProxy(env.api.configuration.host)
    direct, env.api = env.api, proxy.client_like(env.api)
    try:
        threading.Timer(1.5, proxy.cut).start()
        result = env.run("echo before; sleep 4; echo after; echo made > made.txt; exit 3")
        assert proxy.cuts == 1 and proxy.connections >= 2  # the run's stream, then the one that picked it up
        assert (result.exit_code, result.stdout) == (3, "before\nafter\n")
        assert (env.workspace / "made.txt").read_text() == "made\n"
    finally:
        env.api = direct
        proxy.close()


class CuttingProxy:
    """A TCP proxy to the API server whose connections can all be cut at once."""

    def __init__(self, server):
        host, port = server.split("//")[1].rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open, self.cuts, self.connections = [], 0, 0
        threading.Thread(target=self._accept, daemon=True).start()

    def client_like(self, api):
        """An ApiClient as `api`, through the proxy (the server's certificate names 127.0.0.1 too)."""
        import copy

        from kubernetes import client

        configuration = copy.copy(api.configuration)
        configuration.host = f"https://127.0.0.1:{self.port}"
        return client.ApiClient(configuration)

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.open += [client, upstream]
            self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        self.cuts += 1
        for s in self.open:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.open = []

    def close(self):
        self.listener.close()
        self.cut()


@ON_CLUSTER
@pytest.mark.parametrize("setting, named", [("image", "ErrImageNeverPull"),
                                            ("helper_image", "init container helper-image ErrImageNeverPull")])
def test_an_image_the_nodes_do_not_have_is_one_line_and_leaves_no_pod(open_pods, session, setting, named):
    with pytest.raises(BuildEnvError) as raised:
        open_pods(1, **{setting: "buildenv-test/never-loaded:1"})
    line = str(raised.value)
    assert "\n" not in line and named in line and "kind load docker-image buildenv-test/never-loaded:1" in line
    pod = line.split("pod ", 1)[1].split()[0]  # "pod NAME cannot start: ..."
    from kubernetes import client

    from pytest_buildenv.kube import Cluster

    try:
        left = client.CoreV1Api(Cluster.chosen(None, None).api()).read_namespaced_pod(
            pod, namespace_of(session.owner.session))
    except client.ApiException as exc:
        assert exc.status == 404
    else:
        assert left.metadata.deletion_timestamp is not None  # deleted, and on its way


@ON_CLUSTER
def test_a_cache_is_a_claim_that_outlives_its_pods(open_pods, session):
    """A cache is a PersistentVolumeClaim in the cache namespace. No provisioner here: the test makes
    the volume it binds to (a hostPath on one node, kept by nodeAffinity; the node's /tmp, which you
    can write to), and removes claim and volume after."""
    from kubernetes import client

    from pytest_buildenv.kinds.pod import caches
    from pytest_buildenv.naming import LABEL_CACHE

    token = secrets.token_hex(3)
    name, klass = f"test-{token}", f"buildenv-test-{token}"
    env = open_pods(1)[0]
    api, node = env.api, env.node
    core = client.CoreV1Api(api)
    core.create_persistent_volume({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": klass}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": klass,
        "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": "/tmp", "type": "Directory"},
        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}})
    cached = {"caches": {name: "/cache"}, "cache_size": "1Gi", "cache_storage_class": klass}
    try:
        first = open_pods(1, **cached)[0]
        assert first.namespace == caches.CACHE_NAMESPACE and first.node == node
        first.run(f"echo warm > /cache/{token}", check=True)
        session.close(first)
        second = open_pods(1, **cached)[0]
        assert second.run(f"cat /cache/{token}; id -u").stdout == f"warm\n{os.getuid()}\n"
        claim = core.read_namespaced_persistent_volume_claim(caches.claim_name(name), caches.CACHE_NAMESPACE)
        assert claim.status.phase == "Bound" and claim.metadata.annotations[LABEL_CACHE] == f"cache:{name}"
        assert f"{name} 1Gi Bound" in caches.held(api)  # what doctor lists
        second.run(f"rm /cache/{token}", check=True)
        session.close(second)
    finally:
        core.delete_namespaced_persistent_volume_claim(caches.claim_name(name), caches.CACHE_NAMESPACE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and caches.claim_name(name) in {
                c.metadata.name for c in core.list_namespaced_persistent_volume_claim(caches.CACHE_NAMESPACE).items}:
            time.sleep(0.5)
        core.delete_persistent_volume(klass)
        if not core.list_namespaced_persistent_volume_claim(caches.CACHE_NAMESPACE).items:
            core.delete_namespace(caches.CACHE_NAMESPACE)  # it held only this test's cache: nothing is left


# --- sessions of their own ----------------------------------------------------------------------
HOLDING_TEST = """
import os, pathlib, time

def test_hold(pod_builder):
    pod_builder.run("echo made > made.txt", check=True)
    pathlib.Path(os.environ["READY"]).write_text(pod_builder.namespace + " " + pod_builder.name)
    time.sleep(120)

def test_fails(pod_builder):
    pod_builder.run("echo kept > kept.txt", check=True)
    assert False
"""


@pytest.fixture
def project(pytester, one_session_at_a_time):
    pytester.makepyfile(test_hold=HOLDING_TEST)
    (pytester.path / "buildenv.yaml").write_text(CONTRACT.read_text())
    return pytester.path


def _namespace_state(namespace):
    """'absent', 'terminating' or 'active'."""
    from kubernetes import client

    from pytest_buildenv.kube import Cluster

    try:
        ns = client.CoreV1Api(Cluster.chosen(None, None).api()).read_namespace(namespace)
    except client.ApiException as exc:
        assert exc.status == 404
        return "absent"
    return "terminating" if ns.metadata.deletion_timestamp else "active"


@ON_CLUSTER
def test_a_killed_sessions_namespace_is_removed_by_the_next_session(project, wait_written):
    ready = project / "ready"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--buildenv=pod",
                             "test_hold.py::test_hold"], cwd=project, env={**os.environ, "READY": str(ready)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    namespace, _pod = wait_written(ready, proc, timeout=120).split()
    proc.kill()
    proc.wait()
    assert _namespace_state(namespace) == "active", "SIGKILL runs no teardown: the namespace is still there"
    dry = subprocess.run([sys.executable, "-m", "pytest_buildenv", "reap", "--dry-run", "--buildenv=pod"],
                         capture_output=True, text=True, timeout=120)
    assert f"would remove: namespace {namespace} (session {namespace.split('-')[1]}: owner pid {proc.pid} is gone)" \
        in dry.stdout, dry.stdout + dry.stderr
    result = _pytest_in(project, "--buildenv=pod", "test_hold.py::test_fails")
    assert f"reaped namespace {namespace} (owner pid {proc.pid} is gone)" in result.stdout, result.stdout
    assert _namespace_state(namespace) == "absent"


@ON_CLUSTER
def test_keep_failed_prints_a_kubectl_exec_that_reaches_the_pod(project):
    result = _pytest_in(project, "--buildenv=pod", "--buildenv-keep=failed", "test_hold.py::test_fails")
    assert result.returncode == 1, result.stdout
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("pod buildenv-"))
    command = line.split(": ", 1)[1].split("   (workspace")[0]
    assert " exec -it -n buildenv-" in command and command.endswith("-- sh -c 'cd /work && exec sh'")
    shown = subprocess.run(command.replace("exec -it", "exec").replace("exec sh'", "cat kept.txt'"), shell=True,
                           capture_output=True, text=True, timeout=60)
    assert shown.stdout == "kept\n", shown.stderr
    namespace = command.split(" -n ")[1].split()[0]
    removed = subprocess.run([sys.executable, "-m", "pytest_buildenv", "reap", "--include-kept", "--buildenv=pod",
                              "--session", namespace.split("-")[1]], capture_output=True, text=True, timeout=120)
    assert f"remove: namespace {namespace}" in removed.stdout, removed.stdout + removed.stderr
    assert _namespace_state(namespace) == "absent"


@ON_CLUSTER
def test_doctor_names_the_cluster_context_and_version():
    result = subprocess.run([sys.executable, "-m", "pytest_buildenv", "doctor", "--buildenv=pod"],
                            capture_output=True, text=True, timeout=120)
    line = next(line for line in result.stdout.splitlines() if line.startswith("pod "))
    assert result.returncode == 0 and "available: cluster https://" in line and "Kubernetes v1." in line
    assert "context kind-" in line and "(from KUBECONFIG)" in line, line

