"""Suite-wide: the test base images, pytester, and the closing check that nothing leaked."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["pytester"]

# Made by .ci/base-images without any registry.
BUSYBOX = os.environ.get("BUILDENV_TEST_BUSYBOX", "buildenv-test/busybox:1")
GCC = os.environ.get("BUILDENV_TEST_GCC", "buildenv-test/gcc:1")
# The examples build on Debian's image; here, with no registry, on the suite's own Debian image.
os.environ.setdefault("BUILDENV_EXAMPLE_BASE", GCC)


@pytest.fixture(scope="session")
def suite_endpoint(pytestconfig):
    """The suite's engine: the one this run's session resolved (--buildenv-engine, DOCKER_HOST, the context)."""
    from pytest_buildenv.plugin import SESSION_KEY

    return pytestconfig.stash[SESSION_KEY].services.endpoint


@pytest.fixture(scope="session")
def engine(suite_endpoint):
    """What the suite's engine is: whom builders run as, and so which groups and owners a test can expect."""
    from pytest_buildenv.engine import connect
    from pytest_buildenv.engine.endpoint import describe

    return describe(connect(suite_endpoint, timeout=10))


@pytest.fixture
def one_session_at_a_time(tmp_path_factory):
    """Tests that start sessions of their own run one at a time, whatever the xdist worker: every
    session reaps dead owners when it starts, and a concurrent one would reap what a test killed
    on purpose before the test's own session could. (xdist's loadgroup would do this, but its
    nodeid suffix no longer takes with pytest 9.2.)"""
    from filelock import FileLock

    with FileLock(str(tmp_path_factory.getbasetemp().parent / "one-session-at-a-time.lock")):
        yield


def wait_until_written(path, proc, timeout: float) -> str:
    """Wait for a session under test to write `path` (its test holds a resource); fail with its output
    if it dies first or takes longer than `timeout`. Returns what it wrote."""
    import time

    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < deadline, f"{path} not written within {timeout:g} s"
        time.sleep(0.05)
    return path.read_text()


@pytest.fixture
def wait_written():
    return wait_until_written


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """After the plugin's own sweep: fail the run if any labelled resource remains, or if the
    sweep had to remove a per-test container (a fixture that did not clean up after itself)."""
    if hasattr(session.config, "workerinput"):
        return
    from pytest_buildenv.plugin import SESSION_KEY

    bs = session.config.stash.get(SESSION_KEY, None)
    if bs is None:
        return
    from pytest_buildenv import BuildEnvError
    from pytest_buildenv.naming import LABEL_CACHE

    leaked_containers = [f for f in bs.findings_at_end if f.resource in ("container", "vm")]
    # Provisioned snapshots are caches meant to outlive sessions (the snapshot tests remove theirs).
    try:
        remaining = [f"{r.resource} {r.name}" for r in bs.leftovers() if LABEL_CACHE not in r.labels]
    except BuildEnvError as exc:  # the engine went away: the leak check cannot look, which fails the run
        remaining = [f"(could not be listed: {str(exc).splitlines()[0]})"]
    if leaked_containers or remaining:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for line in [f"container {f.name} outlived its test" for f in leaked_containers] + \
                    [f"left behind: {r}" for r in remaining]:
            reporter.write_line(f"LEAK: {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
