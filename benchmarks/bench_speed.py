"""Speed targets, as ratios measured in one run (this machine is noisy; absolute times mean little).

1. Marginal cost of one more test with a fresh builder_container, over whole pytest runs:
   (T[21 tests] - T[1 test]) / 20, against the median `docker run --rm IMAGE true`; with
   pre-started spares (the default) and without (-o buildenv_spares=0), with shared network
   namespaces (the default) and without (-o buildenv_share_network=false: the "before").
   Beside each, the machine's CPU time per marginal test (all processes: dockerd, containerd,
   shims, runc, pytest), from /proc/stat: on 2 cores that, not latency, is the floor.
2. A test on a provisioned snapshot (provision=) against one on the bare base image, and the
   provisioning time of a second session (cache hit).
3. Plugin import: the time `import pytest_buildenv.plugin` adds to `import pytest`, and whether
   a local-only `pytest --co` imports docker, kubernetes or vagrant.
4. The same container suite with -n 2 against -n 0 and -n 1 (one xdist worker), sharing on and off.
5. Flat as the suite grows: the cost per test, (T[N] - T[1]) / (N - 1), at N = 20, 100 and 400
   tests in one session (defaults), each against docker run, and the largest over the smallest.

    python benchmarks/bench_speed.py [IMAGE] [ROUNDS] [--parts=12345]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
IMAGE = ARGS[0] if ARGS else "buildenv-test/busybox:1"
ROUNDS = int(ARGS[1]) if len(ARGS) > 1 else 3
PARTS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--parts=")), "12345")

TESTS = """
import pytest

@pytest.mark.parametrize("n", range({n}))
@pytest.mark.container({marker})
def test_one(builder_container, n):
    assert builder_container.run(["true"]).exit_code == 0
"""

def project(text: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix="bench-"))
    (root / "tox.ini").write_text(f"[pytest]\nbuildenv_image = {IMAGE}\n")
    (root / "test_bench.py").write_text(text)
    return root


def cpu_seconds() -> float:
    """Busy CPU time of the whole machine so far (every process, kernel included)."""
    import os

    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def pytest_time(root: Path, *args: str) -> float:
    return pytest_cost(root, *args)[0]


def pytest_cost(root: Path, *args: str) -> tuple[float, float]:
    """Wall-clock and machine CPU seconds of one whole pytest run."""
    started, cpu = time.perf_counter(), cpu_seconds()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--buildenv=container", *args],
                   cwd=root, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, cpu_seconds() - cpu


def docker_run_median(rounds: int = 15) -> float:
    import docker

    client = docker.from_env()
    times = []
    for _ in range(rounds + 1):
        started = time.perf_counter()
        client.containers.run(IMAGE, ["true"], remove=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def marginal(args: tuple[str, ...], marker: str = "") -> tuple[float, float]:
    """Median wall-clock and CPU seconds that one more test adds."""
    one, many = project(TESTS.format(n=1, marker=marker)), project(TESTS.format(n=21, marker=marker))
    walls, cpus = [], []
    for _ in range(ROUNDS):
        wall_many, cpu_many = pytest_cost(many, *args)
        wall_one, cpu_one = pytest_cost(one, *args)
        walls.append((wall_many - wall_one) / 20)
        cpus.append((cpu_many - cpu_one) / 20)
    return statistics.median(walls), statistics.median(cpus)


SHARING_OFF = ("-o", "buildenv_share_network=false")
VARIANTS = (("before: no spares, no shared netns", ("-o", "buildenv_spares=0", *SHARING_OFF), ""),
            ("before: spares, no shared netns", SHARING_OFF, ""),
            ("no spares, shared netns", ("-o", "buildenv_spares=0"), ""),
            ("spares and shared netns (default)", (), ""),
            ("default, network='none'", (), "network='none'"))


def docker_run_cpu(rounds: int = 10) -> float:
    import docker

    client = docker.from_env()
    cpu = cpu_seconds()
    for _ in range(rounds):
        client.containers.run(IMAGE, ["true"], remove=True)
    return (cpu_seconds() - cpu) / rounds


def main() -> None:
    baseline = docker_run_median()
    print(f"docker run --rm {IMAGE} true, median: {baseline * 1000:.0f} ms")
    if "1" in PARTS:
        cpu = statistics.median(docker_run_cpu() for _ in range(3))
        print(f"   (docker run uses {cpu * 1000:.0f} ms of machine CPU)")
        for label, args, marker in VARIANTS:
            wall, cpu = marginal(args, marker)
            print(f"1. marginal cost per container test, {label}: {wall * 1000:.0f} ms = {wall / baseline:.2f}x "
                  f"docker run (machine CPU {cpu * 1000:.0f} ms)")

    if "2" in PARTS:
        provision = '["mkdir -p /opt && echo provisioned > /opt/marker", "sleep 3"]'
        bare = project(TESTS.format(n=11, marker=""))
        prov = project(TESTS.format(n=11, marker=f"provision={provision}, provision_user='root'"))
        pytest_time(prov)  # the first session provisions (and caches) the snapshot
        t_bare = statistics.median(pytest_time(bare) for _ in range(ROUNDS))
        t_prov = statistics.median(pytest_time(prov) for _ in range(ROUNDS))
        print(f"2. 11 tests on a provisioned snapshot / on the bare image: {t_prov / t_bare:.2f} "
              f"(includes a 3 s provisioning step that the cache skips)")

    if "5" in PARTS:
        one = project(TESTS.format(n=1, marker=""))
        t_one = statistics.median(pytest_time(one) for _ in range(ROUNDS))
        per_test = {}
        for n in (20, 100, 400):
            suite = project(TESTS.format(n=n, marker=""))
            per_test[n] = (statistics.median(pytest_time(suite) for _ in range(ROUNDS)) - t_one) / (n - 1)
            print(f"5. {n} container tests in one session: {per_test[n] * 1000:.0f} ms per test = "
                  f"{per_test[n] / baseline:.2f}x docker run")
        print(f"   largest / smallest per-test cost over 20, 100, 400 tests: "
              f"{max(per_test.values()) / min(per_test.values()):.2f}")

    if "3" not in PARTS and "4" not in PARTS:
        return
    code = ("import sys, time; t=time.perf_counter(); import pytest; m=time.perf_counter(); "
            "import pytest_buildenv.plugin; e=time.perf_counter(); print((m-t)*1000, (e-m)*1000)")
    samples = [tuple(map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True).stdout.split())) for _ in range(9)]
    pytest_ms = statistics.median(s[0] for s in samples)
    plugin_ms = statistics.median(s[1] for s in samples)
    print(f"3. import pytest: {pytest_ms:.0f} ms; import pytest_buildenv.plugin after it: {plugin_ms:.1f} ms")
    local = project("def test_local(buildenv):\n    pass\n")
    (local / "conftest.py").write_text(
        "import sys\n"
        "def pytest_collection_finish(session):\n"
        "    print('HEAVY', sorted(m for m in ('docker', 'kubernetes', 'vagrant') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-s", "-p", "no:cacheprovider"], cwd=local,
                         capture_output=True, text=True).stdout
    print(f"   local-only pytest --co imports: {next(l for l in out.splitlines() if l.startswith('HEAVY'))[6:]}")

    suite = project(TESTS.format(n=40, marker="").replace('["true"]', '"sleep 0.2"'))
    for label, extra in (("before (no shared netns)", SHARING_OFF), ("default", ())):
        for spares in ("0", "2"):
            args = ("-o", f"buildenv_spares={spares}", *extra)
            serial = statistics.median(pytest_time(suite, *args) for _ in range(ROUNDS))
            one_worker = statistics.median(pytest_time(suite, "-n", "1", *args) for _ in range(ROUNDS))
            parallel = statistics.median(pytest_time(suite, "-n", "2", *args) for _ in range(ROUNDS))
            print(f"4. 40 container tests running `sleep 0.2`, {label}, spares={spares}: -n 0 {serial:.1f} s, "
                  f"-n 1 {one_worker:.1f} s, -n 2 {parallel:.1f} s: speed-up {serial / parallel:.2f}x over -n 0, "
                  f"{one_worker / parallel:.2f}x over -n 1")


if __name__ == "__main__":
    main()
