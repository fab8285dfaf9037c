"""Hostile builds: what a build leaves in its workspace (links out of it, a link loop, names no shell or
UTF-8 likes, a hundred thousand files) works or is one line, and nothing outside a destination is written
by put(), get(), artifacts or copy mode. On bind and copy workspaces alike (the matrix below)."""

from __future__ import annotations

import os

import pytest

from pytest_buildenv import BuildEnvError

BUSYBOX = "buildenv-test/busybox:1"
BOTH = pytest.mark.container(image=BUSYBOX, workspace=["bind", "copy"])


@BOTH
def test_a_link_out_of_the_workspace_is_the_builders_file_never_the_hosts(builder_container, tmp_path):
    env = builder_container
    outside = tmp_path / "outside" / "target.txt"  # a host file, and the same path made in the builder
    outside.parent.mkdir()
    outside.write_text("host-side\n")
    env.run(f"mkdir -p {outside.parent} && echo builder-side > {outside} && ln -s {outside} link", check=True)
    assert env.artifact("link").read_text() == "builder-side\n"
    (tmp_path / "new.txt").write_text("put-through-the-link\n")
    env.put(tmp_path / "new.txt", "link")
    assert env.run("cat link", check=True).stdout == "put-through-the-link\n"
    got = env.get("link", tmp_path / "got.txt")
    assert got.read_text() == "put-through-the-link\n"
    assert outside.read_text() == "host-side\n", "a host file outside the workspace was written"


@BOTH
def test_a_link_to_a_system_file_as_an_artifact_reads_the_builders(builder_container):
    """Not /etc/passwd: the builder's is the host's (mounted, or copied in). Its hostname is its own."""
    env = builder_container
    env.run("ln -s /etc/hostname hostname-link", check=True)
    builders = env.run("cat /etc/hostname", check=True).stdout
    assert builders != open("/etc/hostname").read()
    assert env.artifact("hostname-link").read_text() == builders


@BOTH
def test_a_link_loop_is_no_file_and_get_says_so_in_one_line(builder_container, tmp_path):
    env = builder_container
    env.run("ln -s loop loop && ln -s b a && ln -s a b", check=True)
    assert not env.artifact("loop").exists and not env.artifact("a").exists
    with pytest.raises(FileNotFoundError, match=r"^get\(\): /work/loop does not exist in the container environment$"):
        env.get("loop", tmp_path / "loop-copy")
    assert not os.path.lexists(tmp_path / "loop-copy")


@BOTH
def test_names_with_bytes_that_are_not_utf8_and_with_a_newline(builder_container, tmp_path):
    env = builder_container
    env.run("printf two > \"$(printf 'bad\\377byte')\"", check=True)
    assert env.artifact(os.fsdecode(b"bad\xffbyte")).read_text() == "two"
    newline = "printf one > \"$(printf 'new\\nline')\""
    if env.copied is not None:  # the builder's listing is a line per entry: one line says why it cannot come back
        with pytest.raises(BuildEnvError, match=r"^'/work/new' and what follows it: a file name with a newline"):
            env.run(newline)
        return
    env.run(newline, check=True)
    names = set(os.listdir(os.fsencode(env.workspace)))
    assert {b"new\nline", b"bad\xffbyte"} <= names, names  # on the host as the builder wrote them
    assert (env.workspace / "new\nline").read_text() == "one"
    assert env.run("cat \"$(printf 'new\\nline')\"", check=True).stdout == "one"
    got = env.get(".", tmp_path / "copy")
    assert (got / os.fsdecode(b"bad\xffbyte")).read_text() == "two"


@pytest.mark.container(image=BUSYBOX, workspace="copy", timeout=600)
def test_a_hundred_thousand_small_files_come_back_on_a_copy_workspace(builder_container):
    env = builder_container
    env.run("mkdir many && cd many && seq 100000 | xargs touch", check=True)
    assert len(os.listdir(env.workspace / "many")) == 100000
    env.run("rm -r many", check=True)
    assert not (env.workspace / "many").exists()
