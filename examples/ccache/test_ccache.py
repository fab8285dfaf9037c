"""A CMake project built with ccache in a builder whose `ccache` cache outlives tests and sessions.

    python -m pytest --buildenv=container examples/ccache     # cold the first time, warm after

The builder is a Debian image with cmake and ccache installed once (a provisioned
snapshot, cached across sessions); BUILDENV_EXAMPLE_BASE picks another base image.
"""

import os
import re
from pathlib import Path

import pytest

HERE = Path(__file__).parent
BUILDER = {
    "image": os.environ.get("BUILDENV_EXAMPLE_BASE", "debian:bookworm"),
    "provision": ["apt-get update -qq && apt-get install -y -qq --no-install-recommends cmake ccache gcc libc6-dev make"
                  " >/dev/null && rm -rf /var/lib/apt/lists/*"],
    "caches": {"ccache": "/ccache"},
    "environment": {"CCACHE_DIR": "/ccache", "CCACHE_BASEDIR": "/work"},
}
BUILD = "cmake -S . -B build -DCMAKE_C_COMPILER_LAUNCHER=ccache >/dev/null && cmake --build build"


def hits(env) -> int:
    stats = env.run("ccache --print-stats", check=True).stdout
    return sum(int(n) for n in re.findall(r"^(?:direct|preprocessed)_cache_hit\t(\d+)$", stats, re.MULTILINE))


@pytest.mark.container(**BUILDER)
def test_rebuild_comes_from_the_cache(buildenv):
    buildenv.put(HERE / "CMakeLists.txt", "CMakeLists.txt")
    buildenv.put(HERE / "src", "src")
    buildenv.run(BUILD, check=True)
    assert buildenv.run("./build/greeter", check=True).stdout == "Hello from a cached build!\n"
    buildenv.run("rm -rf build && ccache --zero-stats >/dev/null", check=True)
    buildenv.run(BUILD, check=True)
    assert hits(buildenv) == 3  # every object, from the cache
    assert buildenv.artifact("build/greeter").uid == os.getuid()
