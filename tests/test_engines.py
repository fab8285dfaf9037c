"""Which engine, what it is, and how workspaces reach it.

The choice of engine is tested on real files (a Docker CLI config with a context). The rest runs
on the suite's engine (CI runs this file on local Docker, rootful Podman, rootless Podman and a
remote-like Docker), and against the remote-like engine itself (.ci/extra-dockerd remote: a dockerd
in mount and network namespaces of its own, with a tmpfs on /tmp, so it cannot see any workspace).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_buildenv.engine import endpoint

# Some tests start sessions of their own, which reap dead owners when they start: one at a time with the
# other files' (see one_session_at_a_time in conftest.py).
pytestmark = pytest.mark.usefixtures("one_session_at_a_time")

BUSYBOX = "buildenv-test/busybox:1"
GCC = "buildenv-test/gcc:1"
REMOTE = "unix:///run/buildenv-remote/docker.sock"


@pytest.fixture
def no_engine_env(monkeypatch, tmp_path):
    for name in ("DOCKER_HOST", "DOCKER_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    yield tmp_path / "docker-config"


def write_context(config: Path, name: str, host: str) -> None:
    meta = config / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Endpoints": {"docker": {"Host": host}}}))
    (config / "config.json").write_text(json.dumps({"currentContext": name}))


def test_engine_order_option_then_docker_host_then_context_then_default(no_engine_env, monkeypatch):
    config = no_engine_env
    assert endpoint.resolve() == endpoint.Endpoint("unix:///var/run/docker.sock", "the default socket")
    write_context(config, "colima", "unix:///home/me/.colima/default/docker.sock")
    assert endpoint.resolve() == endpoint.Endpoint("unix:///home/me/.colima/default/docker.sock", "docker context colima")
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.9:2375")
    assert endpoint.resolve() == endpoint.Endpoint("tcp://10.0.0.9:2375", "DOCKER_HOST")
    chosen = endpoint.resolve("/run/podman/podman.sock", "--buildenv-engine")  # a bare socket path, as podman prints it
    assert chosen == endpoint.Endpoint("unix:///run/podman/podman.sock", "--buildenv-engine")
    assert chosen.socket == Path("/run/podman/podman.sock")


def test_docker_context_env_and_default_context(no_engine_env, monkeypatch):
    write_context(no_engine_env, "desktop", "unix:///home/me/.docker/desktop/docker.sock")
    monkeypatch.setenv("DOCKER_CONTEXT", "default")
    assert endpoint.resolve().source == "the default socket"


def test_a_context_without_its_endpoint_is_one_line(no_engine_env):
    from pytest_buildenv import BackendUnavailable

    no_engine_env.mkdir()
    (no_engine_env / "config.json").write_text(json.dumps({"currentContext": "gone"}))
    with pytest.raises(BackendUnavailable, match=r"^the Docker context 'gone' \(current in .*\) has no readable "
                                                 r"endpoint .*; `docker context use default`"):
        endpoint.resolve()


def test_run_as_for_each_engine():
    rootful = endpoint.EngineInfo("Docker", "20.10", "1.41", rootless=False)
    podman = endpoint.EngineInfo("Podman", "4.3.1", "1.41", rootless=True)
    docker = endpoint.EngineInfo("Docker", "25.0", "1.44", rootless=True)
    assert endpoint.run_as(rootful, 1001, 1002) == endpoint.RunAs("1001:1002", extra_groups=True)
    assert endpoint.run_as(podman, 1001, 1002) == endpoint.RunAs("1001:1002", extra_groups=False, userns="keep-id")
    assert endpoint.run_as(docker, 1001, 1002) == endpoint.RunAs("0:0", extra_groups=False)


def test_the_header_says_where_builders_lack_your_groups():
    podman = endpoint.EngineInfo("Podman", "4.3.1", "1.41", rootless=True)
    assert endpoint.run_as(podman, 1, 1).groups_said().startswith(
        "builders have only your primary group: a rootless user namespace holds your own ids alone, and "
        "Podman's keep-groups is its CLI's")
    docker = endpoint.EngineInfo("Docker", "25.0", "1.44", rootless=True)
    assert endpoint.run_as(docker, 1, 1).groups_said().startswith("builders have none of your other groups")
    rootful = endpoint.EngineInfo("Docker", "20.10", "1.41", rootless=False)
    assert endpoint.run_as(rootful, 1, 1).groups_said() == ""


# --- on the suite's engine ------------------------------------------------------------
@pytest.mark.container(image=GCC)
def test_what_a_build_writes_is_the_users_on_this_engine(builder_container, engine):
    env = builder_container
    env.run("mkdir -p out/deep && echo built > out/deep/file && cc -x c -o out/app - <<'EOF'\n"
            "int main(void){return 0;}\nEOF", check=True)
    for path in ("out", "out/deep", "out/deep/file", "out/app"):
        st = (env.workspace / path).stat()
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), f"{path} on {engine}"
    assert os.access(env.workspace / "out" / "app", os.X_OK)
    (env.workspace / "out" / "deep" / "file").write_text("edited on the host\n")  # the user can change it
    assert env.run("cat out/deep/file", check=True).stdout == "edited on the host\n"


def test_doctor_names_the_engine_and_what_it_is(engine, suite_endpoint):
    url = suite_endpoint.url
    out = subprocess.run([sys.executable, "-m", "pytest_buildenv", "doctor", "--engine", url],
                         capture_output=True, text=True, timeout=60).stdout
    line = next(line for line in out.splitlines() if line.startswith("container"))
    assert line == f"container available: {engine} at {url} (from --engine)"
    expected = os.environ.get("BUILDENV_TEST_EXPECT_ENGINE")  # CI says which engine each stage runs on
    if expected:
        assert f"{engine.product}{' rootless' if engine.rootless else ''}" == expected


def test_session_header_names_the_engine(pytester, engine, suite_endpoint):
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess("--buildenv=container", f"--buildenv-engine={suite_endpoint.url}")
    result.stdout.fnmatch_lines([f"buildenv: engine {engine} at {suite_endpoint.url} (from --buildenv-engine); "
                                 "workspaces bind-mounted if it sees them, else copied*"])
    header = next(line for line in result.stdout.lines if line.startswith("buildenv: engine "))
    if engine.rootless:  # what its builders lack, said where it is seen (test_container.py reads such a file)
        assert "; builders have " in header and ": a rootless user namespace holds your own ids alone" in header, header
    else:
        assert "groups" not in header, header


# --- copy mode: the remote-like engine, and copy forced on the suite's ------------------------
@pytest.fixture
def remote_engine():
    import docker

    try:
        docker.DockerClient(base_url=REMOTE, timeout=5).ping()
    except Exception:
        if os.environ.get("CI"):
            pytest.fail(f"the remote-like engine at {REMOTE} is missing; .ci/run starts it", pytrace=False)
        pytest.skip(f"the remote-like engine at {REMOTE} is missing (.ci/extra-dockerd remote start)")
    return REMOTE


def copied_builder(engine_url: str, workspace: Path, image: str = BUSYBOX, **kwargs):
    import docker

    from pytest_buildenv.kinds.container import BuilderSpec, ContainerEnv
    from pytest_buildenv.naming import Owner, new_session_id

    client = docker.DockerClient(base_url=engine_url)
    return ContainerEnv(client, BuilderSpec(image, copy_workspace=True, **kwargs), workspace, Owner(new_session_id()),
                        test="copy")


@pytest.mark.parametrize("where", ["remote", "suite engine"])
def test_copy_mode_keeps_host_and_builder_in_step(request, tmp_path, where):
    url = request.getfixturevalue("remote_engine") if where == "remote" else request.getfixturevalue("suite_endpoint").url
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    (ws / "src" / "a.txt").write_text("from the host\n")
    (ws / "gone-later").write_text("x")
    with copied_builder(url, ws, timeout=30) as env:
        assert env.run("cat src/a.txt", check=True).stdout == "from the host\n"
        env.run("echo out > result && mkdir -p b/c && echo deep > b/c/d && chmod 750 b/c/d && ln -s result link "
                "&& rm gone-later", check=True)
        assert (ws / "result").read_text() == "out\n" and (ws / "b/c/d").read_text() == "deep\n"
        assert (ws / "b/c/d").stat().st_mode & 0o777 == 0o750 and os.readlink(ws / "link") == "result"
        assert not (ws / "gone-later").exists() and (ws / "result").stat().st_uid == os.getuid()
        (ws / "src" / "a.txt").write_text("edited\n")  # the host's changes and deletions go in
        (ws / "result").unlink()
        assert env.run("cat src/a.txt; ls", check=True).stdout == "edited\nb\nlink\nsrc\n"
        env.run("for i in $(seq 40); do echo $i > many-$i; done", check=True)  # more than one get's worth
        assert sorted(p.name for p in ws.glob("many-*")) == sorted(f"many-{i}" for i in range(1, 41))
        assert (ws / "many-40").read_text() == "40\n" and env.artifact("many-7").read_text() == "7\n"
        from pytest_buildenv import CommandTimeout

        with pytest.raises(CommandTimeout):  # killed before its listing: one is made after it
            env.run("echo before-timeout > late; sleep 30", timeout=1)
        assert (ws / "late").read_text() == "before-timeout\n"


def test_unset_workspace_copies_on_the_remote_engine(pytester, remote_engine):
    pytester.makepyfile("""
        import os

        def test_build(builder_container):
            (builder_container.workspace / "in").write_text("host")
            builder_container.run("cat in > out", check=True)
            assert (builder_container.workspace / "out").read_text() == "host"
            assert (builder_container.workspace / "out").stat().st_uid == os.getuid()
            assert builder_container.copied is not None
    """)
    result = pytester.runpytest_subprocess("--buildenv=container", f"--buildenv-engine={remote_engine}",
                                           "-o", f"buildenv_image={BUSYBOX}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"buildenv: the engine at {remote_engine} cannot see this machine's files: "
                                 "workspaces were copied in and out of builders (workspace: copy)"])


@pytest.mark.parametrize(("marker", "words"), [
    ("workspace='bind'", "builder container from buildenv-test/busybox:1: the engine at {url} cannot see this "
                         "machine's files (*bind source path does not exist*); leave the setting workspace unset "
                         "or set it to copy*"),
    ("ssh_agent=True", "*cannot see this machine's files, so bind mounts (docker_options mounts, ssh_agent) "
                       "cannot reach it; drop them, or use a local engine"),
])
def test_what_a_remote_engine_cannot_do_is_one_line(pytester, remote_engine, marker, words, monkeypatch):
    monkeypatch.setenv("SSH_AUTH_SOCK", __file__)  # exists: the refusal is the engine's, not the agent's
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.container({marker})
        def test_build(builder_container):
            pass
    """)
    result = pytester.runpytest_subprocess("--buildenv=container", f"--buildenv-engine={remote_engine}",
                                           "-o", f"buildenv_image={BUSYBOX}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([words.format(url=remote_engine)])
    assert "Traceback" not in result.stdout.str()


def test_dind_on_a_remote_engine_is_one_line(pytester, remote_engine):
    pytester.makepyfile("def test_build(dind_sibling): pass")
    result = pytester.runpytest_subprocess("--buildenv=dind", f"--buildenv-engine={remote_engine}",
                                           "-o", f"buildenv_image={BUSYBOX}")
    result.stdout.fnmatch_lines([f"*dind: the engine at {remote_engine} cannot see this machine's files, and the "
                                 "siblings a dind builder starts mount the workspace by its path; use a local engine*"])
    assert "Traceback" not in result.stdout.str()


def test_engine_words_come_first_and_the_image_hint_only_for_the_image(pytester, engine, suite_endpoint, tmp_path):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.container(docker_options={"devices": ["/dev/buildenv-none:/dev/none"]})
        def test_engine_refuses(builder_container):
            pass

        @pytest.mark.container(image="buildenv-test/no-sleep:1")
        def test_image_lacks_sleep(builder_container):
            import time

            for _ in range(100):  # the builder dies the moment its init finds no `sleep`: an exec may beat it
                builder_container.run("true")
                time.sleep(0.05)
    """)
    import docker

    from pytest_buildenv.engine import connect

    client = connect(suite_endpoint)
    context = tmp_path / "no-sleep"  # a shell and nothing else
    context.mkdir()
    (context / "sh").write_bytes(Path("/bin/busybox").read_bytes())
    (context / "Dockerfile").write_text("FROM scratch\nCOPY sh /bin/sh\n")
    client.images.build(path=str(context), tag="buildenv-test/no-sleep:1", rm=True)
    try:
        result = pytester.runpytest_subprocess("--buildenv=container", f"--buildenv-engine={suite_endpoint.url}",
                                               "-o", f"buildenv_image={BUSYBOX}")
    finally:
        try:
            client.images.remove("buildenv-test/no-sleep:1", force=True)
        except docker.errors.NotFound:
            pass
    out = result.stdout.str()
    refused = next(line for line in out.splitlines() if line.startswith(f"builder container from {BUSYBOX} would not"))
    assert "the engine at" in refused and "/dev/buildenv-none" in refused and "needs `sleep`" not in refused, refused
    lacks = next(line for line in out.splitlines()
                 if line.startswith("FAILED") and "builder container from buildenv-test/no-sleep:1" in line)
    assert lacks.endswith("a builder image needs `sleep` and `sh` (busybox or coreutils)"), lacks
    assert "Traceback" not in out
