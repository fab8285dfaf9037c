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
from typing import Callable, Hashable, Optional

from .backends.base import BuildEnv

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

    def get(self, key: Hashable, factory: Factory) -> BuildEnv:
        """A ready environment for `key`: a spare if one was made, else a new one; then restock."""
        queue = self._spares.setdefault(key, [])
        env = None
        while queue and env is None:
            try:
                env = queue.pop(0).result()
            except Exception:  # a spare that failed: the foreground attempt below reports the cause
                env = None
        if env is None:
            env = factory(self._fresh_dir())
        while len(queue) < self.depth:
            queue.append(self._submit(factory))
        return env

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
