"""The pod kind's speed on the cluster KUBECONFIG names, as ratios measured in the same run:

  1. one test's fresh builder pod (setup + one command + teardown) / a fresh builder container on
     this machine's engine (DOCKER_HOST or the default socket), interleaved;
  2. the wall time of 40 tests of `sleep 3` on pods at -n 1, 4 and 8 / that at -n 1 (and -n 1 with
     spares / without: a test's pod started while the test before it runs).

    KUBECONFIG=... python benchmarks/bench_pod.py [IMAGE] [ROUNDS]

IMAGE must be in the nodes already (no registry here: CI's pod stage loads the suite's images);
the helper image is IMAGE too, and nothing is pulled (imagePullPolicy Never).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

IMAGE = sys.argv[1] if len(sys.argv) > 1 else "buildenv-test/busybox:1"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
TESTS, SLEEP = 40, 3


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def per_test_cost() -> None:
    from pytest_buildenv.engine import connect
    from pytest_buildenv.engine.containers import wait_for_removals
    from pytest_buildenv.engine.endpoint import resolve
    from pytest_buildenv.kinds.container import BuilderSpec, ContainerEnv
    from pytest_buildenv.kinds.pod import Pods, PodSettings
    from pytest_buildenv.kinds.pod import delete_namespace, namespace_of
    from pytest_buildenv.naming import Owner, new_session_id
    from pytest_buildenv.registry import TestInfo
    from pytest_buildenv.services import Services

    owner = Owner(new_session_id())
    services = Services(owner)
    pods = Pods(services)
    settings = PodSettings(image=IMAGE, helper_image=IMAGE, image_pull_policy="Never")
    client = connect(resolve())
    workspace = Path(tempfile.mkdtemp())

    def fresh_pod() -> None:
        env = pods.open(settings, workspace, TestInfo("bench"))
        env.run(["true"], check=True)
        pods.close(env)

    def fresh_container() -> None:
        env = ContainerEnv(client, BuilderSpec(IMAGE), workspace, owner, test="bench").start()
        env.run(["true"], check=True)
        env.close()

    try:
        pod, container = [], []
        fresh_pod(), fresh_container()  # warm-up: the namespace, the engine's caches
        for _ in range(ROUNDS):
            pod.append(timed(fresh_pod))
            container.append(timed(fresh_container))
        wait_for_removals()
    finally:
        delete_namespace(pods.api_for(settings.cluster), namespace_of(owner.session), wait=120)
    p, c = statistics.median(pod), statistics.median(container)
    print(f"fresh builder pod median        {p * 1000:7.1f} ms  ({ROUNDS} rounds)")
    print(f"fresh builder container median  {c * 1000:7.1f} ms")
    print(f"ratio pod / container: {p / c:.2f}")


def sleeping_suite() -> None:
    project = Path(tempfile.mkdtemp(prefix="bench-pod-"))
    (project / "buildenv.yaml").write_text(f"pod:\n  image: {IMAGE}\n  helper_image: {IMAGE}\n"
                                           "  image_pull_policy: Never\n")
    (project / "test_sleep.py").write_text(textwrap.dedent(f"""
        import pytest

        @pytest.mark.parametrize("n", range({TESTS}))
        def test_sleep(pod_builder, n):
            pod_builder.run("sleep {SLEEP}", check=True)
    """))
    walls = {}
    for label, workers, more in (("-n 1, spares off", 1, ["-o", "buildenv_spares=0"]), ("-n 1", 1, []),
                                 ("-n 4", 4, []), ("-n 8", 8, [])):
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(workers),
                                 "--buildenv=pod", *more, "test_sleep.py"], cwd=project, capture_output=True, text=True)
        walls[label] = time.perf_counter() - started
        last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-300:]
        print(f"{TESTS} tests of sleep {SLEEP} at {label}: {walls[label]:6.1f} s wall  ({last})")
        if result.returncode:
            sys.exit(result.stdout[-2000:])
    print(f"ratio -n 1 / -n 1 with spares off: {walls['-n 1'] / walls['-n 1, spares off']:.2f}  (a pod started while "
          "the test before runs)")
    for label in ("-n 4", "-n 8"):
        print(f"ratio {label} / -n 1: {walls[label] / walls['-n 1']:.2f}  (speed-up {walls['-n 1'] / walls[label]:.1f}x)")


if __name__ == "__main__":
    per_test_cost()
    sleeping_suite()
