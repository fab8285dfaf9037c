"""Environments kept across sessions (ini buildenv_reuse): the settings, the claims, the reaper's verdicts.

The claims are real: another process takes one and holds its owner lock, and is killed with
SIGKILL. The kind kind's kept clusters themselves are tested on a real KIND cluster in test_kind.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from pytest_buildenv import ConfigError
from pytest_buildenv.naming import LABEL_CREATED, LABEL_EXPIRES, LABEL_KIND, LABEL_REUSE, Labelled, Owner, new_session_id
from pytest_buildenv.reuse import Pool, ReuseSettings, judge, remove_unclaimed

HOLDER = """
import sys, time
from pytest_buildenv.naming import Owner
from pytest_buildenv.owners import OwnerLock
from pytest_buildenv.reuse import Pool

lock = OwnerLock()
owner = Owner(sys.argv[3])
pool = Pool("kind", sys.argv[1])
with pool.locked():
    pool.take(sys.argv[2], owner)
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("text, seconds", [("24h", 86400), ("90m", 5400), ("30s", 30), ("2d", 172800), ("1.5", 5400)])
def test_a_ttl_is_a_duration(text, seconds):
    assert ReuseSettings.from_ini({"buildenv_reuse": "kind", "buildenv_reuse_ttl": text}).ttl == seconds


@pytest.mark.parametrize("text", ["soon", "0", "-1h", "3w"])
def test_a_ttl_that_is_no_duration_is_one_line(text):
    with pytest.raises(ConfigError, match=rf"^ini buildenv_reuse_ttl='{text}' is not valid; buildenv_reuse_ttl takes a "
                                          "duration above 0 such as 24h"):
        ReuseSettings.from_ini({"buildenv_reuse_ttl": text})


def test_reuse_of_a_kind_that_keeps_nothing_is_a_usage_error(pytester):
    pytester.makepyfile("def test_x(): pass\n")
    result = pytester.runpytest("-o", "buildenv_reuse=kind,vm")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.strip()]
    assert errors == ["ERROR: ini buildenv_reuse=kind,vm names 'vm', which keeps nothing across sessions; "
                      "the kinds that do: kind"]


@pytest.fixture
def kept():
    """A kept 'environment' that is a real file (what remove() removes), with a fresh key."""
    key, name = uuid.uuid4().hex[:16], f"buildenv-reuse-test-{uuid.uuid4().hex[:8]}"
    removed = []

    def item(expires_in: float = 3600) -> Labelled:
        labels = {LABEL_KIND: "kind", LABEL_REUSE: key, LABEL_CREATED: str(int(time.time()) - 60),
                  LABEL_EXPIRES: str(int(time.time() + expires_in))}
        return Labelled("cluster", name, name, labels, lambda: removed.append(name))
    item.key, item.name, item.removed = key, name, removed  # type: ignore[attr-defined]
    return item


def test_a_claim_holds_while_its_session_lives_and_frees_when_it_is_killed(kept):
    session = new_session_id()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, kept.key, kept.name, session], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        me = Owner(new_session_id())
        assert not Pool("kind", kept.key).free(kept.name, me)
        action, reason = judge(kept(), include_reusable=True)
        assert action == "keep" and f"in use by session {session} (pid {holder.pid}" in reason, reason
        assert not remove_unclaimed(kept(), me) and kept.removed == []
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert Pool("kind", kept.key).free(kept.name, Owner(new_session_id()))  # its owner lock went with it
    action, reason = judge(kept(), include_reusable=False)
    assert action == "keep" and reason.endswith("free); remove with reap --include-reusable"), reason
    assert judge(kept(), include_reusable=True)[0] == "remove"


def test_an_unclaimed_environment_expires_and_is_removed_then(kept):
    action, reason = judge(kept(expires_in=-5), include_reusable=False)
    assert action == "remove" and "expired 5 s ago" in reason, reason
    assert remove_unclaimed(kept(expires_in=-5), Owner(new_session_id())) and kept.removed == [kept.name]


def test_another_hosts_claim_is_reported_not_judged(kept, tmp_path):
    pool = Pool("kind", kept.key)
    with pool.locked():
        pool.take(kept.name, Owner("s-elsewhere", pid=1, host="another-host"))
    try:
        action, reason = judge(kept(expires_in=-5), include_reusable=True)
        assert action == "report" and "in use by session s-elsewhere (pid 1 on another-host)" in reason, reason
    finally:
        with pool.locked():
            pool.clear(kept.name)


def test_claims_are_files_every_user_may_write():
    """Kept environments are shared by every user of the host (one engine): a claim another user wrote
    and left (its session killed) must be writable by the next, in a sticky directory."""
    key, name = uuid.uuid4().hex[:16], f"buildenv-reuse-test-{uuid.uuid4().hex[:8]}"
    pool = Pool("kind", key)
    with pool.locked():
        pool.take(name, Owner(new_session_id()))
    from pytest_buildenv.reuse import REUSE_DIR

    claim = REUSE_DIR / f"{name}.claim"
    assert json.loads(claim.read_text())["pid"] == os.getpid()
    assert claim.stat().st_mode & 0o777 == 0o666 and (REUSE_DIR / f"kind-{key}.lock").stat().st_mode & 0o777 == 0o666
    pool.release(name, Owner("another-session"))  # not its claim: stays
    assert claim.read_text()
    with pool.locked():
        pool.clear(name)
    assert claim.read_text() == "" and pool.claim(name) is None
