"""The Dockerfiles users write today, on each engine's builder: BuildKit through buildx on Docker,
Podman's own (buildah); secrets that stay out of layers, history and logs; one-line refusals;
BuildKit's cache kept in a directory between runs."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import docker
import pytest

from pytest_buildenv import ConfigError
from pytest_buildenv.engine import buildx
from pytest_buildenv.engine.builder import ContainerSettings
from pytest_buildenv.engine.images import BuildSpec, ImageBuilder
from pytest_buildenv.naming import Owner, new_session_id
from pytest_buildenv.reaper import reap_kinds
from pytest_buildenv.services import Services
from pytest_buildenv.settings import SettingError

pytestmark = pytest.mark.usefixtures("one_session_at_a_time")

DATA = Path(__file__).parent / "data" / "buildkit"


def podman_takes_heredocs(engine) -> bool:
    """Podman's builder (buildah) reads heredocs from Podman 4.8 (buildah 1.33)."""
    major, minor = (int(part) for part in engine.version.split(".")[:2])
    return (major, minor) >= (4, 8)


def reap_on(endpoint, session: str) -> None:
    """What a session of these tests made, removed from the suite's engine (not DOCKER_HOST's)."""
    reap_kinds(["container"], services=Services(Owner(new_session_id()), endpoint=endpoint), session=session, force=True)


@pytest.fixture
def builder(suite_endpoint):
    client = docker.DockerClient(base_url=suite_endpoint.url)
    images = ImageBuilder(client, Owner(new_session_id()), endpoint=suite_endpoint)
    yield images
    reap_on(suite_endpoint, images.owner.session)


def has_bridge(endpoint) -> bool:
    return bool(docker.DockerClient(base_url=endpoint.url).networks.list(names=["bridge"]))


@pytest.fixture
def token(monkeypatch):
    value = f"buildenv-token-{secrets.token_hex(12)}"
    monkeypatch.setenv("BUILDENV_TEST_TOKEN", value)
    return value


def test_todays_dockerfile_builds_and_its_builder_runs(pytester, suite_endpoint, engine, token):
    """Cache and secret mounts, a heredoc, parallel stages: built and run, the secret nowhere but in the build.
    Where the engine's builder cannot (Podman before 4.8: no heredocs), one line says so and names it."""
    shutil.copy(DATA / "Dockerfile.today", pytester.path / "Dockerfile")
    pytester.makepyfile(f"""
        import pytest
        from pytest_buildenv.hygiene import leaked_files

        @pytest.mark.container(dockerfile="Dockerfile", secrets={{"token": "BUILDENV_TEST_TOKEN"}},
                               build_args={{"NONCE": "{secrets.token_hex(8)}"}})
        def test_builder(builder_container):
            shown = builder_container.run("cat /made-by /token.sha256 /runs", check=True).stdout.split("\\n")
            assert shown[0] == "a heredoc"
            assert shown[1] == "{hashlib.sha256(token.encode()).hexdigest()}"  # the build had the secret
            assert int(shown[2]) >= 1  # the cache mount's file, kept by the engine across builds
            client = builder_container.client
            assert not leaked_files(builder_container.image, client=client)
            saved = b"".join(client.images.get(builder_container.image).save(named=False))
            assert {token!r}.encode() not in saved  # in no layer and no config (history)
    """)
    result = pytester.runpytest("--buildenv=container", f"--buildenv-engine={suite_endpoint.url}", "--junitxml=report.xml")
    out = result.stdout.str()
    assert token not in out and token not in (pytester.path / "report.xml").read_text()
    assert "Traceback" not in out
    if engine.product == "Podman" and not podman_takes_heredocs(engine):
        result.assert_outcomes(errors=1)
        assert f"Dockerfile:6: Podman {engine.version}'s builder does not take heredocs" in out
    elif not has_bridge(suite_endpoint):  # CI's remote-like engine: dockerd --bridge none
        result.assert_outcomes(errors=1)
        assert "Dockerfile:1: BuildKit on Docker" in out and "has no default bridge network (dockerd --bridge none), " \
               "and BuildKit runs a `# syntax=` frontend on it; drop the syntax line" in out
    else:
        result.assert_outcomes(passed=1)
        # The terminal says which step the build is on; the whole log is in the file the last line names.
        assert any(line.startswith("[buildenv] #") and "RUN --mount=type=secret" in line for line in result.stdout.lines)
        built = next(line for line in result.stdout.lines if line.startswith("[buildenv] built buildenv/dockerfile:"))
        log = Path(built.split("(its whole log: ")[1].rstrip(")")).read_text()
        assert "a heredoc" in log or "COPY <<EOT" in log
        assert token not in log


def test_secret_reaches_the_build_and_no_layer(builder, token):
    image = builder.build(BuildSpec(DATA / "Dockerfile.secret", DATA, secrets={"token": "BUILDENV_TEST_TOKEN"},
                                    build_args={"NONCE": secrets.token_hex(8)}))
    client = builder.client
    shown = client.containers.run(image, ["cat", "/token.sha256"], remove=True).decode().strip()
    assert shown == hashlib.sha256(token.encode()).hexdigest()
    assert token.encode() not in b"".join(client.images.get(image).save(named=False))


def test_secret_from_a_file(builder, tmp_path):
    secret = tmp_path / "token.txt"
    secret.write_text("from-a-file")
    image = builder.build(BuildSpec(DATA / "Dockerfile.secret", DATA, secrets={"token": str(secret)},
                                    build_args={"NONCE": secrets.token_hex(8)}))
    shown = builder.client.containers.run(image, ["cat", "/token.sha256"], remove=True).decode().strip()
    assert shown == hashlib.sha256(b"from-a-file").hexdigest()


def test_a_secret_that_is_not_there_is_one_line(builder, monkeypatch, tmp_path):
    monkeypatch.delenv("BUILDENV_TEST_ABSENT", raising=False)
    with pytest.raises(ConfigError, match=r"^secret 'token' comes from the environment variable BUILDENV_TEST_ABSENT, "
                                          r"which is not set; export"):
        builder.build(BuildSpec(DATA / "Dockerfile.secret", DATA, secrets={"token": "BUILDENV_TEST_ABSENT"}))
    with pytest.raises(ConfigError, match=r"^secret 'token' comes from the file .*/absent.txt, which does not exist"):
        builder.build(BuildSpec(DATA / "Dockerfile.secret", DATA, secrets={"token": str(tmp_path / "absent.txt")}))


def test_a_dockerfile_the_engine_refuses_is_one_line_naming_file_and_line(pytester, suite_endpoint, engine):
    shutil.copy(DATA / "Dockerfile.unknown", pytester.path / "Dockerfile")
    pytester.makepyfile("""
        import pytest

        @pytest.mark.container(dockerfile="Dockerfile")
        def test_builder(builder_container):
            pass
    """)
    result = pytester.runpytest("--buildenv=container", f"--buildenv-engine={suite_endpoint.url}")
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert "Traceback" not in out and "APIError" not in out
    line = next(line for line in result.stdout.lines if "refused the Dockerfile" in line)
    assert f"Dockerfile:3: {'BuildKit on ' if engine.product == 'Docker' else ''}{engine.product} {engine.version} " \
           "refused the Dockerfile: " in line
    assert "MADE" in line and "fix that line (the Dockerfile reference" in line


def test_without_buildx_a_dockerfile_that_needs_buildkit_says_so(builder, engine, monkeypatch, tmp_path):
    if engine.product != "Docker":
        pytest.skip("Podman builds with its own builder, never the classic one")  # not a missing tool: no such case
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker CLI, so no buildx
    buildx.cli.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"Dockerfile.mounts:2: RUN --mount=type=cache needs BuildKit, and Docker "
                                              r".* builds without it \(the classic builder\); install the Docker CLI's "
                                              r"buildx plugin"):
            builder.build(BuildSpec(DATA / "Dockerfile.mounts", DATA))
    finally:
        buildx.cli.cache_clear()


def test_cache_to_on_a_builder_that_cannot_export_is_one_line(builder, engine, tmp_path):
    spec = BuildSpec(DATA / "Dockerfile.mounts", DATA, cache_to=tmp_path / "cache")
    expected = ("cannot export a build cache; make a builder that can" if engine.product == "Docker"
                else "builds without it here; build on a Docker engine with buildx")
    with pytest.raises(ConfigError, match=expected):
        builder.build(spec)


def test_build_settings_are_checked_when_they_load():
    with pytest.raises(SettingError, match=r"platform='arm64' is not a platform; write it as Docker does"):
        ContainerSettings(platform="arm64")
    with pytest.raises(SettingError, match=r"secrets name 'a token' is not a variable's name"):
        ContainerSettings(secrets={"a token": "TOKEN"})
    with pytest.raises(SettingError, match=r"ssh='default extra' is not an agent BuildKit takes"):
        ContainerSettings(ssh="default extra")


def remote_builder() -> str:
    """The buildx builder that can export caches (CI makes one on a buildkitd of its own: .ci/run)."""
    name = os.environ.get("BUILDENV_TEST_BUILDX_BUILDER")
    if not name:
        if os.environ.get("CI"):
            pytest.fail("BUILDENV_TEST_BUILDX_BUILDER is not set: CI names a buildx builder that exports caches")
        pytest.skip("no buildx builder that exports caches (BUILDENV_TEST_BUILDX_BUILDER)")
    return name


def test_cache_directory_rebuilds_what_a_fresh_builder_never_saw(suite_endpoint, engine, tmp_path):
    """A second CI-like run: the builder's state pruned, the cache directory kept. The RUN step's output
    (a timestamp) comes back from the directory, not from running it again."""
    if engine.product != "Docker":
        pytest.skip("cache_to is buildx's (test_cache_to_on_a_builder_that_cannot_export_is_one_line covers Podman)")
    name = remote_builder()
    context = tmp_path / "ctx"
    context.mkdir()
    shutil.copy(DATA / "Dockerfile.cached", context / "Dockerfile")
    shutil.copy("/bin/busybox", context / "busybox")
    cache = tmp_path / "cache"
    spec = BuildSpec(context / "Dockerfile", context, cache_from=cache, cache_to=cache, builder=name)
    stamps = []
    for _ in range(2):
        client = docker.DockerClient(base_url=suite_endpoint.url)
        images = ImageBuilder(client, Owner(new_session_id()), endpoint=suite_endpoint)
        try:
            image = images.build(spec)
            stamps.append(client.containers.run(image, ["/bin/busybox", "cat", "/out/stamp"], remove=True))
        finally:
            reap_on(suite_endpoint, images.owner.session)
        subprocess.run(["docker", "buildx", "prune", "--builder", name, "--all", "--force"], check=True,
                       capture_output=True, env={**os.environ, "DOCKER_HOST": suite_endpoint.url})
    assert (cache / "index.json").is_file()
    assert stamps[0] == stamps[1]
