"""Image builds with BuildKit, through the Docker CLI's buildx plugin.

buildx drives the engine's own BuildKit (its `docker` driver, on every Docker since 18.09) or a
builder the user made (`docker buildx create`), and it is the one client that serves a build's
session: secrets, SSH agents, local cache import and export. The SDK has none of it, so the CLI
runs here, on the context directory (images.py keeps the content key). Podman is not driven this
way: its compat API builds with its own builder (buildah).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable, Optional

from .. import masking
from ..errors import ConfigError
from . import dockerfile

if TYPE_CHECKING:
    from .images import BuildSpec

# What buildx and BuildKit put before the reason, outermost first.
_PREFIXES = ("ERROR: ", "failed to build: ", "failed to solve: ", "rpc error: code = Unknown desc = ",
             "failed to solve with frontend dockerfile.v0: ", "failed to create LLB definition: ")
NO_CACHE_EXPORT = "Cache export is not supported"
NO_BRIDGE = "network bridge not found"


@functools.cache
def cli() -> Optional[str]:
    """The docker CLI when it has the buildx plugin, else None (asked once per process)."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        done = subprocess.run([docker, "buildx", "version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return docker if done.returncode == 0 else None


def secret_flag(name: str, source: str) -> str:
    """`--secret`'s value for one `secrets` entry. The value itself never reaches our argv: buildx reads it
    and serves it to the build. We read it too, only so that a step printing it is masked in our log."""
    kind, where = masking.source(name, source)
    masking.read_from(kind, where)
    return f"id={name},{kind}={where}"


def argv(docker: str, spec: BuildSpec, tag: str, labels: Mapping[str, str], network: Optional[str] = None) -> list[str]:
    """`docker buildx build` for `spec`; `network` for its RUN steps (None: the builder's default)."""
    args = [docker, "buildx", "build", "--progress=plain", "--load", "--provenance=false",
            "-f", str(spec.dockerfile), "-t", tag]
    if spec.builder:
        args += ["--builder", spec.builder]
    if network:
        args += ["--network", network]
    for name, value in labels.items():
        args += ["--label", f"{name}={value}"]
    if spec.target:
        args += ["--target", spec.target]
    for name, value in spec.build_args.items():
        args += ["--build-arg", f"{name}={value}"]
    for name, source in spec.secrets.items():
        args += ["--secret", secret_flag(name, source)]
    if spec.ssh:
        if spec.ssh == "default" and not os.environ.get("SSH_AUTH_SOCK"):
            raise ConfigError("ssh=default forwards SSH_AUTH_SOCK's agent to the build, and SSH_AUTH_SOCK is not set; "
                              "start an agent (eval $(ssh-agent); ssh-add), or write ssh='ID=/path/to/agent.sock'")
        args += ["--ssh", spec.ssh]
    if spec.platform:
        args += ["--platform", spec.platform]
    if spec.cache_from is not None and (spec.cache_from / "index.json").is_file():  # none yet: a first run
        args += ["--cache-from", f"type=local,src={spec.cache_from}"]
    if spec.cache_to is not None:
        args += ["--cache-to", f"type=local,dest={spec.cache_to},mode=max"]
    return [*args, str(spec.context)]


def build(args: list[str], engine_env: Mapping[str, str], progress: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run buildx; (exit code, its output lines). Every line goes to `progress`:
    `#5 [2/3] RUN make` says which step the build is on."""
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONTEXT"}  # DOCKER_HOST names the engine
    env.update(engine_env)
    log: list[str] = []
    with subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = masking.mask(raw.decode("utf-8", errors="replace").rstrip())  # a step may print a secret
            log.append(line)
            if line:
                progress(line)
    return proc.returncode, log


def engine_words(log: list[str]) -> str:
    """buildx's reason for a failed build, without the layers of "failed to ..." before it."""
    errors = [line for line in log if line.startswith("ERROR:")]
    words = errors[-1] if errors else (log[-1] if log else "no output")
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if words.startswith(prefix):
                words, stripped = words[len(prefix):], True
    return words.strip()


def failure(spec: BuildSpec, log: list[str], engine: str) -> Exception:
    """The one error a failed buildx build becomes."""
    words = engine_words(log)
    refused = dockerfile.refused(spec.dockerfile, words, engine)
    if refused is not None:
        return refused
    if NO_BRIDGE in words and dockerfile.has_syntax_line(spec.dockerfile.read_text(errors="replace")):
        # Build steps are given network none there (images.py), but a frontend's own container cannot be.
        return ConfigError(f"{spec.dockerfile}:1: {engine} has no default bridge network (dockerd --bridge none), "
                           "and BuildKit runs a `# syntax=` frontend on it; drop the syntax line, or build on an "
                           "engine with its bridge, or on a buildx_builder")
    if NO_CACHE_EXPORT in words:
        builder = f"buildx builder {spec.builder!r}" if spec.builder else "the engine's own BuildKit (buildx's docker driver)"
        return ConfigError(f"cache_to={spec.cache_to}: {builder} cannot export a build cache; make a builder "
                           "that can (docker buildx create --name NAME --driver docker-container, or --driver remote "
                           "URL of a buildkitd) and name it in buildx_builder (ini buildenv_buildx_builder)")
    return dockerfile.step_failed(spec.dockerfile, words, "\n".join(log))
