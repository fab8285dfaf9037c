"""The speed-ups change nothing a test can see. Real sessions, real containers.

Shared network namespaces (netns.py): what an earlier test left listening is
gone before its holder is lent again, two builders open at once never share,
a holder someone removed is replaced, results are the same with sharing off.
Spares (spares.py): pre-started for tests to come, never after the last one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import docker
import pytest

from pytest_buildenv.engine.containers import InvokingUser, wait_for_removals
from pytest_buildenv.kinds.container import BuilderSpec, ContainerEnv
from pytest_buildenv.naming import LABEL_KIND, LABEL_SESSION, Owner, new_session_id
from pytest_buildenv.engine.netns import HOLDERS_PER_NETWORK, SharedNetworks

pytestmark = pytest.mark.usefixtures("one_session_at_a_time")
BUSYBOX = "buildenv-test/busybox:1"

HELPERS = '''
import pathlib
LISTENING = "netstat -ltn | grep -q ':8080 '"
SERVE_IN_BACKGROUND = "nc -l -p 8080 </dev/null >/dev/null 2>&1 &"

def serve_and_leave_it_running(env):
    env.run(SERVE_IN_BACKGROUND, check=True)
    waited = env.run(f"for i in $(seq 30); do {LISTENING} && exit 0; sleep 0.1; done; exit 1")
    assert waited.exit_code == 0, "nc never listened"

def record(env, name="modes.txt"):
    mode = env.container.attrs["HostConfig"]["NetworkMode"]
    with open(pathlib.Path(__file__).parent / name, "a") as out:
        out.write(mode + "\\n")
'''

IN_TURN = HELPERS + '''
import pytest

@pytest.mark.parametrize("n", range(6))
def test_in_turn(builder_container, n):
    assert builder_container.run(LISTENING).exit_code == 1, "an earlier test's server is still listening"
    serve_and_leave_it_running(builder_container)
    record(builder_container)
'''

TWO_AT_ONCE = HELPERS + '''
import pytest

@pytest.mark.container
@pytest.mark.parametrize("n", range(3))
def test_two_builders(buildenv, builder_container, n):
    serve_and_leave_it_running(buildenv)
    assert builder_container.run(LISTENING).exit_code == 1, "the other open builder's server is visible"
    record(buildenv)
    record(builder_container)
'''

HOLDER_REMOVED = HELPERS + '''
import docker, pytest

@pytest.mark.parametrize("n", range(4))
def test_network_survives(builder_container, n):
    if n == 0:  # what a careless dind test might do: remove every container of the session
        session = builder_container.container.labels["pytest-buildenv.session"]
        client = docker.from_env()
        for c in client.containers.list(filters={"label": ["pytest-buildenv.kind=netns",
                                                           f"pytest-buildenv.session={session}"]}):
            c.remove(force=True)
    else:
        assert builder_container.run("test -e /sys/class/net/eth0").exit_code == 0, "builder has no network"
        record(builder_container)
'''


def run_session(tmp_path, text: str, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    (tmp_path / "tox.ini").write_text(f"[pytest]\nbuildenv_image = {BUSYBOX}\n")
    (tmp_path / "test_project.py").write_text(text)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--buildenv=container", *args],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTEST_BUILDENV_EVENTS": str(tmp_path / "events.jsonl")})
    session = re.search(r"buildenv: session (\w+)", result.stdout)
    assert session, result.stdout + result.stderr
    return result, session.group(1)


def modes(tmp_path) -> list[str]:
    return (tmp_path / "modes.txt").read_text().split()


def assert_nothing_left(session: str) -> None:
    assert docker.from_env().containers.list(all=True, filters={"label": f"{LABEL_SESSION}={session}"}) == []


@pytest.mark.parametrize("share", ["true", "false"])
def test_a_server_left_running_is_gone_before_the_next_test(tmp_path, share):
    """Results are the same with sharing on and off; on, the six builders use two holders in turn."""
    result, session = run_session(tmp_path, IN_TURN, "-o", f"buildenv_share_network={share}")
    assert "6 passed" in result.stdout, result.stdout
    used = modes(tmp_path)
    if share == "true":
        assert all(m.startswith("container:") for m in used)
        assert len(set(used)) == HOLDERS_PER_NETWORK, "each holder was lent more than once"
    else:
        assert set(used) == {"default"}
    assert_nothing_left(session)


def test_two_builders_open_at_once_never_share_a_namespace(tmp_path):
    result, session = run_session(tmp_path, TWO_AT_ONCE)
    assert "3 passed" in result.stdout, result.stdout
    used = modes(tmp_path)
    assert all(a != b for a, b in zip(used[::2], used[1::2]))
    assert_nothing_left(session)


def test_a_removed_holder_is_replaced(tmp_path):
    result, session = run_session(tmp_path, HOLDER_REMOVED)
    assert "4 passed" in result.stdout, result.stdout
    assert_nothing_left(session)


def test_no_spare_is_started_after_a_process_last_test(tmp_path):
    one_test = "def test_only(builder_container):\n    assert builder_container.run('true').ok\n"
    result, session = run_session(tmp_path, one_test)
    assert "1 passed" in result.stdout, result.stdout
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    builders = [e["name"] for e in events if e["event"] == "created" and e["resource"] == "container"]
    assert len(builders) == 1 and "spare" not in builders[0], builders
    assert_nothing_left(session)


@pytest.fixture
def networks():
    client = docker.from_env()
    owner = Owner(new_session_id())
    shared = SharedNetworks(client, owner, InvokingUser())
    yield shared, client, owner
    shared.close()
    wait_for_removals()
    for container in client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={owner.session}"}):
        container.remove(force=True)


def test_holders_are_labelled_lent_round_robin_and_only_to_one_open_builder(networks, tmp_path):
    shared, client, owner = networks
    envs = []
    for i in range(3):
        (tmp_path / str(i)).mkdir()
        spec = BuilderSpec(BUSYBOX, network=shared.mode_for_new_builder(None, BUSYBOX))
        envs.append(ContainerEnv(client, spec, tmp_path / str(i), owner).start())
    first, second, third = envs
    assert first.network != second.network and third.network == first.network
    holder = client.containers.get(first.network.split(":", 1)[1])
    assert holder.labels[LABEL_KIND] == "netns" and holder.labels[LABEL_SESSION] == owner.session
    assert holder.attrs["HostConfig"]["NetworkMode"] == "default" and holder.attrs["Config"]["User"] == \
        f"{os.getuid()}:{os.getgid()}"
    assert shared.claim(first) and shared.claim(second)
    assert not shared.claim(third), "first holds that holder"
    first.close()
    shared.release(first)
    assert shared.claim(third)
    assert client.containers.list(all=True, filters={"id": first.id}) == [], "claimed only once first was removed"
    for env in (second, third):
        env.close()
    shared.close()
    wait_for_removals()
    assert client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={owner.session}"}) == []


def test_host_networking_and_sharing_off_make_no_holder(networks):
    shared, client, owner = networks
    assert shared.mode_for_new_builder("host", BUSYBOX) == "host"
    off = SharedNetworks(client, owner, InvokingUser(), enabled=False)
    assert off.mode_for_new_builder(None, BUSYBOX) is None
    assert client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={owner.session}"}) == []
