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


def check(services, defaults):
    import os
    return Check(os.environ.get("ECHO_BROKEN") is None, "the echo tool is broken", "unset ECHO_BROKEN")


def leftovers(services, session):
    """Files named *.echo-left in $ECHO_LEFT, each a resource of the session its labels name."""
    import json
    import os
    from pathlib import Path

    from pytest_buildenv.naming import Labelled

    for path in sorted(Path(os.environ.get("ECHO_LEFT", "/nonexistent")).glob("*.echo-left")):
        labels = json.loads(path.read_text())
        yield Labelled("echo-file", str(path), path.name, labels, path.unlink)


KIND = KindSpec(settings=EchoSettings, manager=EchoManager, check=check, leftovers=leftovers)
'''

CONFTEST = '''
import pytest
from pytest_buildenv.plugin import open_environment
from pytest_buildenv.registry import Default, Entry


def pytest_buildenv_register_kinds(registry):
    registry.add("echo", Entry("echo_kind", fixtures=("echo_env",),
                               defaults=(Default("greeting", ini="echo_greeting"),
                                         Default("loud", option="--echo-loud", help="shout"))))


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

    from pytest_buildenv.kinds import BUILTIN

    out = subprocess.run([sys.executable, "-m", "pytest_buildenv", "doctor"], capture_output=True, text=True).stdout
    assert [line.split()[0] for line in out.splitlines() if not line.startswith(" ")] == list(BUILTIN)


def test_a_kind_option_comes_from_its_entry(project):
    result = project.runpytest_subprocess("-v", "--buildenv=echo", "--echo-loud=true", "-k", "default_from_ini")
    result.assert_outcomes(failed=1)  # loud: the greeting the test expects is shouted
    assert "FROM-INI" in result.stdout.str()


@pytest.fixture
def installed_echo(tmp_path, monkeypatch):
    """The echo kind as an installed package: a pytest11 entry point naming its plugin module."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "echo_kind.py").write_text(ECHO_KIND)
    (site / "echo_plugin.py").write_text(CONFTEST)
    info = site / "pytest_buildenv_echo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pytest-buildenv-echo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pytest11]\necho = echo_plugin\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    return site


def test_doctor_and_reap_find_a_kind_another_package_registers(installed_echo, tmp_path, monkeypatch):
    import json
    import subprocess
    import sys

    from pytest_buildenv.kinds import BUILTIN
    from pytest_buildenv.naming import Owner

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "pytest_buildenv", *args], capture_output=True, text=True,
                              cwd=tmp_path)

    doctor = cli("doctor", "--buildenv=echo")
    listed = [line.split()[0] for line in doctor.stdout.splitlines() if not line.startswith(" ")]
    assert listed == [*BUILTIN, "echo"] and doctor.returncode == 0, doctor.stdout + doctor.stderr
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp_path / "left"
    left.mkdir()
    (left / "a.echo-left").write_text(json.dumps(Owner("deadbeef", pid=int(dead.stdout)).labels("echo")))
    monkeypatch.setenv("ECHO_LEFT", str(left))
    reap = cli("reap", "--buildenv=echo")
    assert "remove: echo-file a.echo-left (session deadbeef: owner pid" in reap.stdout, reap.stdout + reap.stderr
    assert not (left / "a.echo-left").exists()
    monkeypatch.setenv("ECHO_BROKEN", "1")
    broken = cli("doctor", "--buildenv=echo")
    assert broken.returncode == 1 and "echo      unavailable: the echo tool is broken" in broken.stdout
    assert "fix: unset ECHO_BROKEN" in broken.stdout


def test_a_wrong_memory_string_in_buildenv_yaml_fails_the_session_at_its_start(pytester):
    pytester.makefile(".yaml", buildenv="container:\n  memory: lots\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--buildenv=local")  # container not even enabled: the file loads
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: buildenv.yaml section 'container': memory='lots' is not a size; *"])


@pytest.mark.parametrize(("section", "message"), [
    ("vm:\n  vagrantfile: nowhere/Vagrantfile", "buildenv.yaml section 'vm': Vagrantfile */nowhere/Vagrantfile not found; *"),
    ("kind:\n  cluster: Not_A_Name", "buildenv.yaml section 'kind': KIND cluster name 'Not_A_Name' is invalid; *"),
    ("container:\n  docker_options: {user: root}", "buildenv.yaml section 'container': docker_options key 'user' is "
     "the plugin's; use run(user=...)*"),
])
def test_every_builtin_kinds_own_checks_run_when_settings_load(pytester, section, message):
    pytester.makefile(".yaml", buildenv=section + "\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--buildenv=local")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_a_wrong_ini_value_of_an_enabled_kind_fails_the_session_at_its_start(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("--buildenv=container", "-o", "buildenv_pids=many")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines(["ERROR: ini and options: pids='many' is not valid; pids takes a whole number"])


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
    result = pytester.runpytest_subprocess()  # checked as settings load: the session never starts
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini and options: timeout='soon' is not valid; timeout takes a number"])


def test_the_plugin_loaded_by_a_conftest_still_has_its_registry(pytester, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # no entry points: the conftest names the plugin
    pytester.makeconftest('pytest_plugins = ["pytest_buildenv.plugin"]\n')
    pytester.makepyfile("def test_x(buildenv):\n    assert buildenv.run('echo hi').stdout == 'hi\\n'\n")
    result = pytester.runpytest_subprocess("--buildenv=local", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)

