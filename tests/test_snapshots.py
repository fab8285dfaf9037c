"""Provisioned snapshots (provision=): run once, committed, cached across sessions by content."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import docker
import pytest

from pytest_buildenv import ImageBuildError
from pytest_buildenv.events import read as read_events
from pytest_buildenv.engine.images import ImageBuilder
from pytest_buildenv.naming import LABEL_CACHE, Owner, new_session_id

pytestmark = pytest.mark.usefixtures("one_session_at_a_time")
BUSYBOX = "buildenv-test/busybox:1"


@pytest.fixture
def token():
    """A provisioning step that no earlier run can have cached."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def snapshots_made():
    """Tags of the snapshots a test made: removed afterwards, caches though they are."""
    made: list[str] = []
    yield made
    client = docker.from_env()
    for tag in made:
        client.images.remove(tag, force=True)


PROJECT_TEST = """
import pytest

STEPS = ["mkdir -p /opt && echo {token} > /opt/token", "mkdir -p /opt/tools && echo tool > /opt/tools/t && chmod 755 /opt/tools"]

@pytest.mark.container(provision=STEPS)
@pytest.mark.parametrize("n", range(3))
def test_on_snapshot(builder_container, n):
    assert builder_container.run("cat /opt/token").stdout == "{token}\\n"
    assert builder_container.run("id -u").stdout.strip() == str(__import__("os").getuid())
    assert builder_container.run("test -e /tmp/left-by-an-earlier-test").exit_code == 1
    builder_container.run("touch /tmp/left-by-an-earlier-test", check=True)
"""


def test_provisioned_once_then_cached_across_sessions(tmp_path, token, snapshots_made):
    (tmp_path / "tox.ini").write_text(f"[pytest]\nbuildenv_image = {BUSYBOX}\n")
    (tmp_path / "test_snap.py").write_text(PROJECT_TEST.format(token=token))
    logs = [tmp_path / "first.jsonl", tmp_path / "second.jsonl"]
    for log in logs:
        result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--buildenv=container"],
                                cwd=tmp_path, capture_output=True, text=True,
                                env={**os.environ, "PYTEST_BUILDENV_EVENTS": str(log)})
        assert result.returncode == 0, result.stdout
        assert "3 passed" in result.stdout
    snapshots = [[e for e in read_events(str(log)) if e.get("snapshot")] for log in logs]
    assert [len(s) for s in snapshots] == [1, 0]  # provisioned by the first session only
    tag = snapshots[0][0]["name"]
    snapshots_made.append(tag)
    assert docker.from_env().images.get(tag).labels[LABEL_CACHE]  # still there: a cache, not a leftover


def test_failing_step_is_one_line_with_its_output(token):
    builder = ImageBuilder(docker.from_env(), Owner(new_session_id()))
    with pytest.raises(ImageBuildError) as raised:
        builder.snapshot(BUSYBOX, (f"mkdir -p /opt && echo {token} > /opt/token", "echo step-says-why; exit 4"))
    first, *rest = str(raised.value).splitlines()
    assert first == f"provision step 'echo step-says-why; exit 4' exited 4 in {BUSYBOX}; fix the step (its output follows)"
    assert rest == ["step-says-why"]
    session = builder.owner.session
    assert docker.from_env().containers.list(all=True, filters={"label": f"pytest-buildenv.session={session}"}) == []
