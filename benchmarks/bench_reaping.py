"""Throwaway figures, as printed: kills, leftovers after kill and after the next session,
and name collisions across N concurrent sessions. Needs the busybox test image.

    python benchmarks/bench_reaping.py [KILLS] [CONCURRENT]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

from pytest_buildenv.events import read as read_events
from pytest_buildenv.naming import LABEL_SESSION

BUSYBOX = "buildenv-test/busybox:1"
KILLS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
CONCURRENT = int(sys.argv[2]) if len(sys.argv) > 2 else 4

HOLD = """
import os, pathlib, time
def test_hold(builder_container):
    pathlib.Path(os.environ["READY"]).write_text(builder_container.name)
    time.sleep(120)
"""
MANY = """
import pytest
@pytest.mark.parametrize("n", range(5))
def test_many(builder_container, n):
    assert builder_container.run("true").ok
"""


def pytest_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--buildenv=container", *args]


def main() -> None:
    client = docker.from_env()
    root = Path(tempfile.mkdtemp())
    (root / "tox.ini").write_text(f"[pytest]\nbuildenv_image = {BUSYBOX}\n")
    (root / "test_hold.py").write_text(HOLD)
    (root / "test_many.py").write_text(MANY)

    def left_of(session: str) -> int:
        return len(client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={session}"}))

    sessions = []
    after_kill = 0  # counted right after each kill, before the next session starts (and reaps it)
    for i in range(KILLS):
        ready = root / f"ready-{i}"
        proc = subprocess.Popen(pytest_cmd("test_hold.py"), cwd=root, env={**os.environ, "READY": str(ready)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not ready.exists():
            time.sleep(0.05)
        sessions.append(client.containers.get(ready.read_text()).labels[LABEL_SESSION])
        proc.kill()
        proc.wait()
        after_kill += left_of(sessions[-1])

    subprocess.run(pytest_cmd("test_many.py"), cwd=root, check=True, stdout=subprocess.DEVNULL)
    after_next = sum(left_of(s) for s in sessions)
    print(f"processes killed with SIGKILL: {KILLS}")
    print(f"resources left right after each kill (summed): {after_kill}")
    print(f"resources left after the next session: {after_next}")

    logs = [root / f"events-{i}.jsonl" for i in range(CONCURRENT)]
    procs = [subprocess.Popen(pytest_cmd("test_many.py", "-n", "2"), cwd=root,
                              env={**os.environ, "PYTEST_BUILDENV_EVENTS": str(log)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for log in logs]
    codes = [proc.wait() for proc in procs]
    names = [e["name"] for log in logs for e in read_events(str(log))
             if e["event"] == "created" and e["resource"] == "container"]
    run_sessions = {e["session"] for log in logs for e in read_events(str(log))}
    remaining = sum(left_of(s) for s in run_sessions)
    print(f"concurrent sessions (-n 2 each): {CONCURRENT}, exit codes {codes}")
    print(f"containers made: {len(names)}, distinct names: {len(set(names))}, "
          f"collisions: {len(names) - len(set(names))}, left afterwards: {remaining}")


if __name__ == "__main__":
    main()
