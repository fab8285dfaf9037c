"""Builder images from Dockerfiles: target, build args, per-Dockerfile ignore files, build once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_buildenv import ConfigError, ImageBuildError
from pytest_buildenv.engine.endpoint import resolve
from pytest_buildenv.engine.images import BuildSpec, ImageBuilder
from pytest_buildenv.naming import LABEL_SESSION, Owner

# These tests start pytest sessions of their own, and every session reaps dead owners' resources
# when it starts: one at a time, so that the sessions they kill on purpose are reaped by the one
# each test expects (see one_session_at_a_time in conftest.py).
pytestmark = pytest.mark.usefixtures("one_session_at_a_time")

DATA = Path(__file__).parent / "data" / "images"


@pytest.mark.container(dockerfile="data/images/Dockerfile.builder", target="baseline", build_args={"FLAVOUR": "spicy"})
def test_target_and_build_args(builder_container):
    assert builder_container.run("cat /stage", check=True).stdout == "baseline spicy\n"


@pytest.mark.container(dockerfile="data/images/Dockerfile.builder")
def test_per_dockerfile_ignore_file_wins(builder_container):
    # Dockerfile.builder.dockerignore excludes secret.txt; the context's .dockerignore (keep.txt) is not read.
    listing = builder_container.run("ls /ctx", check=True).stdout.split()
    assert "secret.txt" not in listing and "keep.txt" in listing
    assert builder_container.run("cat /stage").stdout == "full\n"  # no target: the last stage


@pytest.mark.container(dockerfile="data/images/Dockerfile.plain")
def test_context_dockerignore_is_the_fallback(builder_container):
    listing = builder_container.run("ls /ctx", check=True).stdout.split()
    assert "keep.txt" not in listing and "secret.txt" in listing


@pytest.fixture
def builder(tmp_path):
    import docker

    from pytest_buildenv.reaper import reap_kinds

    owner = Owner(f"imgtest{tmp_path.name[-6:].replace('_', '')}")
    client = docker.from_env()
    yield ImageBuilder(client, owner, endpoint=resolve())
    reap_kinds(["container"], session=owner.session, force=True)


def test_same_content_is_built_once_and_new_content_rebuilt(builder, tmp_path):
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM buildenv-test/busybox:1\nCOPY a /a\n")
    (context / "a").write_text("one")
    spec = BuildSpec(context / "Dockerfile", context)
    first = builder.build(spec)
    assert builder.build(spec) == first
    image = builder.client.images.get(first)
    assert image.labels[LABEL_SESSION] == builder.owner.session
    (context / "a").write_text("two")
    assert builder.build(spec) != first


def test_missing_dockerfile(builder, tmp_path):
    with pytest.raises(ConfigError, match=r"Dockerfile .*/Dockerfile.nope not found; fix dockerfile="):
        builder.build(BuildSpec(tmp_path / "Dockerfile.nope", tmp_path))


def test_failing_run_step_shows_its_output(builder):
    with pytest.raises(ImageBuildError) as raised:
        builder.build(BuildSpec(DATA / "Dockerfile.failing", DATA))
    first_line, *rest = str(raised.value).splitlines()
    # In each builder's words: BuildKit's "exit code: 3", the classic "returned a non-zero code: 3", buildah's
    # "exit status 3".
    assert re.search(r"(exit code:|non-zero code:|exit status) 3\b", first_line) and "fix the failing step" in first_line
    assert "step-output-before-failure" in "\n".join(rest)
    assert builder.client.containers.list(all=True, filters={"label": f"{LABEL_SESSION}={builder.owner.session}"}) == []


def test_tag_missing_locally_and_unpullable(builder):
    with pytest.raises(ConfigError, match=r"image 'buildenv-test/absent:0' is not present locally and could not be pulled .*; build or load it first"):
        builder.from_tag("buildenv-test/absent:0")


def test_image_built_once_for_a_whole_session(pytester):
    # In a directory of its own: pytester's HOME is its directory, where buildx keeps its state (~/.docker).
    pytester.mkdir("img").joinpath("Dockerfile").write_text("FROM buildenv-test/busybox:1\nRUN echo built > /built\n")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.container(dockerfile="img/Dockerfile")
        @pytest.mark.parametrize("n", range(3))
        def test_uses_image(builder_container, n):
            assert builder_container.run("cat /built").stdout == "built\\n"
            print("IMAGE", builder_container.image)
    """)
    result = pytester.runpytest("--buildenv=container", "-s")
    result.assert_outcomes(passed=3)
    out = result.stdout.str()
    assert out.count("[buildenv] building buildenv/dockerfile:") == 1
    assert len({line for line in result.stdout.lines if line.startswith("IMAGE")}) == 1
