"""The same build on several images: a list in a marker or buildenv.yaml multiplies the test."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("one_session_at_a_time")

BUSYBOX, GCC = "buildenv-test/busybox:1", "buildenv-test/gcc:1"

IMAGES = f"""
import pytest

IMAGES = ["{BUSYBOX}", "{GCC}"]

@pytest.mark.container(image=IMAGES)
def test_buildenv(buildenv, request):
    assert request.node.callspec.id == f"container-{{buildenv.image}}"
    assert buildenv.run("test -x /usr/bin/gcc").ok == (buildenv.image == "{GCC}")

@pytest.mark.container(image=IMAGES)
def test_builder_container(builder_container, request):
    assert request.node.callspec.id == f"container-{{builder_container.image}}"

@pytest.mark.container(image="{BUSYBOX}")
def test_single(builder_container):
    pass
"""


def test_two_images_in_one_marker_run_twice_with_distinct_ids(pytester):
    pytester.makepyfile(test_images=IMAGES)
    result = pytester.runpytest_subprocess("-v", "--buildenv=container")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines_random([
        f"*test_buildenv?container-{BUSYBOX}? PASSED*", f"*test_buildenv?container-{GCC}? PASSED*",
        f"*test_builder_container?container-{BUSYBOX}? PASSED*", f"*test_builder_container?container-{GCC}? PASSED*",
        "*test_single PASSED*"])


def test_build_args_listed_in_buildenv_yaml_build_each_variant_once(pytester):
    # Its own directory: the build context must not hold pytester's basetemp (the workspaces).
    (pytester.path / "docker").mkdir()
    (pytester.path / "docker" / "Dockerfile.builder").write_text(f"FROM {BUSYBOX}\nARG FLAVOUR\nRUN echo $FLAVOUR > /flavour\n")
    pytester.makefile(".yaml", buildenv="container:\n  dockerfile: docker/Dockerfile.builder\n"
                                        "  build_args: [{FLAVOUR: plain}, {FLAVOUR: spicy}]\n")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.parametrize("n", [1, 2])
        def test_flavour(builder_container, request, n):
            flavour = builder_container.run("cat /flavour", check=True).stdout.strip()
            assert f"container-FLAVOUR={flavour}" in request.node.callspec.id
    """)
    result = pytester.runpytest_subprocess("-v", "-s", "--buildenv=container")
    result.assert_outcomes(passed=4)
    builds = [line for line in result.stdout.lines if line.startswith("[buildenv] building buildenv/dockerfile.builder")]
    assert len(builds) == 2, result.stdout.str()  # once per variant, not per test
    result.stdout.fnmatch_lines_random(["*test_flavour?container-FLAVOUR=plain-1? PASSED*",
                                        "*test_flavour?container-FLAVOUR=spicy-2? PASSED*"])
