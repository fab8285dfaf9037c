"""The ccache example's build, cold and then warm: the second build against the first.

    python benchmarks/bench_ccache.py [--rounds 3]

Runs the library without pytest: one builder from the example's settings, a cache
of its own (removed at the end), `cmake --build` timed on an empty cache and then
again after `rm -rf build` with the cache warm. Prints both and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples" / "ccache"))
os.environ.setdefault("BUILDENV_EXAMPLE_BASE", "buildenv-test/gcc:1")

from test_ccache import BUILDER, HERE, hits  # noqa: E402

from pytest_buildenv.naming import Owner, new_session_id  # noqa: E402
from pytest_buildenv.services import Services  # noqa: E402
from pytest_buildenv.session import BuildEnvSession  # noqa: E402
from pytest_buildenv.settings import Selection  # noqa: E402


def timed(env, command: str) -> float:
    started = time.monotonic()
    env.run(command, check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    cache = f"bench-ccache-{uuid.uuid4().hex[:8]}"
    session = BuildEnvSession(Selection(("container",), True, "bench"), Services(Owner(new_session_id())))
    settings = session.settings("container", {**BUILDER, "caches": {cache: "/ccache"}}, HERE)
    env = session.open("container", settings, Path(tempfile.mkdtemp()))
    cold, warm = [], []
    try:
        env.put(HERE / "CMakeLists.txt", "CMakeLists.txt")
        env.put(HERE / "src", "src")
        for _ in range(rounds):
            env.run("rm -rf build && ccache --clear >/dev/null && cmake -S . -B build "
                    "-DCMAKE_C_COMPILER_LAUNCHER=ccache >/dev/null", check=True)
            cold.append(timed(env, "cmake --build build >/dev/null"))
            env.run("rm -rf build && ccache --zero-stats >/dev/null && cmake -S . -B build "
                    "-DCMAKE_C_COMPILER_LAUNCHER=ccache >/dev/null", check=True)
            warm.append(timed(env, "cmake --build build >/dev/null"))
            assert hits(env) == 3, "the warm build did not come from the cache"
    finally:
        session.close(env)
        session.finish()
        session.services.engine.client.api.remove_volume(f"buildenv-cache-{cache}", force=True)
    print(f"ccache example (examples/ccache, 3 C files), `cmake --build`, {rounds} rounds:")
    print(f"  cold cache median {statistics.median(cold) * 1000:.0f} ms, warm cache median "
          f"{statistics.median(warm) * 1000:.0f} ms: warm / cold = {statistics.median(warm) / statistics.median(cold):.2f}")


if __name__ == "__main__":
    main()
