"""The `dind` kind: a builder holding the socket, and siblings that share its workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DIND = "buildenv-test/dind:1"
GCC = "buildenv-test/gcc:1"
BUSYBOX = "buildenv-test/busybox:1"
HELLO = Path(__file__).parent.parent / "examples" / "hello"

# What a build script inside the builder does to start a child on the shared workspace.
CHILD = 'docker run --rm -u "$(id -u):$(id -g)" -v "$HOST_PATH_SRC:$HOST_PATH_DST" -w "$HOST_PATH_DST" '


@pytest.mark.dind(image=DIND)
def test_child_started_inside_sees_the_workspace(dind_sibling):
    (dind_sibling.workspace / "in.txt").write_text("from the test\n")
    dind_sibling.run(CHILD + f"{BUSYBOX} sh -c 'cat in.txt; echo from the child > out.txt'", check=True)
    out = dind_sibling.artifact("out.txt")
    assert out.read_text() == "from the child\n"
    assert (out.uid, out.gid) == (os.getuid(), os.getgid())
    assert dind_sibling.transcript[-1].stdout == "from the test\n"


@pytest.mark.dind(image=DIND)
def test_env_exports_host_paths(dind_sibling):
    out = dind_sibling.run("echo $HOST_PATH_SRC; echo $HOST_PATH_DST", check=True).stdout.split()
    assert out == [str(dind_sibling.workspace), "/work"]


@pytest.mark.dind(image=DIND)
def test_non_root_builder_can_use_the_socket(dind_sibling):
    result = dind_sibling.run("id -u; docker ps --format '{{.Names}}'", check=True)
    uid, *names = result.stdout.split()
    assert int(uid) == os.getuid()
    assert dind_sibling.name in names  # it sees itself through the engine


@pytest.mark.dind(image=DIND)
def test_sibling_handle_shares_workspace_and_user(dind_sibling):
    dind_sibling.run("echo parent > from-parent", check=True)
    child = dind_sibling.sibling(BUSYBOX, "cat from-parent > from-sibling")
    assert child.workdir == dind_sibling.workdir and child.workspace == dind_sibling.workspace
    assert dind_sibling.artifact("from-sibling").read_text() == "parent\n"
    assert child.artifact("from-sibling").uid == os.getuid()
    assert child.run("test -e /var/run/docker.sock").exit_code == 1  # siblings get no socket
    sibling_id = child.id
    dind_sibling.close()
    import docker

    from pytest_buildenv.engine.containers import wait_for_removals

    assert wait_for_removals() == []
    with pytest.raises(docker.errors.NotFound):
        docker.from_env().containers.get(sibling_id)


@pytest.mark.dind(image=DIND)
def test_two_images_one_workspace(dind_sibling):
    """The C part built by the gcc image, the packaging step by another image, one workspace."""
    dind_sibling.put(HELLO / "helloworld.c", "c/helloworld.c")
    dind_sibling.put(HELLO / "Makefile", "c/Makefile")
    gcc = dind_sibling.sibling(GCC)
    gcc.run("make -C c helloworld_app", check=True)
    packager = dind_sibling.sibling(BUSYBOX)
    packager.run("mkdir -p dist && tar -cf dist/app.tar -C c helloworld_app", check=True)
    assert dind_sibling.artifact("dist/app.tar").size > 1000
    assert dind_sibling.run("tar -xOf dist/app.tar helloworld_app | cmp - c/helloworld_app").ok


@pytest.mark.dind(image=DIND)
def test_makefile_in_parent_launches_a_stage_in_a_child(dind_sibling):
    """The seed's sibling-container-exports flow: a top-level Makefile delegates a stage to a child."""
    dind_sibling.put(HELLO / "helloworld.c", "helloworld.c")
    dind_sibling.put(HELLO / "Makefile", "Makefile.app")
    (dind_sibling.workspace / "Makefile").write_text(
        "all: helloworld_app\n\t./helloworld_app > hello.out\n\n"
        "helloworld_app:\n"
        f"\tdocker run --rm -u $$(id -u):$$(id -g) -v $$HOST_PATH_SRC:$$HOST_PATH_DST -w $$HOST_PATH_DST "
        f"{GCC} make -f Makefile.app helloworld_app\n")
    dind_sibling.run("make all", check=True)
    assert dind_sibling.artifact("hello.out").read_text() == "Hello, world!\n"
    assert dind_sibling.artifact("helloworld_app").uid == os.getuid()
