"""Archives from the engine: extracting one without writing outside where it lands."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO

from ..errors import BuildEnvError


def extract_safely(archive: tarfile.TarFile, members: list[tarfile.TarInfo], where: Path) -> None:
    """Extract without writing outside `where` (no absolute or `..` paths, no links escaping it):
    tarfile's "data" filter where this Python has it, else the same refusals by hand."""
    if hasattr(tarfile, "data_filter"):
        archive.extractall(where, members=members, filter="data")
        return
    for member in members:  # Pythons before 3.9.17 / 3.10.12 / 3.11.4
        target = PurePosixPath(member.name)
        link = PurePosixPath(member.linkname)
        escapes = target.is_absolute() or ".." in target.parts or (
            (member.issym() or member.islnk()) and (link.is_absolute() or ".." in link.parts))
        if escapes:
            raise tarfile.TarError(f"{member.name!r}, which would land outside the destination")
        archive.extract(member, where, set_attrs=False)  # no chown to the archive's owners, as "data" does not
        if member.isreg():  # but the mode and time, as "data" keeps them
            target_path = where / member.name
            os.chmod(target_path, (member.mode & 0o755) | 0o600)
            os.utime(target_path, (member.mtime, member.mtime))


def extract_as(data: IO[bytes], source: PurePosixPath, dest: Path, where: str) -> None:
    """`get()`'s landing: an archive of `source` (its top named as source's) extracted as `dest`, safely;
    one that would write outside `dest` is one line (`where`: the environment it came from)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=data) as archive:
        members = archive.getmembers()
        for member in members:
            member.name = str(PurePosixPath(dest.name) / PurePosixPath(member.name).relative_to(source.name))
        try:
            extract_safely(archive, members, dest.parent)
        except tarfile.TarError as exc:
            raise BuildEnvError(f"get(): {source} in {where} holds {exc}; nothing outside {dest} "
                                "is written: fetch the files it links to instead") from exc
