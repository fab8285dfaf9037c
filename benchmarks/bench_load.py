"""Load: the resident memory and open file descriptors of the controller and each xdist worker while 400
container tests run with -n 2, sampled from /proc as they go, and their growth per test.

    python benchmarks/bench_load.py [--tests 400] [--workers 2]

A sampler reads each pytest process's VmRSS and /proc/PID/fd every 0.5 s; the growth per test is the
least-squares slope of those samples against the tests done so far (each test appends a byte to a
file), over the second half of the run, after pools and caches have filled. The baseline is the same
number of tests that use no environment (each sleeps 0.1 s, to be sampled), in the same run: pytest and
xdist keep every test's report, so they grow by themselves; the ratio is the plugin's tests' growth per
test against theirs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = """
import os, time, pytest

@pytest.mark.parametrize("n", range({n}))
def test_one({fixture}n):
    {body}
    with open(os.environ["DONE"], "a") as done:
        done.write("x")
"""
WITH_BUILDER = {"fixture": "builder_container, ", "body": 'assert builder_container.run(["true"]).exit_code == 0'}
BARE = {"fixture": "", "body": "time.sleep(0.1)"}


def pytest_processes(root: int) -> dict[int, str]:
    """The run's pytest processes: the controller, and the workers it spawned (execnet's python -c)."""
    found = {root: "controller"}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == root:
            found[int(entry)] = f"worker {len(found)}"
    return found


def sample(pid: int) -> tuple[int, int]:
    """(resident KiB, open fds) of one process now."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def tests_done(done: Path) -> int:
    try:
        return done.stat().st_size
    except OSError:
        return 0


def slope(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else 0.0


def measure(tests: int, workers: int, kind: dict[str, str]) -> tuple[str, dict[str, tuple[float, float, float, float, int]]]:
    """One run: its summary line, and per process (RSS KiB first, RSS KiB per test, fds first, fds per test, peak)."""
    project = Path(tempfile.mkdtemp(prefix="bench-load-"))
    (project / "test_load.py").write_text(TESTS.format(n=tests, **kind))
    (project / "tox.ini").write_text("[pytest]\nbuildenv_image = buildenv-test/busybox:1\n")
    done = project / "done"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--buildenv=container",
                             "-n", str(workers)], cwd=project, env={**os.environ, "DONE": str(done)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples: dict[str, list[tuple[int, int, int]]] = {}  # name -> (tests done, rss KiB, fds)
    while proc.poll() is None:
        count = tests_done(done)
        for pid, name in pytest_processes(proc.pid).items():
            try:
                rss, fds = sample(pid)
            except (OSError, StopIteration):
                continue
            samples.setdefault(name, []).append((count, rss, fds))
        time.sleep(0.5)
    out = proc.stdout.read() if proc.stdout else ""
    figures = {}
    for name, rows in sorted(samples.items()):
        late = [row for row in rows if row[0] >= tests // 2]
        early = [row for row in rows if 0 < row[0] < tests // 2] or rows[:1]
        if len(late) < 3:
            continue
        xs = [float(r[0]) for r in late]
        figures[name] = (statistics.fmean(r[1] for r in early), slope(xs, [float(r[1]) for r in late]),
                         statistics.fmean(r[2] for r in early), slope(xs, [float(r[2]) for r in late]),
                         max(r[2] for r in rows))
    return out.strip().splitlines()[-1], figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    bare_line, bare = measure(args.tests, args.workers, BARE)
    line, loaded = measure(args.tests, args.workers, WITH_BUILDER)
    print(f"baseline, {args.tests} tests with no environment: {bare_line}")
    print(f"{args.tests} container tests (a fresh builder each), -n {args.workers}: {line}")
    for name, (rss, rss_slope, fds, fd_slope, peak) in loaded.items():
        base = bare.get(name)
        ratio = f"; against the baseline's {base[1]:+.2f} KiB per test: {rss_slope / base[1]:.2f}" \
            if base and base[1] > 0 else ""
        print(f"  {name}: RSS {rss / 1024:.1f} MiB at first, {rss_slope:+.2f} KiB per test over the second half"
              f"{ratio}; fds {fds:.0f} at first, {fd_slope:+.4f} per test, peak {peak}")


if __name__ == "__main__":
    main()
