"""A later session's first kind test ready on a kept cluster, against a fresh cluster's create.

Sessions of one test each, on the same settings, each timed by what the plugin counts as the
first test's setup (the session summary's "setup N s": making, or adopting, the cluster):

  baseline  ini buildenv_reuse off: kind create cluster (deleted at the session's end)
  keep      buildenv_reuse=kind, nothing kept yet: the same create, kept; its test loads an image and
            leaves a namespace, a ConfigMap and a running deployment behind
  adopt     buildenv_reuse=kind again, at once: the kept cluster claimed, checked and reset, then its
            test runs (the `keep` session reset it as it ended; this one waits for the namespace that
            reset deleted to be gone); it leaves the same things behind
  later     the same, 20 s after the last session ended (what a CI run of several sessions sees)

Prints adopt / baseline (the issue's goal: under 0.05). The kept cluster is removed at the end
(reap --include-reusable). Run it where kind runs, with the engine and provider kind uses:

    DOCKER_HOST=... KIND_EXPERIMENTAL_PROVIDER=podman \\
        python benchmarks/bench_kind_reuse.py --kind-bin=KIND --kind-image=NODE_IMAGE [ROUNDS]
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KIND_ARGS = [a for a in sys.argv[1:] if a.startswith("--kind-")]
ROUNDS = int(next((a for a in sys.argv[1:] if a.isdigit()), "2"))
IMAGE = "buildenv-test/busybox:1"

LEAVES = f"""
def test_leaves_things(kind_cluster):
    kind_cluster.load_image({IMAGE!r})
    kind_cluster.kubectl("create", "namespace", "left")
    kind_cluster.kubectl("create", "configmap", "left", "--from-literal=a=b")
    # A tag other than latest: the kubelet takes the loaded image (IfNotPresent), no registry needed.
    kind_cluster.kubectl("create", "deployment", "left", "--image={IMAGE}", "--", "sleep", "3600")
    kind_cluster.wait_ready("deployment", "left", timeout=120)
"""
USES = """
def test_uses(kind_cluster):
    assert "Ready" in kind_cluster.kubectl("get", "nodes").stdout
"""


def session(test: str, *ini: str) -> float:
    """The first test's setup, in seconds, as the session's summary says it."""
    root = Path(tempfile.mkdtemp(prefix="bench-kind-"))
    (root / "test_k.py").write_text(test)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--buildenv=kind",
                          *KIND_ARGS, *(f"-obuildenv_reuse={value}" for value in ini)], cwd=root,
                         capture_output=True, text=True).stdout
    match = re.search(r"environments made: .*; setup ([\d.]+) s", out)
    if " passed" not in out or match is None:
        sys.exit(f"the session failed:\n{out}")
    return float(match.group(1))


def main() -> None:
    fresh, kept, adopted, later = [], [], [], []
    try:
        for _ in range(ROUNDS):
            fresh.append(session(USES))
            kept.append(session(LEAVES, "kind"))
            adopted.append(session(LEAVES, "kind"))
            time.sleep(20)
            later.append(session(USES, "kind"))
            subprocess.run([sys.executable, "-m", "pytest_buildenv", "reap", "--buildenv=kind", "--include-reusable"],
                           check=True, capture_output=True)
    finally:
        subprocess.run([sys.executable, "-m", "pytest_buildenv", "reap", "--buildenv=kind", "--include-reusable"],
                       capture_output=True)
    baseline, adopt = statistics.median(fresh), statistics.median(adopted)
    print(f"first kind test's setup, a fresh cluster (buildenv_reuse off), median of {ROUNDS}: {baseline:.1f} s")
    print(f"  the same, creating a cluster to keep: {statistics.median(kept):.1f} s")
    print(f"  the next session adopting it at once (claim, check, reset): {adopt:.2f} s")
    print(f"  a session adopting it 20 s after the last one ended: {statistics.median(later):.2f} s")
    print(f"adopted at once / fresh create = {adopt / baseline:.3f}; 20 s later / fresh create = "
          f"{statistics.median(later) / baseline:.3f}")


if __name__ == "__main__":
    main()
