"""How much slower a linux/arm64 builder is here (emulated by qemu-user-static) than a native one.

    python benchmarks/bench_arm64.py [--rounds 3]

The same two commands in a linux/amd64 builder (buildenv-test/gcc:1) and a linux/arm64 one
(buildenv-test/gcc-arm64:1): a C compile (examples/hello's program, -O2, ten times) and a checksum
of 32 MiB. Prints each median and the ratio: the figure platforms.EMULATION_FACTOR rests on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pytest_buildenv.naming import Owner, new_session_id
from pytest_buildenv.services import Services
from pytest_buildenv.session import BuildEnvSession
from pytest_buildenv.settings import Selection

ROOT = Path(__file__).resolve().parent.parent
BUILDERS = {"linux/amd64": "buildenv-test/gcc:1", "linux/arm64": "buildenv-test/gcc-arm64:1"}
COMMANDS = {
    "compile": "for i in 1 2 3 4 5 6 7 8 9 10; do gcc -O2 -o hello helloworld.c; done",
    "checksum": "head -c 33554432 /dev/zero > blob && sha256sum blob >/dev/null",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    session = BuildEnvSession(Selection(("container",), True, "bench"), Services(Owner(new_session_id())))
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for platform, image in BUILDERS.items():
            settings = session.settings("container", {"image": image, "platform": platform}, ROOT)
            env = session.open("container", settings, Path(tempfile.mkdtemp()))
            try:
                env.put(ROOT / "examples" / "hello" / "helloworld.c", "helloworld.c")
                for name, command in COMMANDS.items():
                    for _ in range(rounds):
                        started = time.monotonic()
                        env.run(command, check=True, timeout=600)
                        times.setdefault((platform, name), []).append(time.monotonic() - started)
            finally:
                session.close(env)
    finally:
        session.finish()
    print(f"linux/arm64 (emulated) against linux/amd64 (native) builders on this machine, {rounds} rounds:")
    for name in COMMANDS:
        native, emulated = (statistics.median(times[(p, name)]) for p in BUILDERS)
        print(f"  {name}: native median {native:.2f} s, emulated median {emulated:.2f} s: "
              f"emulated / native = {emulated / native:.1f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
