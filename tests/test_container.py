"""The `container` kind on the real engine: who the builder runs as, what it can see."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
from pathlib import Path

import pytest


GCC = "buildenv-test/gcc:1"
HELLO = Path(__file__).parent.parent / "examples" / "hello"


@pytest.mark.container(image=GCC)
def test_hello_world_artifact_owned_by_invoking_user(builder_container):
    env = builder_container
    env.put(HELLO / "helloworld.c", "helloworld.c")
    env.put(HELLO / "Makefile", "Makefile")
    env.run("make helloworld_app", check=True)
    app = env.artifact("helloworld_app")
    assert app.executable and app.size > 1000
    assert (app.uid, app.gid) == (os.getuid(), os.getgid())
    host_file = env.workspace / "helloworld_app"
    assert host_file.stat().st_uid == os.getuid()  # the real file on the host, not only the handle's view
    assert subprocess.run([str(host_file)], capture_output=True, text=True).stdout == "Hello, world!\n"


def test_runs_as_invoking_uid_gid_with_all_supplementary_groups(builder_container, engine):
    """On a rootful engine the user and all their groups; rootless Podman maps only the user's own ids;
    on rootless Docker root in the builder is the user outside (see test_engines.py)."""
    ids = builder_container.run("id -u; id -g; id -G", check=True).stdout.split("\n")
    if engine.rootless and engine.product == "Docker":
        assert ids[:2] == ["0", "0"]
        return
    assert int(ids[0]) == os.getuid() and int(ids[1]) == os.getgid()
    groups = {os.getgid()} if engine.rootless else {os.getgid(), *os.getgroups()}
    assert {int(g) for g in ids[2].split()} == groups


# .ci/run makes it: a directory root:docker 0750 and a file in it 0640, open to the docker group alone.
GROUP_PROBE = Path("/var/lib/buildenv-group-probe")


@pytest.fixture
def group_probe():
    if not (GROUP_PROBE / "file").exists():
        if os.environ.get("CI"):
            pytest.fail(f"{GROUP_PROBE} is missing; .ci/run makes it", pytrace=False)
        pytest.skip(f"{GROUP_PROBE} is missing (.ci/run makes it)")
    if os.getuid() == 0 or GROUP_PROBE.stat().st_gid not in os.getgroups():
        pytest.skip(f"the suite's user is not in {GROUP_PROBE}'s group, or is root")
    return GROUP_PROBE


@pytest.mark.container(image=GCC, docker_options={"mounts": [f"{GROUP_PROBE}:/probe:ro"]})
def test_a_file_open_only_to_one_of_your_other_groups(group_probe, request, engine):
    """What the groups are for: a device or a file open to a group of yours. Rootless engines lose them, as
    the session header says (test_engines.py)."""
    try:
        builder = request.getfixturevalue("builder_container")
    except pytest.fail.Exception as exc:  # an engine that cannot see this machine's files cannot mount the probe
        assert "cannot see this machine's files, so bind mounts" in str(exc)
        return
    read = builder.run("cat /probe/file")
    if engine.rootless:
        assert read.exit_code != 0 and "Permission denied" in read.stderr, read
    else:
        assert read.stdout == "open to group docker\n", read


def builder_ids(engine) -> tuple[int, int]:
    """Whom builders run as: the invoking user, or root on rootless Docker, where root is the user outside."""
    return (0, 0) if engine.rootless and engine.product == "Docker" else (os.getuid(), os.getgid())


def test_passwd_and_group_are_the_hosts_and_read_only(builder_container, engine):
    import pwd

    name = pwd.getpwuid(builder_ids(engine)[0]).pw_name
    assert builder_container.run("id -un", check=True).stdout.strip() == name
    if builder_container.copied is not None:  # an engine elsewhere: the host's files are copied in, root's
        assert builder_container.artifact("/etc/passwd").read_text() == Path("/etc/passwd").read_text()
        assert builder_container.run("echo x >> /etc/passwd").exit_code != 0
        return
    mounts = {m["Destination"]: m for m in builder_container.container.attrs["Mounts"]}
    assert mounts["/etc/passwd"]["Source"] == "/etc/passwd" and mounts["/etc/passwd"]["RW"] is False
    assert mounts["/etc/group"]["Source"] == "/etc/group" and mounts["/etc/group"]["RW"] is False
    assert builder_container.run("echo x >> /etc/passwd", user="0").exit_code != 0  # not even root inside


def test_home_and_workdir_are_work(builder_container):
    assert builder_container.run("echo $HOME; pwd", check=True).stdout == "/work\n/work\n"
    assert str(builder_container.workdir) == "/work"
    builder_container.run("echo data > made-inside", check=True)
    assert (builder_container.workspace / "made-inside").read_text() == "data\n"


def test_put_get_binary_inside_and_outside_workspace(builder_container, tmp_path, engine):
    payload = os.urandom(300_000)
    src = tmp_path / "blob.bin"
    src.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    for where in ("blob.bin", "/tmp/blob.bin"):
        builder_container.put(src, where)
        art = builder_container.artifact(where)
        owner = os.getuid() if where == "blob.bin" else builder_ids(engine)[0]  # the host's file, or the builder's
        assert art.size == len(payload) and art.sha256 == digest and art.uid == owner
        assert builder_container.run(["sha256sum", where], check=True).stdout.split()[0] == digest
        back = builder_container.get(where, tmp_path / "back" / where.strip("/").replace("/", "_"))
        assert back.read_bytes() == payload


def test_artifact_outside_workspace_reports_mode(builder_container, engine):
    builder_container.run("mkdir -p /tmp/out && printf abc > /tmp/out/tool && chmod 750 /tmp/out/tool", check=True)
    art = builder_container.artifact("/tmp/out/tool")
    assert (art.mode, art.executable, art.read_text(), art.uid) == (0o750, True, "abc", builder_ids(engine)[0])
    assert not builder_container.artifact("/tmp/out/none").exists


def test_builder_has_no_docker_socket_and_is_not_privileged(builder_container):
    assert builder_container.run("test -e /var/run/docker.sock").exit_code == 1
    attrs = builder_container.container.attrs["HostConfig"]
    assert attrs["Privileged"] is False and "no-new-privileges" in attrs["SecurityOpt"]
    cap_eff = int(builder_container.run("grep -E '^CapEff' /proc/self/status").stdout.split()[1], 16)
    cap_sys_admin = 1 << 21
    assert cap_eff & cap_sys_admin == 0


def test_labels_and_unique_name(builder_container):
    labels = builder_container.container.labels
    assert labels["pytest-buildenv.pid"] == str(os.getpid())
    assert labels["pytest-buildenv.host"] == socket.gethostname()
    assert labels["pytest-buildenv.session"] in builder_container.name
    assert builder_container.container.name == builder_container.name


@pytest.mark.container(network="none")
def test_network_opt_out(builder_container):
    # The builder joins a holder's namespace (netns.py); the holder is the one with network none.
    mode = builder_container.container.attrs["HostConfig"]["NetworkMode"]
    holder = builder_container.client.containers.get(mode.split(":", 1)[1]) if mode.startswith("container:") else None
    assert (holder.attrs["HostConfig"]["NetworkMode"] if holder else mode) == "none"
    assert builder_container.run("ls /sys/class/net", check=True).stdout.split() == ["lo"]
    assert "UP" in builder_container.run("ip link show lo", check=True).stdout, "loopback is usable"


@pytest.fixture
def ssh_agent(tmp_path_factory, monkeypatch):
    """A real listening unix socket standing in for an agent: forwarding is a bind mount."""
    sock_path = tmp_path_factory.mktemp("agent") / "agent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    server.listen(1)
    monkeypatch.setenv("SSH_AUTH_SOCK", str(sock_path))
    yield sock_path
    server.close()


@pytest.mark.usefixtures("ssh_agent")
@pytest.mark.container(ssh_agent=True)
def test_ssh_agent_forwarded_only_when_asked(request):
    try:
        builder = request.getfixturevalue("builder_container")
    except pytest.fail.Exception as exc:  # an engine that cannot see this machine's files cannot mount its agent
        assert "cannot see this machine's files, so bind mounts (docker_options mounts, ssh_agent)" in str(exc)
        return
    assert builder.run("test -S $SSH_AUTH_SOCK").exit_code == 0


def test_no_ssh_agent_by_default(builder_container):
    assert builder_container.run("echo ${SSH_AUTH_SOCK:-none}").stdout == "none\n"


def test_get_refuses_a_link_that_escapes_the_destination(builder_container, tmp_path):
    from pytest_buildenv import BuildEnvError

    builder_container.run("mkdir -p /tmp/out && echo ok > /tmp/out/fine && ln -s ../../../../etc/passwd /tmp/out/evil",
                          check=True)
    with pytest.raises(BuildEnvError, match=r"get\(\): /tmp/out in .* holds .*evil"):
        builder_container.get("/tmp/out", tmp_path / "dest" / "out")
    assert not (tmp_path / "dest" / "etc").exists() and not (tmp_path / "etc").exists()
    builder_container.run("rm /tmp/out/evil", check=True)
    assert (builder_container.get("/tmp/out", tmp_path / "again") / "fine").read_text() == "ok\n"


@pytest.mark.container(image=GCC)
def test_host_package_checks(builder_container):
    assert builder_container.host.package("gcc").is_installed
    assert not builder_container.host.package("definitely-not-a-package").is_installed
