"""Builders for another platform (linux/arm64 here, under qemu-user-static's binfmt handlers): they run it,
build for it, and their artifacts say so; a matrix over platforms; a platform this machine cannot run
is one line naming the package that adds it; GNU hello built and checked on linux/arm64."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import docker
import pytest

from pytest_buildenv import ConfigError
from pytest_buildenv.engine import platforms
from pytest_buildenv.engine.images import ImageBuilder
from pytest_buildenv.naming import Owner, new_session_id

BUSYBOX_ARM64 = os.environ.get("BUILDENV_TEST_BUSYBOX_ARM64", "buildenv-test/busybox-arm64:1")
GCC_ARM64 = os.environ.get("BUILDENV_TEST_GCC_ARM64", "buildenv-test/gcc-arm64:1")
MACHINE = {"linux/amd64": "x86-64", "linux/arm64": "aarch64"}
UNAME = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}


@pytest.mark.container(image=BUSYBOX_ARM64, platform="linux/arm64")
def test_an_arm64_builder_runs_arm64_and_its_artifacts_say_so(builder_container):
    assert builder_container.run("uname -m", check=True).stdout == "aarch64\n"
    builder_container.run("cp /bin/busybox tool && echo text > notes", check=True)
    assert builder_container.artifact("tool").machine == "aarch64"
    assert builder_container.artifact("notes").machine is None  # not ELF
    assert builder_container.timeout_scale == platforms.EMULATION_FACTOR


@pytest.mark.container(image="buildenv-test/busybox:1")
def test_a_native_builder_is_not_scaled(builder_container):
    builder_container.run("cp /bin/busybox tool", check=True)
    assert builder_container.artifact("tool").machine == MACHINE[platforms.native()]
    assert builder_container.timeout_scale == 1.0


def static_busybox(image: str) -> bytes:
    """The static busybox of one of the suite's images (the arm64 one comes from Debian's arm64 package)."""
    client = docker.from_env()
    container = client.containers.create(image, ["true"])
    try:
        stream, _ = container.get_archive("/bin/busybox")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            return archive.extractfile("busybox").read()  # type: ignore[union-attr]
    finally:
        container.remove()


def test_a_matrix_over_platforms_builds_and_runs_each(pytester, suite_endpoint):
    """One Dockerfile for both platforms, as multi-platform Dockerfiles are written: BuildKit's (and buildah's)
    TARGETARCH picks the context's binary for the platform being built."""
    for arch, image in (("amd64", "buildenv-test/busybox:1"), ("arm64", BUSYBOX_ARM64)):
        binary = pytester.path / f"busybox-{arch}"
        binary.write_bytes(static_busybox(image))
        binary.chmod(0o755)
    pytester.makefile("", Dockerfile="FROM scratch\nARG TARGETARCH\nCOPY busybox-$TARGETARCH /bin/busybox\n"
                                     'RUN ["/bin/busybox", "--install", "-s", "/bin"]\nENV PATH=/bin\n')
    pytester.makepyfile("""
        import pytest

        @pytest.mark.container(dockerfile="Dockerfile", platform=["linux/amd64", "linux/arm64"])
        def test_builder(builder_container, request):
            uname = builder_container.run("uname -m", check=True).stdout.strip()
            builder_container.run("cp /bin/busybox tool", check=True)
            print("RAN", request.node.name, uname, builder_container.artifact("tool").machine)
    """)
    result = pytester.runpytest("--buildenv=container", f"--buildenv-engine={suite_endpoint.url}", "-s")
    result.assert_outcomes(passed=2)
    ran = sorted(line.split()[1:] for line in result.stdout.lines if line.startswith("RAN "))
    assert [(uname, machine) for _, uname, machine in ran] == [("x86_64", "x86-64"), ("aarch64", "aarch64")]
    assert "linux/arm64" in ran[1][0] and "linux/amd64" in ran[0][0]


def test_an_image_for_another_platform_is_refused_in_one_line(suite_endpoint):
    images = ImageBuilder(docker.DockerClient(base_url=suite_endpoint.url), Owner(new_session_id()))
    with pytest.raises(ConfigError, match=r"image 'buildenv-test/busybox:1' is for linux/amd64, not platform=linux/arm64; "
                                          r"name an image built for linux/arm64"):
        images.from_tag("buildenv-test/busybox:1", "linux/arm64")
    assert images.from_tag(BUSYBOX_ARM64, "linux/arm64") == BUSYBOX_ARM64


def test_a_platform_without_a_handler_names_the_package(monkeypatch, tmp_path):
    """A fake binfmt_misc directory with no handlers stands in for a machine without qemu-user-static."""
    monkeypatch.setattr(platforms, "BINFMT", tmp_path)
    with pytest.raises(ConfigError, match=r"^platform=linux/arm64: this machine runs linux/amd64 and has no binfmt "
                                          r"handler for aarch64 .*; install Debian's qemu-user-static"):
        platforms.require("linux/arm64", engine_is_local=True)
    platforms.require("linux/arm64", engine_is_local=False)  # an engine elsewhere has its own handlers
    platforms.require(platforms.native(), engine_is_local=True)
    assert "for linux/arm64 and others, install Debian's qemu-user-static" in platforms.listing()


def test_doctor_lists_the_platforms_builders_can_run():
    done = subprocess.run([sys.executable, "-m", "pytest_buildenv", "doctor", "--buildenv=container"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    listed = next(line for line in done.stdout.splitlines() if "platforms:" in line)
    assert f"{platforms.native()} (native)" in listed and "linux/arm64 (emulated)" in listed


HELLO = os.environ.get("BUILDENV_TEST_GNU_HELLO")  # Debian's GNU hello source tarball (.ci/run downloads it)


def gnu_hello() -> Path:
    if not HELLO:
        if os.environ.get("CI"):
            pytest.fail("BUILDENV_TEST_GNU_HELLO is not set: CI downloads GNU hello's source (.ci/run)")
        pytest.skip("GNU hello's source is not here (BUILDENV_TEST_GNU_HELLO)")
    return Path(HELLO)


@pytest.mark.container(image=GCC_ARM64, platform="linux/arm64")
def test_gnu_hello_builds_and_passes_its_checks_on_arm64(builder_container):
    """GNU hello from Debian's sources: configure, make, make check, under emulation; the program is aarch64.
    The timeouts are what the steps need natively, with room: the builder scales them (EMULATION_FACTOR)."""
    source = gnu_hello()
    env = builder_container
    env.put(source, source.name)
    env.run(f"tar xf {source.name} && mv hello-* hello", check=True)
    env.run("./configure --quiet --disable-nls", cwd="hello", check=True, timeout=120)
    env.run("make -s", cwd="hello", check=True, timeout=120)
    checks = env.run("make -s check", cwd="hello", check=True, timeout=120)
    assert re.search(r"^# PASS: +[1-9]", checks.stdout, re.M) and re.search(r"^# FAIL: +0$", checks.stdout, re.M)
    assert re.search(r"^# ERROR: +0$", checks.stdout, re.M)
    program = env.artifact("hello/hello")
    assert program.machine == "aarch64" and program.executable
    assert (program.uid, program.gid) == (os.getuid(), os.getgid())
    assert env.run("./hello/hello", check=True).stdout == "Hello, world!\n"
    assert env.run(["./hello/hello", "--greeting=arm64"], check=True).stdout == "arm64\n"
