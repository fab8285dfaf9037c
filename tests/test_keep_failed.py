"""--buildenv-keep=failed: only a failing test's environment stays, with a command to get into it."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import docker
import pytest

pytestmark = pytest.mark.usefixtures("one_session_at_a_time")

TESTS = """
def test_passes(builder_container):
    builder_container.run("echo fine > passed.txt", check=True)

def test_fails(builder_container):
    builder_container.run("echo evidence > failed.txt", check=True)
    assert False, "the build is broken"
"""


def test_keep_failed_keeps_exactly_the_failing_builder_and_says_how_to_get_in(pytester):
    pytester.makeini("[pytest]\nbuildenv_image = buildenv-test/busybox:1\n")
    pytester.makepyfile(test_two=TESTS)
    result = pytester.runpytest_subprocess("--buildenv=container", "--buildenv-keep=failed")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    session = re.search(r"buildenv: session (\w+):", out).group(1)
    client = docker.from_env()
    left = client.containers.list(all=True, filters={"label": f"pytest-buildenv.session={session}"})
    try:
        assert len(left) == 1, out  # the failing test's builder (below, by what it holds); the passing one is gone
        assert "buildenv: kept (--buildenv-keep=failed): 1" in out
        shell = re.search(r"^  container \S+: (docker exec -it .*? sh)   \(workspace (\S+)\)$", out, re.MULTILINE)
        assert shell, out
        argv = [arg for arg in shlex.split(shell.group(1)) if arg != "-it"] + ["-c", "id -u; pwd; cat failed.txt"]
        seen = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split("\n")
        import os

        assert seen[:3] == [str(os.getuid()), "/work", "evidence"]  # the failing test's, as its user, in its workdir
        assert left[0].name in shell.group(1)
        remove = re.search(r"remove them all with: (python -m pytest_buildenv reap .*)$", out, re.MULTILINE).group(1)
        assert remove == f"python -m pytest_buildenv reap --session {session} --include-kept"
    finally:
        reaped = subprocess.run([sys.executable, "-m", "pytest_buildenv", "reap", "--session", session,
                                 "--include-kept"], capture_output=True, text=True)
    assert client.containers.list(all=True, filters={"label": f"pytest-buildenv.session={session}"}) == [], reaped.stdout
