"""Image hygiene: secrets left in lower layers, layer sizes, checksums of downloads.

Reads the image as `docker save` streams it, layer by layer, listing each
layer's tar without extracting anything to disk.
"""

from __future__ import annotations

import fnmatch
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Optional, Union
from collections.abc import Iterable

from .engine import connect
from .engine.endpoint import resolve
from .engine.images import ChunkReader, file_sha256
from .errors import BuildEnvError

if TYPE_CHECKING:
    import docker

SECRET_PATTERNS = (
    "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519",
    ".env", "*.env", ".netrc", ".npmrc", ".pypirc", ".git-credentials", "credentials",
    "credentials.json", "*secret*", "*password*", "*.kubeconfig",
)


class ChecksumMismatch(BuildEnvError):
    """A downloaded payload is not what its published checksum says."""


@dataclass(frozen=True)
class Leak:
    path: str  # inside the image, without the leading /
    layer: int  # index (0 = base) of the layer that holds the file
    size: int
    deleted_in: Optional[int]  # the later layer that deletes it, if any
    secret_looking: bool

    def __str__(self) -> str:
        why = []
        if self.deleted_in is not None:
            why.append(f"deleted in layer {self.deleted_in} but still in layer {self.layer}")
        if self.secret_looking:
            why.append("secret-looking name")
        return f"/{self.path} ({self.size} bytes): {', '.join(why)}"


@dataclass(frozen=True)
class LayerInfo:
    files: dict[str, int]  # path -> size, regular files only
    deleted: frozenset[str]  # paths this layer whites out
    opaque: frozenset[str]  # directories this layer makes opaque (hides everything below)


@dataclass(frozen=True)
class Layer:
    index: int
    size: int
    created_by: str


@dataclass(frozen=True)
class LayerReport:
    count: int
    total_size: int
    layers: list[Layer]


def _client(client: Optional[docker.DockerClient]) -> docker.DockerClient:
    return client if client is not None else connect(resolve())  # DOCKER_HOST, the current context, ...


def _list_layer(fileobj: Any) -> LayerInfo:
    files, deleted, opaque = {}, set(), set()
    with tarfile.open(fileobj=fileobj, mode="r|") as layer:
        for member in layer:
            path = PurePosixPath(member.name)
            if path.name == ".wh..wh..opq":
                opaque.add(str(path.parent))
            elif path.name.startswith(".wh."):
                deleted.add(str(path.parent / path.name[4:]))
            elif member.isfile():
                files[str(path)] = member.size
    return LayerInfo(files, frozenset(deleted), frozenset(opaque))


def read_layers(image: str, client: Optional[docker.DockerClient] = None) -> list[LayerInfo]:
    """Each layer's listing, base first, from the `docker save` stream."""
    saved = _client(client).images.get(image).save(named=False)
    listings: dict[str, LayerInfo] = {}
    manifest = None
    stream = io.BufferedReader(ChunkReader(saved), buffer_size=1 << 20)  # type: ignore[type-var]
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            if member.name == "manifest.json":
                manifest = json.loads(archive.extractfile(member).read())  # type: ignore[union-attr]
            elif member.isfile() and (member.name.endswith("/layer.tar") or member.name.startswith("blobs/")):
                listings[member.name] = _list_layer(archive.extractfile(member))
    if manifest is None:
        raise BuildEnvError(f"docker save of {image} has no manifest.json; is the engine's save format supported?")
    return [listings[name] for name in manifest[0]["Layers"]]


def _deleted_later(path: str, later: list[LayerInfo], start: int) -> Optional[int]:
    for offset, layer in enumerate(later):
        if path in layer.deleted or any(path.startswith(d + "/") for d in layer.deleted | layer.opaque):
            return start + offset
    return None


def leaked_files(image: str, patterns: Iterable[str] = SECRET_PATTERNS,
                 client: Optional[docker.DockerClient] = None) -> list[Leak]:
    """Files a later layer deletes (still extractable from the earlier one), and secret-looking files."""
    layers = read_layers(image, client)
    patterns = tuple(patterns)
    leaks = []
    for index, layer in enumerate(layers):
        for path, size in sorted(layer.files.items()):
            deleted_in = _deleted_later(path, layers[index + 1:], index + 1)
            secret = any(fnmatch.fnmatch(PurePosixPath(path).name, p) for p in patterns)
            if deleted_in is not None or secret:
                leaks.append(Leak(path, index, size, deleted_in, secret))
    return leaks


def layer_report(image: str, client: Optional[docker.DockerClient] = None) -> LayerReport:
    """Layer count and per-layer sizes (from the image history; empty metadata steps left out)."""
    api: Any = _client(client).api  # docker's stubs leave history() untyped
    history = [h for h in reversed(api.history(image)) if h.get("Size", 0) > 0 or "#(nop)" not in h.get("CreatedBy", "")]
    rootfs_layers = api.inspect_image(image)["RootFS"]["Layers"]
    layers = [Layer(i, h.get("Size", 0), h.get("CreatedBy", "")) for i, h in enumerate(history)]
    return LayerReport(count=len(rootfs_layers), total_size=sum(layer.size for layer in layers), layers=layers)


def verify_sha256(path: Union[str, Path], expected: str) -> Path:
    """Return `path` if its SHA-256 is `expected`; else raise ChecksumMismatch (refuse the payload)."""
    path = Path(path)
    actual = file_sha256(path).hex()
    if actual != expected.strip().lower():
        raise ChecksumMismatch(f"{path}: sha256 is {actual}, expected {expected}; "
                               "do not use this payload, download it again from a trusted source")
    return path
