"""Choosing kinds and settings: options, env, ini, buildenv.yaml, markers, and their errors."""

from __future__ import annotations

import pytest

# These tests start pytest sessions of their own, and every session reaps dead owners' resources
# when it starts: one at a time, so that the sessions they kill on purpose are reaped by the one
# each test expects (see one_session_at_a_time in conftest.py).
pytestmark = pytest.mark.usefixtures("one_session_at_a_time")

BUSYBOX = "buildenv-test/busybox:1"

TWO_KIND_TEST = """
import pytest

def test_runs(buildenv):
    assert buildenv.run("echo ok", check=True).stdout == "ok\\n"

@pytest.mark.container
def test_container_only(buildenv):
    assert buildenv.kind == "container"
"""


@pytest.fixture
def project(pytester):
    pytester.makeini(f"[pytest]\nbuildenv_image = {BUSYBOX}\n")
    return pytester


def test_default_is_local_and_marked_kind_is_skipped_naming_the_option(project):
    project.makepyfile(TWO_KIND_TEST)
    result = project.runpytest("-v", "-rs", "--strict-markers")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["buildenv: kinds local (from default)", "*test_runs?local? PASSED*",
                                 "*SKIPPED*run with --buildenv=container*"])


def test_option_parametrizes_buildenv_over_enabled_kinds(project):
    project.makepyfile(TWO_KIND_TEST)
    result = project.runpytest("-v", "--buildenv=local,container")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*test_runs?local? PASSED*", "*test_runs?container? PASSED*",
                                 "*test_container_only?container? PASSED*"])


def test_env_var_then_ini_then_default(project, monkeypatch):
    project.makeini(f"[pytest]\nbuildenv = container\nbuildenv_image = {BUSYBOX}\n")
    project.makepyfile(TWO_KIND_TEST)
    project.runpytest().stdout.fnmatch_lines(["buildenv: kinds container (from ini buildenv)"])
    monkeypatch.setenv("PYTEST_BUILDENV", "local")
    project.runpytest().stdout.fnmatch_lines(["buildenv: kinds local (from PYTEST_BUILDENV)"])
    project.runpytest("--buildenv=container,local").stdout.fnmatch_lines(
        ["buildenv: kinds container, local (from --buildenv)"])


def test_auto_enables_what_this_machine_has(project):
    from pytest_buildenv.kinds import discover
    from pytest_buildenv.naming import Owner, new_session_id
    from pytest_buildenv.services import Services

    registry, services = discover(), Services(Owner(new_session_id()))
    expected = [kind for kind in registry if kind == "local" or registry.available(kind, services)]
    assert expected[:3] == ["local", "container", "dind"]  # this suite's machines have Docker
    project.makepyfile("""
        import pytest

        @pytest.mark.local
        @pytest.mark.container
        @pytest.mark.dind
        def test_runs(buildenv):
            assert buildenv.run("echo ok", check=True).stdout == "ok\\n"
    """)
    result = project.runpytest("--buildenv=auto")
    result.stdout.fnmatch_lines([f"buildenv: kinds {', '.join(expected)} (from --buildenv)"])
    result.assert_outcomes(passed=3)


def test_unknown_kind_is_one_line_usage_error(project):
    project.makepyfile(TWO_KIND_TEST)
    result = project.runpytest("--buildenv=local,kube")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert errors == ["ERROR: unknown kind 'kube' in --buildenv; choose from local, container, dind, kind, pod, vm or auto"]


def test_explicit_kind_without_daemon_is_an_error_not_a_skip(project, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    project.makepyfile(TWO_KIND_TEST)
    result = project.runpytest("--buildenv=container")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert len(errors) == 1
    assert errors[0].startswith("ERROR: container engine unreachable at unix:///nonexistent/docker.sock, from DOCKER_HOST")
    assert "fix or unset DOCKER_HOST" in errors[0]


@pytest.mark.parametrize("kind, error", [
    ("kind", "ERROR: `kind` executable not found on PATH*"),
    ("vm", "ERROR: `vagrant` not found on PATH; apt-get install vagrant*"),
])
def test_explicit_kind_without_its_executable_is_an_error(project, monkeypatch, kind, error):
    monkeypatch.setenv("PATH", "/nonexistent")
    project.makepyfile(TWO_KIND_TEST)
    result = project.runpytest(f"--buildenv={kind}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([error])


def test_malformed_yaml_is_one_line_usage_error(project):
    project.makefile(".yaml", buildenv="container:\n  image: [unclosed\n")
    project.makepyfile(TWO_KIND_TEST)
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: */buildenv.yaml: line 2 is not valid YAML*fix the file*"])


def test_unknown_yaml_section_and_key(project):
    project.makefile(".yaml", buildenv="containr:\n  image: x\n")
    project.runpytest().stderr.fnmatch_lines(["ERROR: */buildenv.yaml: unknown section 'containr'*"])
    project.makefile(".yaml", buildenv="container:\n  imag: x\n")
    project.runpytest().stderr.fnmatch_lines(
        ["ERROR: unknown keyword 'imag' in buildenv.yaml section 'container'; container takes *image*"])


def test_unknown_marker_keyword_fails_the_test_in_one_line(project):
    project.makepyfile("""
        import pytest

        @pytest.mark.container(imag="x")
        def test_typo(builder_container):
            pass
    """)
    result = project.runpytest("--buildenv=container")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown keyword 'imag' in @pytest.mark.container of test_unknown_marker_keyword*"])
    assert "Traceback" not in result.stdout.str()


def test_marker_beats_yaml_beats_ini(project):
    project.makefile(".yaml", buildenv=f"container:\n  image: {BUSYBOX}\n  environment:\n    FROM_YAML: 'yes'\n")
    project.makeini("[pytest]\nbuildenv_image = ini-image-never-used:0\nbuildenv_timeout = 42\n")
    project.makepyfile(f"""
        import pytest

        def test_yaml_beats_ini(builder_container):
            assert builder_container.image == "{BUSYBOX}"
            assert builder_container.default_timeout == 42
            assert builder_container.run("echo $FROM_YAML").stdout == "yes\\n"

        @pytest.mark.container(image="marker-image-missing:0")
        def test_marker_beats_yaml(builder_container):
            pass
    """)
    result = project.runpytest("--buildenv=container")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*image 'marker-image-missing:0' is not present locally and could not be pulled*"])


def test_strict_markers_know_every_kind(project):
    project.makepyfile("""
        import pytest

        @pytest.mark.local
        @pytest.mark.container
        @pytest.mark.dind
        @pytest.mark.kind
        @pytest.mark.vm
        def test_marked():
            pass
    """)
    result = project.runpytest("--strict-markers", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*run with --buildenv=container,dind,kind,vm*"])


def test_fixture_for_disabled_kind_skips_naming_the_option(project):
    project.makepyfile("def test_needs_container(builder_container):\n    pass\n")
    result = project.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*run with --buildenv=container*"])

