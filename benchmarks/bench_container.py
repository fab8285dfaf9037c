"""Cost of one test's fresh builder container against `docker run --rm IMAGE true`.

Prints ratios measured in the same run (this machine is noisy; absolute times mean little):
  fresh builder (setup + one command + teardown) / docker run --rm IMAGE true
  python -c "import pytest_buildenv.plugin" / python -c "pass"  (and the absolute ms)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGE = sys.argv[1] if len(sys.argv) > 1 else "buildenv-test/busybox:1"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 15


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def median_of(action, rounds: int = ROUNDS) -> float:
    action()  # warm-up
    return statistics.median(timed(action) for _ in range(rounds))


def main() -> None:
    from pytest_buildenv.engine import connect
    from pytest_buildenv.engine.endpoint import resolve
    from pytest_buildenv.kinds.container import BuilderSpec, ContainerEnv
    from pytest_buildenv.naming import Owner, new_session_id

    client = connect(resolve())
    owner = Owner(new_session_id())
    workspace = Path(tempfile.mkdtemp())

    def fresh_builder() -> None:
        env = ContainerEnv(client, BuilderSpec(IMAGE), workspace, owner, test="bench").start()
        env.run(["true"], check=True)
        env.close()

    def docker_run() -> None:
        # The SDK, like the plugin, so that client start-up is not what is measured.
        client.containers.run(IMAGE, ["true"], remove=True)

    def docker_cli() -> None:
        subprocess.run(["docker", "run", "--rm", IMAGE, "true"], check=True)

    # Interleave the measurements so drift on a noisy machine hits both alike.
    builder, baseline, cli = [], [], []
    for action in (fresh_builder, docker_run, docker_cli):
        action()
    for _ in range(ROUNDS):
        builder.append(timed(fresh_builder))
        baseline.append(timed(docker_run))
        cli.append(timed(docker_cli))
    from pytest_buildenv.engine.containers import wait_for_removals

    wait_for_removals()
    b, d, c = statistics.median(builder), statistics.median(baseline), statistics.median(cli)
    print(f"fresh builder median        {b * 1000:7.1f} ms")
    print(f"docker run --rm true (SDK)  {d * 1000:7.1f} ms")
    print(f"docker run --rm true (CLI)  {c * 1000:7.1f} ms")
    print(f"ratio builder / docker run (SDK): {b / d:.2f}")
    print(f"ratio builder / docker run (CLI): {b / c:.2f}")

    def py(code: str) -> float:
        return median_of(lambda: subprocess.run([sys.executable, "-c", code], check=True), 11)

    bare, pytest_only, plugin = py("pass"), py("import pytest"), py("import pytest_buildenv.plugin")
    print(f"python -c 'import pytest_buildenv.plugin': {plugin * 1000:.0f} ms; import cost over bare python "
          f"{(plugin - bare) * 1000:.0f} ms, of which pytest itself {(pytest_only - bare) * 1000:.0f} ms "
          f"and the plugin {(plugin - pytest_only) * 1000:.0f} ms")
    heavy = subprocess.run([sys.executable, "-c", "import sys, pytest_buildenv.plugin; "
                            "print(sorted(m for m in ('docker', 'kubernetes', 'vagrant') if m in sys.modules))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    print(f"heavy modules imported by the plugin: {heavy}")


if __name__ == "__main__":
    main()
