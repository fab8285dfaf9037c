"""Images for builder containers: by tag, or built from a Dockerfile once per content.

The context is packed here rather than by the daemon so that a per-Dockerfile
ignore file (`Dockerfile.x.dockerignore` beside `Dockerfile.x`, as BuildKit
reads it) works on the classic builder too, and so that the content hash that
keys the cache is ours: the same Dockerfile, context, target and build args
are built once per session and reused by every test and xdist worker.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Optional, cast
from collections.abc import Iterable

from . import daemon_errors
from ..events import emit
from ..errors import ConfigError, ImageBuildError, tail
from ..naming import LABEL_CACHE, Owner, slug
from ..sharing import SharedState, state_root
from .containers import remove_container, start_idle_container

if TYPE_CHECKING:
    import docker


# The Dockerfile travels in the context under this name, wherever it lives on disk.
INJECTED_DOCKERFILE = ".buildenv.Dockerfile"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildSpec:
    dockerfile: Path
    context: Path
    target: Optional[str] = None
    build_args: dict[str, str] = field(default_factory=dict)

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
        digest.update(json.dumps([self.target, sorted(self.build_args.items())]).encode())
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

    def __init__(self, client: docker.DockerClient, owner: Owner,
                 shared: Optional[SharedState] = None, progress: Optional[Progress] = None) -> None:
        self.client = client
        self.owner = owner
        self.shared = shared
        self.progress = progress or (lambda line: None)
        self._built: dict[str, str] = {}  # Dockerfile content key -> tag built this session
        self._present: set[str] = set()  # tags known to be local: looked up, pulled or provisioned

    def forget(self) -> None:
        """The engine restarted: images it had are looked up again, not assumed (a build is redone
        only if its image is gone)."""
        self._present.clear()
        self._built.clear()

    def from_tag(self, tag: str) -> str:
        """The tag itself if the image is local (or can be pulled), else ConfigError."""
        import docker

        if tag in self._present:
            return tag  # already looked up this session
        with daemon_errors(f"looking up image {tag}", self.client):
            try:
                self.client.images.get(tag)
                self._present.add(tag)
                return tag
            except docker.errors.ImageNotFound:
                pass
            try:
                self.progress(f"pulling {tag}")
                self.client.images.pull(tag)
                self._present.add(tag)
                return tag
            except docker.errors.APIError as exc:
                reason = (exc.explanation or str(exc)).splitlines()[0][:160]
                raise ConfigError(f"image {tag!r} is not present locally and could not be pulled ({reason}); "
                                  "build or load it first, or use dockerfile=") from exc

    def snapshot(self, base: str, commands: tuple[str, ...], user: str = "root") -> str:
        """`base` with `commands` run once and committed: cached across sessions by content."""
        from filelock import FileLock

        base_id = self.client.images.get(base).id
        key = hashlib.sha256(json.dumps([base_id, list(commands), user]).encode()).hexdigest()
        tag = f"buildenv-snapshot:{key[:20]}"
        if tag in self._present:
            return tag
        # Per user: filelock refuses a lock file another user made (and /tmp is everyone's).
        lock = state_root() / f"snapshot-{key[:20]}.lock"
        with FileLock(str(lock)):  # one provisioning per content on this host, however many sessions ask
            if not self.client.images.list(filters={"label": f"{LABEL_CACHE}={key}"}):
                self._provision(base, commands, user, tag, key)
        self._present.add(tag)
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
        from docker.utils.build import create_archive

        tag = f"buildenv/{slug(spec.dockerfile.name, 40)}:{self.owner.session}-{key[:12]}"
        self.progress(f"building {tag} from {spec.dockerfile}" + (f" (target {spec.target})" if spec.target else ""))
        # docker's stubs call the archive a _Fileobj; it is a temporary file of bytes.
        context = cast(IO[bytes], create_archive(str(spec.context), files=files,
                                                 extra_files=[(INJECTED_DOCKERFILE, spec.dockerfile.read_text())]))
        log: list[str] = []
        with daemon_errors(f"building {spec.dockerfile}", self.client), context:
            stream = self.client.api.build(
                fileobj=context, custom_context=True, dockerfile=INJECTED_DOCKERFILE, tag=tag,
                target=spec.target, buildargs=spec.build_args, labels=self.owner.labels("image"),
                rm=True, forcerm=True, decode=True)
            for chunk in stream:
                if "error" in chunk:
                    log.append(chunk["error"])
                    raise ImageBuildError(
                        f"docker build of {spec.dockerfile} failed: {chunk['error'].strip()}; "
                        f"fix the failing step (its output follows)\n{tail(''.join(log))}")
                line = chunk.get("stream", "")
                if line:
                    log.append(line)
                    if line.strip():
                        self.progress(line.rstrip())
        emit("created", "image", tag, self.owner.session)
        return tag


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
