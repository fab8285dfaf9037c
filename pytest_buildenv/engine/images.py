"""Images for builder containers: by tag, or built from a Dockerfile once per content.

The context is packed here rather than by the daemon so that a per-Dockerfile
ignore file (`Dockerfile.x.dockerignore` beside `Dockerfile.x`, as BuildKit
reads it) works on every builder, and so that the content hash that keys the
cache is ours: the same Dockerfile, context, target, build args and platform
are built once per session and reused by every test and xdist worker.

Which builder: BuildKit through buildx (buildx.py) on Docker where the CLI has
the plugin; Podman's own (buildah) through its compat API; Docker's classic
builder only where nothing else exists, and a Dockerfile that needs BuildKit
then says so in one line (dockerfile.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Optional, cast
from collections.abc import Iterable, Iterator

from . import buildx, daemon_errors, dockerfile
from .. import masking
from ..events import emit
from ..errors import ConfigError, ImageBuildError, tail
from ..naming import LABEL_CACHE, Owner, slug
from ..progress import Progress
from ..sharing import SharedState, state_root
from .containers import remove_container, start_idle_container
from .endpoint import Endpoint, describe

if TYPE_CHECKING:
    import docker


# The Dockerfile travels in the context under this name, wherever it lives on disk.
INJECTED_DOCKERFILE = ".buildenv.Dockerfile"



@dataclass(frozen=True)
class BuildSpec:
    dockerfile: Path
    context: Path
    target: Optional[str] = None
    build_args: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # id -> environment variable or file (buildx.py)
    ssh: Optional[str] = None
    platform: Optional[str] = None
    cache_from: Optional[Path] = None
    cache_to: Optional[Path] = None
    builder: Optional[str] = None  # a buildx builder's name; None: the engine's own BuildKit

    def validate(self) -> None:
        if not self.dockerfile.is_file():
            raise ConfigError(f"Dockerfile {self.dockerfile} not found; "
                              "fix dockerfile= (relative paths start at the test file's directory)")
        if not self.context.is_dir():
            raise ConfigError(f"build context {self.context} is not a directory; fix context=")

    def ignore_file(self) -> Optional[Path]:
        """`<Dockerfile>.dockerignore` beside the Dockerfile wins over the context's `.dockerignore`."""
        for candidate in (self.dockerfile.with_name(self.dockerfile.name + ".dockerignore"),
                          self.context / ".dockerignore"):
            if candidate.is_file():
                return candidate
        return None

    def ignore_patterns(self) -> list[str]:
        source = self.ignore_file()
        if source is None:
            return []
        lines = (line.strip() for line in source.read_text().splitlines())
        return [line for line in lines if line and not line.startswith("#")]

    def context_files(self) -> list[str]:
        from docker.utils.build import exclude_paths

        return sorted(exclude_paths(str(self.context), self.ignore_patterns(), dockerfile=INJECTED_DOCKERFILE))

    def content_hash(self, files: Iterable[str]) -> str:
        digest = hashlib.sha256()
        digest.update(self.dockerfile.read_bytes())
        # Secret values are not the image's identity (and are never hashed); which ids it gets is.
        digest.update(json.dumps([self.target, sorted(self.build_args.items()), self.platform,
                                  sorted(self.secrets), self.ssh]).encode())
        for rel in files:
            path = self.context / rel
            digest.update(rel.encode() + b"\0")
            if path.is_symlink():
                digest.update(b"L" + os.readlink(path).encode())
            elif path.is_file():
                digest.update(b"F%o" % (path.stat().st_mode & 0o777) + file_sha256(path))
            else:
                digest.update(b"D")
        return digest.hexdigest()


def file_sha256(path: Path) -> bytes:
    """A file's SHA-256, read in chunks (contexts and payloads may be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


class ImageBuilder:
    """Resolves an image setting to a local image, building Dockerfiles once per session."""

    def __init__(self, client: docker.DockerClient, owner: Owner, shared: Optional[SharedState] = None,
                 progress: Optional[Progress] = None, endpoint: Optional[Endpoint] = None) -> None:
        self.client = client
        self.endpoint = endpoint  # where buildx finds the engine; None: the SDK's builders only
        self._bridge: Optional[bool] = None  # whether the engine has a default bridge network (asked once)
        self.owner = owner
        self.shared = shared
        self.progress = progress or (lambda line: None)
        self._built: dict[str, str] = {}  # Dockerfile content key -> tag built this session
        self._present: set[tuple[str, Optional[str]]] = set()  # (tag, platform) known to be local

    def forget(self) -> None:
        """The engine restarted: images it had are looked up again, not assumed (a build is redone
        only if its image is gone)."""
        self._present.clear()
        self._built.clear()

    def from_tag(self, tag: str, platform: Optional[str] = None) -> str:
        """The tag itself if the image is local (or can be pulled), and for `platform` if one is named;
        else ConfigError."""
        import docker

        if (tag, platform) in self._present:
            return tag  # already looked up this session
        with daemon_errors(f"looking up image {tag}", self.client):
            try:
                self._check_platform(tag, self.client.images.get(tag).attrs, platform)
                self._present.add((tag, platform))
                return tag
            except docker.errors.ImageNotFound:
                pass
            try:
                self.progress(f"pulling {tag}" + (f" for {platform}" if platform else ""))
                pulled = self.client.images.pull(tag, platform=platform)
                self._check_platform(tag, pulled.attrs, platform)
                self._present.add((tag, platform))
                return tag
            except docker.errors.APIError as exc:
                reason = (exc.explanation or str(exc)).splitlines()[0][:160]
                raise ConfigError(f"image {tag!r} is not present locally and could not be pulled ({reason}); "
                                  "build or load it first, or use dockerfile=") from exc

    @staticmethod
    def _check_platform(tag: str, attrs: dict[str, Any], platform: Optional[str]) -> None:
        """An image for another platform than the one asked for would run emulated, or not at all: refused."""
        if platform is None:
            return
        has = f"{attrs.get('Os', 'linux')}/{attrs.get('Architecture', '?')}"
        if has.split("/")[:2] != platform.split("/")[:2]:
            raise ConfigError(f"image {tag!r} is for {has}, not platform={platform}; name an image built for "
                              f"{platform}, or build one (dockerfile= with platform={platform})")

    def snapshot(self, base: str, commands: tuple[str, ...], user: str = "root") -> str:
        """`base` with `commands` run once and committed: cached across sessions by content."""
        from filelock import FileLock

        base_id = self.client.images.get(base).id
        key = hashlib.sha256(json.dumps([base_id, list(commands), user]).encode()).hexdigest()
        tag = f"buildenv-snapshot:{key[:20]}"
        if (tag, None) in self._present:
            return tag
        # Per user: filelock refuses a lock file another user made (and /tmp is everyone's).
        lock = state_root() / f"snapshot-{key[:20]}.lock"
        with FileLock(str(lock)):  # one provisioning per content on this host, however many sessions ask
            if not self.client.images.list(filters={"label": f"{LABEL_CACHE}={key}"}):
                self._provision(base, commands, user, tag, key)
        self._present.add((tag, None))
        return tag

    def _provision(self, base: str, commands: tuple[str, ...], user: str, tag: str, key: str) -> None:
        import time as clock

        self.progress(f"provisioning snapshot {tag} from {base} ({len(commands)} steps)")
        started = clock.monotonic()
        api = self.client.api
        container = start_idle_container(self.client, base, name=self.owner.name("provision"), user=user,
                                         labels=self.owner.labels("provision"), role="provisioning container",
                                         setuid=True)
        try:
            with daemon_errors(f"provisioning a snapshot of {base}", self.client):
                for step in commands:
                    exec_id = api.exec_create(container, ["sh", "-c", step], user=user)["Id"]
                    output = api.exec_start(exec_id).decode("utf-8", errors="replace")
                    code = api.exec_inspect(exec_id)["ExitCode"]
                    if code != 0:
                        raise ImageBuildError(f"provision step {step!r} exited {code} in {base}; fix the step "
                                              f"(its output follows)\n{tail(output)}")
                    if output.strip():
                        self.progress(output.rstrip().splitlines()[-1])
                labels = {**self.owner.labels("image"), LABEL_CACHE: key}
                changes = [f'LABEL "{name}"="{value}"' for name, value in labels.items()]
                api.commit(container, repository=tag.split(":")[0], tag=tag.split(":")[1], changes=changes)
        finally:
            remove_container(self.client, container)
        emit("created", "image", tag, self.owner.session, snapshot=True)
        self.progress(f"snapshot {tag} ready in {clock.monotonic() - started:.1f} s")

    def build(self, spec: BuildSpec) -> str:
        """Build `spec` (or reuse this session's build of the same content); return the tag."""
        spec.validate()
        files = spec.context_files()
        key = spec.content_hash(files)
        if key not in self._built:
            if self.shared is not None:
                record = self.shared.get_or_create(f"image-{key[:24]}", lambda: {"tag": self._build(spec, files, key)})
                tag = record["tag"]
                if not record["created_here"] and not self._exists(tag):
                    tag = self._build(spec, files, key)  # recorded, but gone since (an engine reset, a prune)
                self._built[key] = tag
            else:
                self._built[key] = self._build(spec, files, key)
        return self._built[key]

    def _exists(self, tag: str) -> bool:
        import docker

        with daemon_errors(f"looking up image {tag}", self.client):
            try:
                self.client.images.get(tag)
                return True
            except docker.errors.ImageNotFound:
                return False

    def _build(self, spec: BuildSpec, files: list[str], key: str) -> str:
        tag = f"buildenv/{slug(spec.dockerfile.name, 40)}:{self.owner.session}-{key[:12]}"
        self.progress(f"building {tag} from {spec.dockerfile}" + (f" (target {spec.target})" if spec.target else "")
                      + (f" for {spec.platform}" if spec.platform else ""))
        started = time.monotonic()
        with build_log(spec.dockerfile, self.progress) as (log_path, step):
            self._build_with(spec, files, tag, step)
        self.progress(f"built {tag} in {time.monotonic() - started:.1f} s (its whole log: {log_path})")
        emit("created", "image", tag, self.owner.session)
        return tag

    def _build_with(self, spec: BuildSpec, files: list[str], tag: str, step: Progress) -> None:
        """Build on the engine's builder: buildx on Docker where the CLI has it, else the engine's API."""
        from docker.utils.build import create_archive

        engine = describe(self.client)
        if engine.product == "Docker" and self.endpoint is not None and buildx.cli() is not None:
            self._buildx(spec, tag, step)
        else:
            self._refuse_what_classic_cannot(spec, f"{engine.product} {engine.version}")
            # Podman takes secrets as files in the context, which it moves out before the build (as podman-remote
            # sends them); the archive is a temporary file, removed when the build is done.
            secret_files = {name: f".buildenv-secret-{secrets.token_hex(8)}" for name in spec.secrets}
            extra = [(INJECTED_DOCKERFILE, spec.dockerfile.read_text())]
            extra += [(secret_files[name], masking.read(name, source)) for name, source in spec.secrets.items()]
            if spec.ignore_file() not in (None, spec.context / ".dockerignore"):
                files = [f for f in files if f != ".dockerignore"]  # buildah would apply it too, over the one that won
            # docker's stubs call the archive a _Fileobj; it is a temporary file of bytes.
            context = cast(IO[bytes], create_archive(str(spec.context), files=files, extra_files=extra))
            with context:
                self._build_classic(spec, context, tag, f"{engine.product} {engine.version}",
                                    [f"id={name},src={path}" for name, path in secret_files.items()], step)

    def _buildx(self, spec: BuildSpec, tag: str, step: Progress) -> None:
        """BuildKit, through the CLI's buildx plugin, on this engine (DOCKER_HOST) or the named builder. The
        context is the directory itself: buildx sends it through the build's session (read again by a
        `# syntax=` frontend, which a tar on stdin is not), and BuildKit reads `<Dockerfile>.dockerignore`
        as context_files() does."""
        assert self.endpoint is not None
        docker_cli = buildx.cli()
        assert docker_cli is not None
        # An engine without a default bridge (dockerd --bridge none) starts containers on no network, but its
        # BuildKit still asks for the bridge ("network bridge not found"): its build steps get none too.
        network = None if spec.builder or self._has_bridge() else "none"
        args = buildx.argv(docker_cli, spec, tag, self.owner.labels("image"), network)
        engine = describe(self.client)
        code, log = buildx.build(args, {"DOCKER_HOST": self.endpoint.url}, step)
        if code != 0:
            raise buildx.failure(spec, log, f"BuildKit on {engine.product} {engine.version}")

    def _has_bridge(self) -> bool:
        if self._bridge is None:
            with daemon_errors("listing the engine's networks", self.client):
                self._bridge = any(n.name == "bridge" for n in self.client.networks.list(names=["bridge"]))
        return self._bridge

    def _build_classic(self, spec: BuildSpec, context: IO[bytes], tag: str, engine: str, secret_args: list[str],
                       step: Progress) -> None:
        """The engine's API build: Podman's builder (buildah), or Docker's classic one where buildx is missing.
        Posted here rather than through the SDK's build(), which has no way to pass Podman's `secrets`."""

        api = self.client.api
        params: dict[str, Any] = {"t": tag, "dockerfile": INJECTED_DOCKERFILE, "rm": True, "forcerm": True,
                                  "buildargs": json.dumps(spec.build_args), "labels": json.dumps(self.owner.labels("image"))}
        params.update({k: v for k, v in (("target", spec.target), ("platform", spec.platform)) if v})
        if secret_args:
            params["secrets"] = json.dumps(secret_args)
        log: list[str] = []
        with daemon_errors(f"building {spec.dockerfile}", self.client):
            response = api.post(f"{api.base_url}/v{api.api_version}/build", params=params, data=context, stream=True,
                                timeout=None, headers={"Content-Type": "application/x-tar"})
            if not response.ok:  # Docker refuses a Dockerfile it cannot parse with a 400, before any chunk
                raise self._classic_failure(spec, _message(response), log, engine)
            for chunk in _chunks(response):
                if "error" in chunk:
                    log.append(masking.mask(chunk["error"]))
                    raise self._classic_failure(spec, log[-1].strip(), log, engine)
                line = masking.mask(chunk.get("stream", ""))  # a step may print a secret
                if line:
                    log.append(line)
                    if line.strip():
                        step(line.rstrip())

    def _refuse_what_classic_cannot(self, spec: BuildSpec, engine: str) -> None:
        """What only buildx serves, and (on Docker) what only BuildKit parses, refused before the build."""
        if engine.startswith("Docker"):
            fix = "install the Docker CLI's buildx plugin (Debian: docker-buildx), or drop that from the Dockerfile"
            refused = dockerfile.needs_buildkit(spec.dockerfile, engine, fix)
            if refused:
                raise ConfigError(refused)
        wanted = [name for name, value in (("secrets", spec.secrets if engine.startswith("Docker") else None),
                                           ("ssh", spec.ssh), ("cache_from", spec.cache_from),
                                           ("cache_to", spec.cache_to), ("buildx_builder", spec.builder)) if value]
        if wanted:
            raise ConfigError(f"{', '.join(wanted)} for {spec.dockerfile}: BuildKit's, served by the docker CLI's buildx "
                              f"plugin, and {engine} builds without it here; build on a Docker engine with buildx "
                              "(Debian: docker-buildx), or drop the setting")

    @staticmethod
    def _classic_failure(spec: BuildSpec, words: str, log: list[str], engine: str) -> Exception:
        refused = dockerfile.refused(spec.dockerfile, words, engine)
        if refused is not None:
            return refused
        heredoc = dockerfile.heredoc_line(spec.dockerfile.read_text(errors="replace"))
        if heredoc is not None and "<<" in words:  # buildah before 1.33 reads `COPY <<EOT` as a file named "<<EOT"
            return ConfigError(f"{spec.dockerfile}:{heredoc}: {engine}'s builder does not take heredocs ({words}); "
                               "write the file into the context and COPY it, or build on an engine whose builder "
                               "takes them (Docker with buildx, Podman 4.8 or newer)")
        return dockerfile.step_failed(spec.dockerfile, words, "".join(log))


# The lines that say which step a build is on: BuildKit's plain progress, the classic builder's, buildah's.
_STEP_LINE = re.compile(r"^(#\d+ \[|Step \d+/\d+ : |STEP \d+/\d+: )")


@contextlib.contextmanager
def build_log(dockerfile: Path, progress: Progress) -> Iterator[tuple[Path, Progress]]:
    """Where a build's every line goes: a file per Dockerfile (its latest build's log, named when the
    build is done), and its step lines to `progress` too, so the terminal says which step it is on."""
    name = f"{slug(dockerfile.name, 40)}-{hashlib.sha256(str(dockerfile).encode()).hexdigest()[:8]}.log"
    path = state_root() / "builds" / name
    path.parent.mkdir(mode=0o700, exist_ok=True)
    with path.open("w") as log:
        def step(line: str) -> None:
            log.write(line + "\n")
            if _STEP_LINE.match(line):
                progress(line)
        yield path, step


def _chunks(response: Any) -> Iterator[dict[str, Any]]:
    """A build's stream of JSON objects ({"stream": ...}, {"error": ...}), as the engine sends them."""
    from docker.utils.json_stream import json_stream

    return cast("Iterator[dict[str, Any]]", json_stream(response.iter_content(chunk_size=None, decode_unicode=True)))


def _message(response: Any) -> str:
    """An engine's refusal of a request: the message of its JSON body, else the body."""
    try:
        return str(response.json().get("message") or response.text)
    except ValueError:
        return str(response.text)


class ChunkReader(io.RawIOBase):
    """A file object over the SDK's iterator of chunks, so tarfile can stream it."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray) -> int:  # type: ignore[override]
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


def save_as(image: Any, name: str, dest: Path) -> Path:
    """The engine's `docker save` of `image`, streamed into `dest` with the image named `name`
    (manifest.json's RepoTags), whatever the engine calls it: without tagging it on the engine,
    which another process saving the same image at the same moment would race."""
    saved = io.BufferedReader(ChunkReader(image.save(named=False)), buffer_size=1 << 20)  # type: ignore[type-var]
    with tarfile.open(fileobj=saved, mode="r|") as source, tarfile.open(dest, "w") as out:
        for member in source:
            data = source.extractfile(member) if member.isfile() else None
            if member.name == "manifest.json" and data is not None:
                manifest = json.loads(data.read())
                for entry in manifest:
                    entry["RepoTags"] = [name]
                blob = json.dumps(manifest).encode()
                member.size = len(blob)
                out.addfile(member, io.BytesIO(blob))
            elif member.name != "repositories":  # the legacy index of names: manifest.json says it
                out.addfile(member, data)
    return dest
