"""Pre-started environments: the next test's builder starts while the current test runs.

Each test still gets a container no test has used, on a workspace no test has
seen: a spare is an ordinary labelled environment made early, in a background
thread, on a fresh directory. Spares left at the end are torn down like any
environment (and, after a crash, reaped like one).
"""

from __future__ import annotations

import itertools
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional
from collections.abc import Hashable

from ..handle import BuildEnv

Factory = Callable[[Path], BuildEnv]


class SparePool:
    def __init__(self, root: Path, depth: int = 1) -> None:
        self.root = root
        self.depth = depth
        self._counter = itertools.count()
        self._spares: dict[Hashable, list[Future[BuildEnv]]] = {}
        self._executor: Optional[ThreadPoolExecutor] = None

    def _fresh_dir(self) -> Path:
        path = self.root / f"ws{next(self._counter)}"
        path.mkdir(parents=True)
        return path

    def _submit(self, factory: Factory) -> Future[BuildEnv]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=max(1, self.depth), thread_name_prefix="buildenv-spare")
        return self._executor.submit(factory, self._fresh_dir())

    def take(self, key: Hashable) -> Optional[BuildEnv]:
        """A ready spare made for `key`, or None (then the caller makes one in the foreground)."""
        queue = self._spares.get(key, [])
        while queue:
            try:
                return queue.pop(0).result()
            except Exception:  # a spare that failed: the foreground attempt reports the cause
                continue
        return None

    def restock(self, key: Hashable, factory: Factory, more_tests_coming: bool = True) -> None:
        """Start spares for `key` in the background, up to `depth`; none after a process's last test."""
        queue = self._spares.setdefault(key, [])
        while more_tests_coming and len(queue) < self.depth:
            queue.append(self._submit(factory))

    def drain(self) -> None:
        """Tear down every spare not handed out."""
        for queue in self._spares.values():
            for future in queue:
                try:
                    spare = future.result()
                except Exception:
                    continue
                spare.close()
                shutil.rmtree(spare.workspace, ignore_errors=True)
        self._spares.clear()
