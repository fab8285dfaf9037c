"""BuildKit's cache kept in a directory (cache_from/cache_to, type=local) between two CI-like runs.

    python benchmarks/bench_buildkit_cache.py [--builder buildenv-remote] [--rounds 3]

Each round builds a multi-step Dockerfile (FROM scratch with a static busybox, so any builder can)
twice, as two CI jobs would: the builder's own state pruned before each (a fresh runner), the cache
directory empty for the first and kept for the second. Needs a buildx builder that exports caches
(the engine's own, buildx's docker driver, cannot): CI makes `buildenv-remote` on a buildkitd.
Prints both medians and the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import docker

from pytest_buildenv.engine.endpoint import resolve
from pytest_buildenv.engine.images import BuildSpec, ImageBuilder
from pytest_buildenv.naming import Owner, new_session_id
from pytest_buildenv.reaper import reap_kinds

# Four steps of real work (compression and checksums of generated data), as a build's dependency steps are.
DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin"]
ENV PATH=/bin
RUN dd if=/dev/urandom of=/data bs=1M count=48 2>/dev/null && sha256sum /data > /data.sha256
RUN gzip -9 -c /data > /data.gz
RUN bzip2 -9 -c /data > /data.bz2
RUN for i in 1 2 3 4; do md5sum /data.gz /data.bz2; done > /sums && rm /data
"""


def build(spec: BuildSpec, builder: str) -> float:
    """One CI-like job: the builder's state pruned (a fresh runner), then the build, timed."""
    endpoint = resolve()
    subprocess.run(["docker", "buildx", "prune", "--builder", builder, "--all", "--force"], check=True,
                   capture_output=True)
    images = ImageBuilder(docker.DockerClient(base_url=endpoint.url), Owner(new_session_id()), endpoint=endpoint)
    started = time.monotonic()
    try:
        images.build(spec)
        return time.monotonic() - started
    finally:
        reap_kinds(["container"], session=images.owner.session, force=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--builder", default="buildenv-remote")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    (work / "Dockerfile").write_text(DOCKERFILE)
    shutil.copy("/bin/busybox", work / "busybox")
    first, second = [], []
    try:
        for _ in range(args.rounds):
            cache = work / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            spec = BuildSpec(work / "Dockerfile", work, cache_from=cache, cache_to=cache, builder=args.builder)
            first.append(build(spec, args.builder))
            second.append(build(spec, args.builder))
    finally:
        shutil.rmtree(work)
    a, b = statistics.median(first), statistics.median(second)
    print(f"BuildKit cache directory (cache_from/cache_to type=local), a 6-step Dockerfile on buildx builder "
          f"{args.builder!r}, builder state pruned before every build, {args.rounds} rounds:")
    print(f"  first run (empty cache directory) median {a:.2f} s, second run (directory kept) median {b:.2f} s: "
          f"second / first = {b / a:.2f}")


if __name__ == "__main__":
    main()
