"""The registry of kinds: another package adds one through a hook; settings are checked by type."""

from __future__ import annotations

import pytest

# These tests start pytest sessions of their own (see one_session_at_a_time in conftest.py).
pytestmark = pytest.mark.usefixtures("one_session_at_a_time")

# A sixth kind as another package would write it: one module and one registry entry.
ECHO_KIND = '''
from dataclasses import dataclass
from typing import Optional

from pytest_buildenv.kinds.local import LocalEnv, LocalManager
from pytest_buildenv.registry import Check, KindSpec
from pytest_buildenv.settings import CommonSettings


@dataclass(frozen=True)
class EchoSettings(CommonSettings):
    greeting: str = "hello"
    loud: bool = False


class EchoEnv(LocalEnv):
    kind = "echo"


class EchoManager(LocalManager):
    def open(self, settings, workspace, test):
        greeting = settings.greeting.upper() if settings.loud else settings.greeting
        return EchoEnv(workspace, environment={**settings.environment, "GREETING": greeting})


def check(defaults):
    import os
    return Check(os.environ.get("ECHO_BROKEN") is None, "the echo tool is broken", "unset ECHO_BROKEN")


KIND = KindSpec(settings=EchoSettings, manager=EchoManager, check=check)
'''

CONFTEST = '''
import pytest
from pytest_buildenv.plugin import open_environment
from pytest_buildenv.registry import Default, Entry


def pytest_buildenv_register_kinds(registry):
    registry.add("echo", Entry("echo_kind", fixtures=("echo_env",),
                               defaults=(Default("greeting", ini="echo_greeting"),)))


def pytest_addoption(parser):
    parser.addini("echo_greeting", "the echo kind's default greeting")


@pytest.fixture
def echo_env(request):
    yield from open_environment(request, "echo")
'''

TESTS = '''
import pytest

def test_default_from_ini(echo_env):
    assert echo_env.kind == "echo"
    assert echo_env.run("echo $GREETING", check=True).stdout == "from-ini\\n"

@pytest.mark.echo(greeting="hi", loud=True)
def test_marker_overrides(echo_env):
    assert echo_env.run("echo $GREETING").stdout == "HI\\n"

def test_buildenv_runs_on_every_enabled_kind(buildenv):
    assert buildenv.kind in ("local", "echo")
'''


@pytest.fixture
def project(pytester):
    pytester.makepyfile(echo_kind=ECHO_KIND, conftest=CONFTEST, test_echo=TESTS)
    pytester.makeini("[pytest]\necho_greeting = from-ini\naddopts = --strict-markers\n")
    return pytester


def test_a_kind_added_by_another_package_runs_like_a_builtin_one(project):
    result = project.runpytest_subprocess("-v", "--buildenv=local,echo")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["buildenv: kinds local, echo (from --buildenv)",
                                 "*test_buildenv_runs_on_every_enabled_kind?local? PASSED*",
                                 "*test_buildenv_runs_on_every_enabled_kind?echo? PASSED*",
                                 "*environments made: 3 echo, 1 local*"])


def test_an_added_kind_not_enabled_is_skipped_naming_the_option(project):
    result = project.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*run with --buildenv=echo*"])


def test_an_added_kind_with_broken_tooling_is_one_line_error(project, monkeypatch):
    monkeypatch.setenv("ECHO_BROKEN", "1")
    result = project.runpytest_subprocess("--buildenv=echo")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: the echo tool is broken; unset ECHO_BROKEN"])
    assert "Traceback" not in result.stderr.str()


def test_doctor_lists_every_builtin_kind_from_the_registry():
    import subprocess
    import sys

    from pytest_buildenv.registry import BUILTIN

    out = subprocess.run([sys.executable, "-m", "pytest_buildenv", "doctor"], capture_output=True, text=True).stdout
    assert [line.split()[0] for line in out.splitlines() if not line.startswith(" ")] == list(BUILTIN)


@pytest.mark.parametrize(("marker", "message"), [
    ('timeout="abc"', "timeout='abc' is not valid; timeout takes a number"),
    ("image=42", "image=42 is not valid; image takes a string"),
    ("network=5", "network=5 is not valid; network takes a string"),
    ('environment=["A=1"]', "environment=['A=1'] is not valid; environment takes a mapping of names to strings"),
    ('build_args={"A": [1]}', "build_args={'A': [1]} is not valid; build_args takes a mapping of names to strings"),
    ('ssh_agent="maybe"', "ssh_agent='maybe' is not valid; ssh_agent takes true or false"),
])
def test_a_wrong_type_in_a_marker_is_one_line_naming_the_key(pytester, marker, message):
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.container({marker})
        def test_x(builder_container):
            pass
    """)
    result = pytester.runpytest_subprocess("--buildenv=container")
    result.assert_outcomes(errors=1)
    assert "@pytest.mark.container of test_a_wrong_type" in result.stdout.str()
    assert f".py::test_x: {message}\n" in result.stdout.str() and "Traceback" not in result.stdout.str()


def test_a_wrong_type_in_buildenv_yaml_stops_the_session_naming_the_file(pytester):
    pytester.makefile(".yaml", buildenv="vm:\n  reset: sometimes\ncontainer:\n  timeout: 10\n")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: buildenv.yaml section 'vm': reset='sometimes' is not valid; "
                                 "reset takes 'destroy' or 'snapshot'"])


def test_a_wrong_ini_value_names_the_ini(pytester):
    pytester.makeini("[pytest]\nbuildenv_timeout = soon\n")
    pytester.makepyfile("def test_x(buildenv):\n    pass\n")
    result = pytester.runpytest_subprocess()
    result.stdout.fnmatch_lines(["*ini and options: timeout='soon' is not valid; timeout takes a number*"])
