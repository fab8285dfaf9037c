"""What a build environment is expected to have: limits, persistent caches, engine options."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid

import docker
import pytest

from pytest_buildenv import BuildCommandError, CommandTimeout
from pytest_buildenv.engine.builder import KILL_SLACK

BUSYBOX = "buildenv-test/busybox:1"
CGROUP = "/sys/fs/cgroup"
# Tests that start sessions of their own (which reap dead owners as they start): one at a time with the
# other files' (see one_session_at_a_time in conftest.py).
own_sessions = pytest.mark.usefixtures("one_session_at_a_time")


def cgroup(env, path: str) -> str:
    return env.run(f"cat {CGROUP}/{path}", check=True).stdout.strip()


@pytest.mark.container(memory="64m", cpus=0.5, pids=100)
def test_limits_land_in_the_builders_cgroup(builder_container):
    assert cgroup(builder_container, "memory/memory.limit_in_bytes") == str(64 << 20)
    assert cgroup(builder_container, "pids/pids.max") == "100"
    quota, period = int(cgroup(builder_container, "cpu/cpu.cfs_quota_us")), int(cgroup(builder_container, "cpu/cpu.cfs_period_us"))
    assert quota / period == 0.5


def test_a_process_limit_by_default(builder_container):
    assert cgroup(builder_container, "pids/pids.max") == "4096"


# Half a core: the bomb under the default process limit, without starving the other worker's tests.
@pytest.mark.container(cpus=0.5)
def test_a_fork_bomb_under_the_default_limit_ends_within_its_timeout(builder_container):
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        builder_container.run("b() { b | b & }; b; sleep 60", timeout=5)
    # The slack the README states, and a margin for a loaded machine (the engine's own kill is not ours).
    assert time.monotonic() - started < 5 + KILL_SLACK + 10
    assert subprocess.run(["true"]).returncode == 0  # the host still forks
    assert int(cgroup_of_host(builder_container)) <= 4096


def cgroup_of_host(env) -> str:
    """pids.current of the builder's cgroup, read on the host (the builder may be gone)."""
    client = docker.from_env()
    try:
        state = client.api.inspect_container(env.id)["State"]
    except docker.errors.NotFound:
        return "0"
    if not state["Running"]:
        return "0"
    path = f"/sys/fs/cgroup/pids/docker/{env.id}/pids.current"
    return open(path).read().strip() if os.path.exists(path) else "0"


@pytest.mark.container(memory="32m")
def test_an_out_of_memory_kill_is_named_with_the_limit(builder_container):
    hog = "x=a; while true; do x=$x$x; done"
    result = builder_container.run(hog)
    assert result.exit_code == 137 and "out-of-memory killer (memory limit 32m)" in result.killed_by
    with pytest.raises(BuildCommandError, match=r"was killed by the out-of-memory killer \(memory limit 32m\) \(exit 137\)"):
        builder_container.run(hog, check=True)
    assert builder_container.run("echo still here").stdout == "still here\n"


@pytest.mark.container(docker_options={"shm_size": "128m", "cap_drop": ["NET_RAW"],
                                       "ulimits": [{"name": "nofile", "soft": 512, "hard": 512}]})
def test_docker_options_pass_through(builder_container):
    host = builder_container.container.attrs["HostConfig"]
    assert host["ShmSize"] == 128 << 20 and host["CapDrop"] == ["NET_RAW"]
    assert builder_container.run("ulimit -n", check=True).stdout.strip() == "512"
    assert "no-new-privileges" in host["SecurityOpt"] and host["Privileged"] is False


@pytest.mark.parametrize(("options", "message"), [
    ('{"user": "0"}', "docker_options key 'user' is the plugin's; use run(user=...) (the builder runs as you)"),
    ('{"mem_limit": "1g"}', "docker_options key 'mem_limit' is the plugin's; use memory"),
    ('{"bogus": 1}', "docker_options key 'bogus' is not a container option; it takes "),
])
@own_sessions
def test_owned_or_unknown_docker_options_are_refused_in_one_line(pytester, options, message):
    pytester.makeini(f"[pytest]\nbuildenv_image = {BUSYBOX}\n")
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.container(docker_options={options})
        def test_x(builder_container):
            pass
    """)
    result = pytester.runpytest_subprocess("--buildenv=container")
    result.assert_outcomes(errors=1)
    assert message in result.stdout.str() and "Traceback" not in result.stdout.str()


@own_sessions
def test_privileged_only_by_name_and_said_in_the_summary(pytester):
    pytester.makeini(f"[pytest]\nbuildenv_image = {BUSYBOX}\n")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.container(docker_options={"privileged": True})
        def test_asked(builder_container):
            assert builder_container.container.attrs["HostConfig"]["Privileged"] is True

        def test_not_asked(builder_container):
            assert builder_container.container.attrs["HostConfig"]["Privileged"] is False
    """)
    result = pytester.runpytest_subprocess("--buildenv=container")
    # This sandbox refuses privileged containers (no CAP_SYS_RESOURCE in its bounding set); where it
    # allows them, the test passes and the summary names the builder.
    out = result.stdout.str()
    if "unable to apply caps" in out:
        result.assert_outcomes(passed=1, errors=1)
        assert "privileged" in out
    else:
        result.assert_outcomes(passed=2)
        assert re.search(r"buildenv: buildenv-\S+ ran privileged \(docker_options privileged=True\)", out), out


CACHE_TESTS = """
import os, pytest

CACHE = {{"{name}": "/cache"}}

@pytest.mark.container(caches=CACHE)
def test_1_writes(builder_container):
    builder_container.run("echo $PYTEST_CURRENT_TEST >> /cache/log && ls -ln /cache/log", check=True)

@pytest.mark.container(caches=CACHE)
def test_2_reads(builder_container):
    assert len(builder_container.run("cat /cache/log", check=True).stdout.splitlines()) == int(os.environ["EXPECT"])
    owner = builder_container.run("stat -c %u:%g /cache /cache/log", check=True).stdout.split()
    assert owner == [f"{{os.getuid()}}:{{os.getgid()}}"] * 2

@pytest.mark.local(caches=CACHE)
def test_3_local(buildenv):
    path = buildenv.run("echo ${upper}", check=True).stdout.strip()
    assert path.endswith("pytest-buildenv/{name}") and os.path.isdir(path)
"""


@own_sessions
def test_a_cache_is_shared_by_tests_and_sessions_and_removed_only_by_reap_include_cache(pytester, monkeypatch):
    name = f"cc{uuid.uuid4().hex[:8]}"
    pytester.makeini(f"[pytest]\nbuildenv_image = {BUSYBOX}\n")
    pytester.makepyfile(test_cache=CACHE_TESTS.format(name=name, upper=name.upper()))
    sessions = []
    for expect in ("1", "2"):  # the second session sees the first one's line, and adds its own
        monkeypatch.setenv("EXPECT", expect)
        result = pytester.runpytest_subprocess("--buildenv=local,container")
        result.assert_outcomes(passed=3)
        sessions.append(re.search(r"buildenv: session (\w+):", result.stdout.str()).group(1))
    client = docker.from_env()
    volume = client.volumes.get(f"buildenv-cache-{name}")  # survived both sweeps
    assert volume.attrs["Labels"]["pytest-buildenv.cache"] == f"cache:{name}"
    reap = subprocess.run([sys.executable, "-m", "pytest_buildenv", "reap", "--session", sessions[0]],
                          capture_output=True, text=True)
    assert f"keep: volume buildenv-cache-{name}" in reap.stdout and client.volumes.get(volume.name), reap.stdout
    reap = subprocess.run([sys.executable, "-m", "pytest_buildenv", "reap", "--include-cache", "--session", sessions[0]],
                          capture_output=True, text=True)
    assert f"remove: volume buildenv-cache-{name}" in reap.stdout, reap.stdout
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get(volume.name)
    import shutil

    from pytest_buildenv.kinds.local import cache_dir

    shutil.rmtree(cache_dir(name))  # local caches are the user's directories (see README)
