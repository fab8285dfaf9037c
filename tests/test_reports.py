"""What a failing test leaves behind for a human: transcript, junitxml, artifacts, doctor."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

# These tests start pytest sessions of their own, and every session reaps dead owners' resources
# when it starts: one at a time, so that the sessions they kill on purpose are reaped by the one
# each test expects (see one_session_at_a_time in conftest.py).
pytestmark = pytest.mark.usefixtures("one_session_at_a_time")

FAILING = """
def test_build_breaks(buildenv):
    buildenv.run("echo compiling-step-output; echo artefact > out.bin")
    buildenv.run("echo 'ld: undefined reference' >&2; exit 1")
    assert buildenv.artifact("app").exists
"""


def test_failing_test_carries_its_transcript_to_terminal_and_junitxml(pytester):
    pytester.makepyfile(FAILING)
    result = pytester.runpytest("--junitxml=report.xml")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*- buildenv transcript -*", "*local environment, workspace*",
                                 "[[]1[]] $ echo compiling-step-output*", "*compiling-step-output",
                                 "[[]2[]] $ echo 'ld: undefined reference' >&2; exit 1  (exit 1*",
                                 "*ld: undefined reference"])
    tree = ET.parse(pytester.path / "report.xml")
    props = {p.get("name"): p.get("value") for p in tree.iter("property")}
    assert "compiling-step-output" in props["buildenv_transcript"]
    assert "ld: undefined reference" in props["buildenv_transcript"]


def test_passing_test_carries_no_transcript(pytester):
    pytester.makepyfile("def test_ok(buildenv):\n    buildenv.run('echo quiet-output')\n")
    result = pytester.runpytest("--junitxml=report.xml")
    result.assert_outcomes(passed=1)
    assert "buildenv transcript" not in result.stdout.str()
    assert "quiet-output" not in (pytester.path / "report.xml").read_text()


def test_artifacts_directory_gets_workspace_and_transcript(pytester):
    pytester.makepyfile(FAILING)
    result = pytester.runpytest("--buildenv-artifacts=artifacts")
    result.assert_outcomes(failed=1)
    saved = pytester.path / "artifacts" / "test_artifacts_directory_gets_workspace_and_transcript.py_test_build_breaks_local"
    assert sorted(p.name for p in saved.iterdir()) == ["transcript-local.txt", "workspace-local"]
    assert (saved / "workspace-local" / "out.bin").read_text() == "artefact\n"
    assert "ld: undefined reference" in (saved / "transcript-local.txt").read_text()


def test_doctor_with_daemon_up_and_pointing_nowhere():
    up = subprocess.run([sys.executable, "-m", "pytest_buildenv", "doctor", "--buildenv=local,container"],
                        capture_output=True, text=True)
    assert up.returncode == 0, up.stdout
    lines = up.stdout.splitlines()
    assert lines[0].startswith("local     available")
    assert lines[1].startswith("container available: Docker ") and "(from the default socket)" in lines[1]
    assert any(line.startswith("kind      unavailable") for line in lines)
    import os

    down = subprocess.run([sys.executable, "-m", "pytest_buildenv", "doctor", "--buildenv=container"],
                          capture_output=True, text=True, env={**os.environ, "DOCKER_HOST": "unix:///nowhere.sock"})
    assert down.returncode == 1
    assert "container unavailable: container engine unreachable at unix:///nowhere.sock, from DOCKER_HOST" in down.stdout
    assert "fix: fix or unset DOCKER_HOST" in down.stdout
    assert down.stdout.splitlines()[-1] == "required but unavailable: container"


def test_image_build_progress_shows_without_s_and_hides_with_q(pytester):
    pytester.makefile("", Dockerfile="FROM buildenv-test/busybox:1\nRUN echo progress-step\n")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.container(dockerfile="Dockerfile")
        def test_built(builder_container):
            assert builder_container.run("true").ok
    """)
    loud = pytester.runpytest("--buildenv=container")
    loud.assert_outcomes(passed=1)
    loud.stdout.fnmatch_lines(["[[]buildenv[]] building buildenv/dockerfile:*", "[[]buildenv[]] *RUN echo progress-step*"])
    quiet = pytester.runpytest("--buildenv=container", "-q")
    quiet.assert_outcomes(passed=1)
    assert "[buildenv]" not in quiet.stdout.str()


SHORT = """
from pytest_buildenv import BuildEnvError

def test_command_fails(buildenv):
    buildenv.run("echo compiling; exit 3", check=True)

def test_a_library_failed_under_us(buildenv):
    try:
        int("not a number")
    except ValueError as exc:
        raise BuildEnvError("the cause; the remedy") from exc
"""


def test_our_failures_are_the_tests_line_and_ours_and_come_back_whole_with_v(pytester):
    pytester.makepyfile(SHORT)
    short = pytester.runpytest()
    short.assert_outcomes(failed=2)
    out = short.stdout.str()
    failures = out.split("= FAILURES =")[1]
    # the test's own line, then ours: no frame of the plugin's, no chained error under it
    assert 'buildenv.run("echo compiling; exit 3", check=True)' in failures
    assert "E       pytest_buildenv.errors.BuildCommandError: command 'echo compiling; exit 3' exited 3" in failures
    assert "pytest_buildenv/handle.py" not in failures and "pytest_buildenv/result.py" not in failures
    assert "ValueError: invalid literal" not in failures and "direct cause" not in failures, failures
    whole = pytester.runpytest("-v").stdout.str().split("= FAILURES =")[1]
    assert "pytest_buildenv/handle.py" in whole and "pytest_buildenv/result.py" in whole
    assert "ValueError: invalid literal" in whole and "The above exception was the direct cause" in whole
    assert "pytest_buildenv/handle.py" in pytester.runpytest("--fulltrace").stdout.str()


def test_a_bug_of_ours_keeps_its_frames(pytester):
    pytester.makepyfile("def test_bad_argument(buildenv):\n    buildenv.run(None)\n")
    out = pytester.runpytest().stdout.str()
    assert "TypeError" in out and "pytest_buildenv/handle.py" in out  # not ours to hide: it is how to fix it
