"""An optional lifecycle log: one JSON line per resource created, removed or reaped.

Set PYTEST_BUILDENV_EVENTS=FILE to get it. Appends of one short line are
atomic across processes, so xdist workers and concurrent sessions may share a
file. Used by the reliability tests and benchmarks, and handy when hunting a leak.
"""

from __future__ import annotations

import json
import os
import time

ENV_VAR = "PYTEST_BUILDENV_EVENTS"


def emit(event: str, resource: str, name: str, session: str = "", **extra: object) -> None:
    path = os.environ.get(ENV_VAR)
    if not path:
        return
    record = {"t": round(time.time(), 3), "event": event, "resource": resource, "name": name,
              "session": session, "pid": os.getpid(), **extra}
    with open(path, "a") as log:
        log.write(json.dumps(record) + "\n")


def read(path: str) -> list[dict[str, object]]:
    with open(path) as log:
        return [json.loads(line) for line in log if line.strip()]
