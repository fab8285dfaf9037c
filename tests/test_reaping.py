"""Throwaway means throwaway: real pytest processes, killed for real, on the real engine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from pytest_buildenv.events import read as read_events
from pytest_buildenv.naming import LABEL_SESSION, Owner
from pytest_buildenv.reaper import judge, reap_kinds
from pytest_buildenv.sharing import state_root

# These tests start pytest sessions of their own, and every session reaps dead owners' resources
# when it starts: one at a time, so that the sessions they kill on purpose are reaped by the one
# each test expects (see one_session_at_a_time in conftest.py).
pytestmark = pytest.mark.usefixtures("one_session_at_a_time")

BUSYBOX = "buildenv-test/busybox:1"

HOLDING_TEST = """
import os, time, pathlib

def test_hold(builder_container):
    pathlib.Path(os.environ["READY"]).write_text(builder_container.name)
    go = pathlib.Path(os.environ["GO"])
    deadline = time.time() + 90
    while not go.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert builder_container.run("echo still here").stdout == "still here\\n"
"""

QUICK_TEST = """
def test_quick(builder_container):
    assert builder_container.run("true").ok
"""


@pytest.fixture
def client():
    return docker.from_env()


class Project:
    """A scratch project whose pytest sessions run as real processes."""

    def __init__(self, root: Path, wait_written) -> None:
        self.root = root
        self.wait_written = wait_written
        (root / "tox.ini").write_text(f"[pytest]\nbuildenv_image = {BUSYBOX}\naddopts = -p no:cacheprovider\n")
        (root / "test_hold.py").write_text(HOLDING_TEST)
        (root / "test_quick.py").write_text(QUICK_TEST)
        self.ready, self.go = root / "ready", root / "go"

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "READY": str(self.ready), "GO": str(self.go), **extra}

    def start_holding(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "test_hold.py", "--buildenv=container", *args],
                                cwd=self.root, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                # A runner started in the background inherits SIGINT ignored; Ctrl-C must reach pytest.
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.wait_written(self.ready, proc, timeout=60)
        return proc

    def container_name(self) -> str:
        return self.ready.read_text()

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=self.root, env=self.env(**env),
                              capture_output=True, text=True, timeout=300)


@pytest.fixture
def project(tmp_path, wait_written):
    return Project(tmp_path, wait_written)


def _exists(client, name: str) -> bool:
    try:
        client.containers.get(name)
    except docker.errors.NotFound:
        return False
    return True


def test_sigkill_leaves_the_container_and_the_next_session_reaps_it(project, client):
    proc = project.start_holding()
    name = project.container_name()
    proc.kill()
    proc.wait()
    assert _exists(client, name), "SIGKILL cannot run teardown: the container must still be there"
    state = state_root() / "sessions" / client.containers.get(name).labels[LABEL_SESSION]
    assert state.is_dir(), "nor remove the session's state directory"
    result = project.run("-m", "pytest", "test_quick.py", "--buildenv=container")
    assert result.returncode == 0, result.stdout
    assert f"reaped container {name} (owner pid {proc.pid} is gone)" in result.stdout
    assert not _exists(client, name)
    assert f"reaped state {state} (owner pid {proc.pid} is gone)" in result.stdout and not state.exists()


def test_reap_command_dry_run_then_remove(project, client):
    proc = project.start_holding()
    name = project.container_name()
    proc.kill()
    proc.wait()
    dry = project.run("-m", "pytest_buildenv", "reap", "--dry-run")
    assert dry.returncode == 0
    assert f"would remove: container {name} " in dry.stdout and f"owner pid {proc.pid} is gone" in dry.stdout
    assert _exists(client, name)
    real = project.run("-m", "pytest_buildenv", "reap")
    assert f"remove: container {name} " in real.stdout
    assert not _exists(client, name), (real.stdout, real.stderr, client.containers.get(name).attrs["State"])


def test_a_live_session_is_never_touched(project, client):
    proc = project.start_holding()
    name = project.container_name()
    try:
        other = project.run("-m", "pytest", "test_quick.py", "--buildenv=container")
        assert other.returncode == 0, other.stdout
        reaped = project.run("-m", "pytest_buildenv", "reap")
        assert f"keep: container {name} " in reaped.stdout and "is alive" in reaped.stdout
        assert client.containers.get(name).status == "running"
    finally:
        project.go.touch()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "1 passed" in out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_tears_down_before_exit(project, client, signum):
    proc = project.start_holding()
    name = project.container_name()
    session = client.containers.get(name).labels[LABEL_SESSION]
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in out
    assert not _exists(client, name)
    assert client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={session}"}) == []


def test_keep_leaves_resources_and_the_printed_command_removes_them(project, client):
    result = project.run("-m", "pytest", "test_quick.py", "--buildenv=container", "--buildenv-keep")
    assert result.returncode == 0, result.stdout
    kept = [line for line in result.stdout.splitlines() if "docker exec -it" in line]
    assert len(kept) == 1
    name = kept[0].split()[1].rstrip(":")
    assert client.containers.get(name).status == "running"
    command = next(line for line in result.stdout.splitlines() if "remove them all with:" in line).split("with: ")[1]
    # the next session must not reap what the user asked to keep
    assert project.run("-m", "pytest", "test_quick.py", "--buildenv=container").returncode == 0
    assert _exists(client, name)
    argv = command.split()
    assert argv[:3] == ["python", "-m", "pytest_buildenv"]
    removed = project.run(*argv[1:])
    assert removed.returncode == 0 and f"remove: container {name}" in removed.stdout
    assert not _exists(client, name)


def test_two_sessions_with_xdist_share_nothing_and_leave_nothing(project, client, tmp_path):
    # In a directory of its own: the project root changes as the sessions run (logs, caches),
    # and a changed context is, rightly, a new image.
    (project.root / "img").mkdir()
    (project.root / "img" / "Dockerfile").write_text(f"FROM {BUSYBOX}\nRUN echo shared > /shared\n")
    (project.root / "test_many.py").write_text("""
import pytest

@pytest.mark.container(dockerfile="img/Dockerfile")
@pytest.mark.parametrize("n", range(6))
def test_many(builder_container, n):
    assert builder_container.run("cat /shared").stdout == "shared\\n"
    builder_container.run(f"touch mine-{n}", check=True)
    assert sorted(p.name for p in builder_container.workspace.iterdir()) == [f"mine-{n}"]
""")
    logs = [tmp_path / f"events-{i}.jsonl" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "pytest", "test_many.py", "-n", "2", "--buildenv=container"],
                              cwd=project.root, env=project.env(PYTEST_BUILDENV_EVENTS=str(log)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for log in logs]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out
        assert "6 passed" in out and "left behind: 0" in out
    events = [read_events(str(log)) for log in logs]
    sessions = [{e["session"] for e in ev if e["event"] == "created"} for ev in events]
    assert all(len(s) == 1 for s in sessions) and sessions[0] != sessions[1]
    names = [e["name"] for ev in events for e in ev if e["event"] == "created" and e["resource"] == "container"]
    # 12 tests, plus the spares pre-started for tests that never came (one per worker, and
    # one that a worker's first test made while it waited): all distinct.
    assert len(names) >= 12 and len(set(names)) == len(names), "no name collides across sessions and workers"
    images = [[e for e in ev if e["event"] == "created" and e["resource"] == "image"] for ev in events]
    assert [len(i) for i in images] == [1, 1], "the shared image is built exactly once per session"
    for session in sessions:
        assert client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={session.pop()}"}) == []


def test_unlabelled_resources_are_never_touched(client):
    stranger = client.containers.run(BUSYBOX, ["sleep", "300"], detach=True)
    try:
        reap_kinds(["container"])
        assert client.containers.get(stranger.id).status == "running"
    finally:
        stranger.remove(force=True)


def test_other_hosts_are_reported_until_old_enough():
    labels = Owner("s1", pid=1, host="elsewhere").labels("container")
    labels["pytest-buildenv.created"] = str(time.time() - 7200)
    here = socket.gethostname()
    assert judge(labels, this_host=here, foreign_max_age=None, include_kept=False)[0] == "report"
    assert judge(labels, this_host=here, foreign_max_age=3 * 3600, include_kept=False)[0] == "report"
    assert judge(labels, this_host=here, foreign_max_age=3600, include_kept=False)[0] == "remove"


def test_kept_resources_need_include_kept():
    labels = Owner("s2", pid=2 ** 22 + 12345, keep=True).labels("container")  # a pid that cannot exist
    here = socket.gethostname()
    assert judge(labels, this_host=here, foreign_max_age=None, include_kept=False)[0] == "keep"
    assert judge(labels, this_host=here, foreign_max_age=None, include_kept=True) == ("remove", f"owner pid {2 ** 22 + 12345} is gone")


def test_a_removal_the_engine_refuses_is_said_and_the_sweep_goes_on(client):
    """The engine refusing one removal (here: a container removed behind the sweep's back, 404) is one
    line, and every other dead owner's resource is still removed."""
    from pytest_buildenv.naming import Labelled
    from pytest_buildenv.reaper import reap
    from pytest_buildenv.services import Services

    dead = Owner("s3", pid=2 ** 22 + 12346).labels("container")  # a pid that cannot exist
    gone, there = (client.containers.create(BUSYBOX, ["true"], labels=dead) for _ in range(2))
    gone.remove()
    found = [Labelled("container", c.id, c.name, dead, lambda c=c: client.api.remove_container(c.id, force=True))
             for c in (gone, there)]
    said: list[str] = []
    findings = reap([lambda services, session: found], Services(Owner("sweeper")), unreachable=said.append)
    assert len(said) == 1 and said[0].startswith("404 Client Error") and gone.id in said[0], said
    assert [f.name for f in findings if f.resource == "container"] == [there.name] and not _exists(client, there.id)
