"""Memory under an output flood: what a command printing 400 MB costs the test process.

    python benchmarks/bench_flood.py [--megabytes 400] [--kinds local,container]

Each measurement runs in a fresh interpreter and reports how much its peak resident memory grew while
the command ran. The baseline is the same command through subprocess.run(capture_output=True), which
holds the output whole, as the plugin did before output_limit; the ratio is kind / baseline.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile

MEASURE = r"""
import resource, sys, tempfile
from pathlib import Path

kind, size = sys.argv[1], int(sys.argv[2])
command = f"head -c {size} /dev/zero | tr '\\0' x"
workspace = Path(tempfile.mkdtemp()) / "ws"
workspace.mkdir()
if kind == "baseline":
    import subprocess
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    subprocess.run(["sh", "-c", command], capture_output=True, check=True)
else:
    from pytest_buildenv.naming import Owner, new_session_id
    from pytest_buildenv.services import Services
    from pytest_buildenv.session import BuildEnvSession
    from pytest_buildenv.settings import Selection

    session = BuildEnvSession(Selection((kind,), True, "bench_flood"), Services(Owner(new_session_id())))
    marker = {"image": "buildenv-test/busybox:1"} if kind == "container" else {}
    env = session.open(kind, session.settings(kind, marker, workspace), workspace)
    env.run("true")  # the builder is up before the clock: only the flood is measured
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    env.run(command, check=True)
    session.close(env)
    session.finish()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def grown(kind: str, size: int) -> float:
    done = subprocess.run([sys.executable, "-c", MEASURE, kind, str(size)], capture_output=True, text=True,
                          check=True, cwd=tempfile.gettempdir())
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=400)
    parser.add_argument("--kinds", default="local,container")
    args = parser.parse_args()
    size = args.megabytes * 1_000_000
    baseline = grown("baseline", size)
    print(f"baseline (subprocess.run, output held whole): peak memory grew {baseline:.0f} MiB for {args.megabytes} MB")
    for kind in args.kinds.split(","):
        mib = grown(kind, size)
        print(f"{kind}: peak memory grew {mib:.0f} MiB for {args.megabytes} MB: {kind} / baseline = {mib / baseline:.3f}")


if __name__ == "__main__":
    main()
