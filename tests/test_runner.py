"""pytest running *inside* a CI-runner container that holds the Docker socket.

The seed's introspection scenario for real: the project is bind-mounted into
the runner from a random host path, at another path inside; builder containers
the plugin starts from inside must mount the workspace by its host path.
The runner gets the package from this source tree, read-only on /pkg, and the
plugin by `-p pytest_buildenv.plugin`; on a user's CI it is `pip install`ed.
"""

from __future__ import annotations

import os
from pathlib import Path

import docker
import pytest

from pytest_buildenv.naming import Owner, new_session_id

pytestmark = pytest.mark.usefixtures("one_session_at_a_time")  # it starts a session (see conftest.py)

RUNNER = "buildenv-test/runner:1"
SOURCE = Path(__file__).resolve().parents[1] / "pytest_buildenv"
INSIDE = "/builds/group/project"

INNER_TEST = '''
import json, os
from pathlib import Path
import pytest

@pytest.mark.container(image="buildenv-test/gcc:1")
def test_build_in_builder(builder_container):
    (builder_container.workspace / "hello.c").write_text(
        '#include <stdio.h>\\nint main(void) { puts("hi from the runner"); return 0; }\\n')
    builder_container.run("cc -o hello hello.c", check=True)
    assert builder_container.run("./hello").stdout == "hi from the runner\\n"
    work = next(m for m in builder_container.container.attrs["Mounts"] if m["Destination"] == "/work")
    Path(os.environ["OUT"]).write_text(json.dumps({"workspace": str(builder_container.workspace),
                                                   "mounted_from": work["Source"]}))
'''


@pytest.fixture
def client():
    return docker.from_env()


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "random-host-path" / "project"
    root.mkdir(parents=True)
    (root / "test_inner.py").write_text(INNER_TEST)
    (root / "tox.ini").write_text("[pytest]\n")
    return root


def run_in_runner(client, project: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    sock = Path("/var/run/docker.sock")
    runner = client.containers.run(
        RUNNER, ["/opt/venv/bin/python", "-m", "pytest", "-p", "pytest_buildenv.plugin", "-p", "no:cacheprovider",
                 "--buildenv=container", *args],
        detach=True, working_dir=INSIDE, user=f"{os.getuid()}:{os.getgid()}", group_add=[sock.stat().st_gid],
        environment={"PYTHONPATH": "/pkg", "HOME": INSIDE, "OUT": f"{INSIDE}/out.json", **(env or {})},
        volumes={str(project): {"bind": INSIDE, "mode": "rw"},
                 str(SOURCE): {"bind": "/pkg/pytest_buildenv", "mode": "ro"},
                 str(sock): {"bind": "/var/run/docker.sock", "mode": "rw"}},
        labels=Owner(new_session_id()).labels("runner"))
    try:
        code = runner.wait(timeout=300)["StatusCode"]
        return code, runner.logs().decode()
    finally:
        runner.remove(force=True)


def test_builder_started_from_inside_a_runner_sees_the_workspace(client, project):
    code, logs = run_in_runner(client, project, f"--basetemp={INSIDE}/tmp")
    assert code == 0, logs
    import json

    out = json.loads((project / "out.json").read_text())
    assert out["workspace"].startswith(f"{INSIDE}/tmp/")
    on_host = project / Path(out["workspace"]).relative_to(INSIDE)
    assert out["mounted_from"] == str(on_host)  # translated through the runner's own mounts
    binary = on_host / "hello"
    assert binary.stat().st_uid == os.getuid()  # the artifact landed on the host path, owned by the user


def test_env_vars_override_the_lookup(client, project, tmp_path):
    alias = tmp_path / "alias-of-project"
    alias.symlink_to(project)  # same files, another host path: only the override can name it
    code, logs = run_in_runner(client, project, f"--basetemp={INSIDE}/tmp",
                               env={"HOST_PATH_SRC": str(alias), "HOST_PATH_DST": INSIDE})
    assert code == 0, logs
    import json

    out = json.loads((project / "out.json").read_text())
    assert out["mounted_from"].startswith(str(alias) + "/tmp/")


def test_workspace_on_no_mount_is_one_clear_line(client, project):
    code, logs = run_in_runner(client, project, "--basetemp=/tmp/not-mounted")
    assert code == 1
    lines = [line for line in logs.splitlines() if "is not on any bind mount" in line]
    assert len(lines) == 1, logs
    assert f"--basetemp={INSIDE}/.pytest-tmp" in lines[0]
    assert "Traceback" not in logs


def test_own_container_id_comes_from_our_own_mounts_only(client):
    """In a container, /etc/hostname is mounted from /var/lib/docker/containers/<id>/. On the host,
    mountinfo shows such lines too, for a moment, while dockerd sets up another container (mount
    point under its overlay directory): those must not make us think we run in that container."""
    from pytest_buildenv.engine.hostpaths import container_id_in

    container = client.containers.run("buildenv-test/busybox:1", ["cat", "/proc/self/mountinfo"], detach=True)
    try:
        container.wait(timeout=30)
        inside = container.logs().decode()
    finally:
        container.remove(force=True)
    assert container_id_in(inside, "") == container.id
    own_lines = [line for line in inside.splitlines() if line.split()[4] in ("/etc/hostname", "/etc/hosts",
                                                                              "/etc/resolv.conf")]
    assert own_lines, inside
    seen_from_host = "\n".join(line.replace(f" {line.split()[4]} ", f" /var/lib/docker/overlay2/{'0' * 64}/merged"
                                             f"{line.split()[4]} ", 1) for line in own_lines)
    assert container_id_in(seen_from_host, "0::/\n") is None
    assert container_id_in("", f"4:pids:/docker/{container.id}\n") == container.id  # cgroup v1
