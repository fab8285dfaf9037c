"""run() with the workspace copied in and out (workspace: copy) against bind-mounted, same engine, same run.

    python benchmarks/bench_copy_mode.py [--engine URL] [--rounds 30]

A workspace of 1,000 files, 20 MB in all; before each run() one file is changed on the host,
and the command (`cat` of that file, then writing one file) must see it and its output must come
back. Prints the median run() of each mode and copy/bind. The seeding copy at start is printed
apart: it is paid once per builder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from pytest_buildenv.engine import connect
from pytest_buildenv.engine.endpoint import describe, resolve
from pytest_buildenv.kinds.container import BuilderSpec, ContainerEnv
from pytest_buildenv.naming import Owner, new_session_id

IMAGE = "buildenv-test/busybox:1"


def workspace() -> Path:
    root = Path(tempfile.mkdtemp(prefix="bench-copy-"))
    for i in range(1000):
        folder = root / f"d{i // 100}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{i}.dat").write_bytes(os.urandom(20_000))
    return root


def measure(client, copy: bool, rounds: int) -> tuple[float, float]:
    ws = workspace()
    started = time.monotonic()
    env = ContainerEnv(client, BuilderSpec(IMAGE, copy_workspace=copy), ws, Owner(new_session_id()), test="bench").start()
    seeded = time.monotonic() - started
    times = []
    try:
        for i in range(rounds):
            (ws / "d3" / "f300.dat").write_text(f"round {i}\n")
            started = time.monotonic()
            result = env.run("cat d3/f300.dat > out.txt", check=True)
            times.append(time.monotonic() - started)
            assert result.ok and (ws / "out.txt").read_text() == f"round {i}\n"
    finally:
        env.close()
    return statistics.median(times), seeded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", default=None)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    engine = resolve(args.engine, "--engine")
    client = connect(engine)
    print(f"engine: {describe(client)} at {engine.url}; workspace 1,000 files, 20 MB, one file changed per run()")
    bind, bind_start = measure(client, False, args.rounds)
    copy, copy_start = measure(client, True, args.rounds)
    print(f"run(), bind-mounted: {bind * 1000:.1f} ms (start {bind_start * 1000:.0f} ms)")
    print(f"run(), copied:       {copy * 1000:.1f} ms (start, with the first copy, {copy_start * 1000:.0f} ms)")
    print(f"copy/bind: {copy / bind:.2f}x")


if __name__ == "__main__":
    main()
