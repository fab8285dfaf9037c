"""Session-scoped resources shared by every pytest-xdist worker of one run.

The first worker that needs a resource creates it under a file lock and records
it (plain JSON); the others find the record and attach. Nobody but the session
owner (the xdist controller, or the lone pytest process) tears shared resources
down, at the very end: a worker that finishes early must not pull a cluster
from under one that is still running tests, and "last one out" is then simply
the process that outlives all workers.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

Record = dict[str, Any]
LABELS_FILE = "owner.labels"  # not *.json: records() lists those


def state_root() -> Path:
    """Per-user directory for cross-process session state (locks, records)."""
    root = Path(tempfile.gettempdir()) / f"pytest-buildenv-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


class SharedState:
    """Records of shared resources for one session, safe across processes."""

    def __init__(self, session: str, root: Path | None = None, labels: dict[str, str] | None = None) -> None:
        self.directory = (root or state_root()) / "sessions" / session
        self.directory.mkdir(parents=True, exist_ok=True)
        if labels is not None and not (self.directory / LABELS_FILE).exists():
            # The directory is labelled like any resource, so the reaper removes it when its owner is dead.
            tmp = self.directory / f"{LABELS_FILE}.{os.getpid()}"
            tmp.write_text(json.dumps(labels))
            tmp.replace(self.directory / LABELS_FILE)

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.directory / f"{key}.json", self.directory / f"{key}.lock"

    def get_or_create(self, key: str, create: Callable[[], Record]) -> Record:
        """The record for `key`, calling `create()` exactly once per session to make it."""
        record_path, lock_path = self._paths(key)
        with FileLock(str(lock_path)):
            if record_path.exists():
                record: Record = json.loads(record_path.read_text())
                record["created_here"] = False
                return record
            record = create()
            tmp = record_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(record_path)  # atomic: a reader never sees half a record
            return {**record, "created_here": True}

    def records(self) -> dict[str, Record]:
        return {path.stem: json.loads(path.read_text()) for path in sorted(self.directory.glob("*.json"))}


def remove_session_state(session: str) -> None:
    """Remove a session's state directory without making it first (the owner may never have needed one)."""
    shutil.rmtree(state_root() / "sessions" / session, ignore_errors=True)
