"""Archives from the engine: extracting one without writing outside where it lands."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath


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
