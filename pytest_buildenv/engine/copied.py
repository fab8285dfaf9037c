"""A workspace copied in and out of a builder, for an engine that cannot see this machine's files
(a remote engine, a laptop's engine VM that shares other directories): `workspace: copy`.

The host directory stays the workspace: before each command what changed on the host since the
last sync goes in through the engine's archive API (one put), and after it what the command
changed comes back (one listing, written by the command's own exec, then one get per file or one
for the whole tree). Changes are found by comparing listings (type, mode, size, mtime to the
microsecond), so no clock is shared between the machines.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Optional

from ..errors import BuildEnvError

if TYPE_CHECKING:
    import docker

SYNC = PurePosixPath("/.buildenv-sync")  # in the builder: the deletions to make, the listing after a command
WHOLE_TREE_FROM = 16  # more changed files than this come back as one archive of the workdir
Signature = tuple[str, int, int, int]  # type, permissions, size, mtime in microseconds
# Every entry under the workdir: type|permissions (octal)|size|mtime (to the nanosecond)|path.
# GNU's and busybox's stat both print this; find and stat are in every builder image we take.
_LIST = "find {root} -exec stat -c '%F|%a|%s|%y|%n' {{}} + 2>/dev/null"
# Deletions from the host first; after the command its listing goes to stderr behind a token line,
# which the caller cuts off (one exec does it all: the archive API costs ~40 ms a call on Docker).
_WRAP = ('S={sync}; if [ -s $S/delete ]; then while IFS= read -r p; do rm -rf "{root}/$p"; done < $S/delete; '
         ': > $S/delete; fi; "$@"; rc=$?; {{ printf "\\n%s\\n" "$BUILDENV_SYNC"; ' + _LIST + '; }} >&2; exit $rc')


class CopiedWorkspace:
    """`root` in the builder kept in step with `workspace` on the host. `uid`/`gid` own what goes in."""

    def __init__(self, client: docker.DockerClient, container: str, workspace: Path, root: PurePosixPath,
                 uid: int, gid: int) -> None:
        self.api = client.api
        self.container = container
        self.workspace = workspace
        self.root = root
        self.uid, self.gid = uid, gid
        self.on_host: dict[str, Signature] = {}  # the host tree as of the last sync
        self.in_builder: dict[str, Signature] = {}  # the builder's tree as of the last sync
        self._deleted: list[str] = []
        self._runs = 0

    # --- in ------------------------------------------------------------------
    def seed(self, files: Iterable[tuple[PurePosixPath, bytes]] = ()) -> None:
        """The first copy: the workspace at root, owned by the builder's user, and `files` (absolute, root's)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            archive.addfile(self._dir_info(str(self.root).lstrip("/"), 0o755))
            archive.addfile(self._dir_info(str(SYNC).lstrip("/"), 0o777))
            for path, data in files:
                info = tarfile.TarInfo(str(path).lstrip("/"))
                info.size, info.mode, info.mtime = len(data), 0o644, time.time()
                archive.addfile(info, io.BytesIO(data))
            self._add_changes(archive, self._scan())
        self._put(buffer.getvalue())

    def command(self, argv: list[str]) -> tuple[list[str], str]:
        """Push what changed on the host, and wrap argv so that its exec lists the tree after it.
        Returns the argv to run and the token its listing starts with."""
        now = self._scan()
        changed = {p: s for p, s in now.items() if self.on_host.get(p) != s}
        self._deleted = sorted(set(self.on_host) - set(now))
        if changed or self._deleted:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
                self._add_changes(archive, changed)
                deletions = "".join(f"{p}\n" for p in self._deleted).encode()
                info = tarfile.TarInfo(f"{str(SYNC).lstrip('/')}/delete")
                info.size, info.mode, info.mtime = len(deletions), 0o666, time.time()
                archive.addfile(info, io.BytesIO(deletions))
            self._put(buffer.getvalue())
        self._runs += 1
        token = f"buildenv-sync-{os.getpid()}-{self._runs}"
        script = _WRAP.format(sync=SYNC, root=self.root)
        return ["sh", "-c", script, "sh", *argv], token

    def _add_changes(self, archive: tarfile.TarFile, changed: dict[str, Signature]) -> None:
        for rel in sorted(changed):  # parents before children
            info = archive.gettarinfo(str(self.workspace / rel), f"{str(self.root).lstrip('/')}/{rel}")
            info.uid, info.gid, info.uname, info.gname = self.uid, self.gid, "", ""
            info.mtime = changed[rel][3] / 1e6  # to the microsecond: what the builder's listing will say
            if info.isfile():
                with open(self.workspace / rel, "rb") as data:
                    archive.addfile(info, data)
            else:
                archive.addfile(info)
            self.in_builder[rel] = changed[rel]
            self.on_host[rel] = changed[rel]
        for rel in self._deleted:
            self.on_host.pop(rel, None)
            for gone in [p for p in self.in_builder if p == rel or p.startswith(rel + "/")]:
                del self.in_builder[gone]

    def _put(self, data: bytes) -> None:
        if not self.api.put_archive(self.container, "/", data):
            raise BuildEnvError(f"the engine refused to copy the workspace into {self.container}")

    # --- out -----------------------------------------------------------------
    def pull(self, token: str, stderr: str) -> str:
        """Bring back what the command changed (its listing, behind `token` on its stderr, against the
        last one); returns the command's own stderr."""
        stderr, found, text = stderr.rpartition(f"\n{token}\n")
        if not found:  # killed before it listed the tree: list it now
            stderr = text
            run = self.api.exec_create(self.container, ["sh", "-c", _LIST.format(root=self.root)], user="0")["Id"]
            text = self.api.exec_start(run).decode("utf-8", "replace")
        listing = self._parse(text)
        changed = [p for p, s in listing.items() if self.in_builder.get(p) != s]
        removed = sorted(set(self.in_builder) - set(listing), reverse=True)  # children before parents
        for rel in removed:
            path = self.workspace / rel
            if path.is_dir() and not path.is_symlink():
                import shutil

                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            self.on_host.pop(rel, None)
        files = [p for p in changed if listing[p][0] == "regular file"]
        for rel in sorted(p for p in changed if listing[p][0] == "directory"):
            (self.workspace / rel).mkdir(parents=True, exist_ok=True)
        self._links([p for p in changed if listing[p][0] == "symbolic link"])
        if len(files) > WHOLE_TREE_FROM:
            self._fetch(self.root, self.workspace.parent, only={f"{self.workspace.name}/{p}" for p in files})
        else:
            for rel in files:
                self._fetch(self.root / rel, (self.workspace / rel).parent)
        self.in_builder = listing
        self.on_host = self._scan()
        return stderr

    def _links(self, links: list[str]) -> None:
        """Symbolic links are remade from readlink: an archive of one link is its target's content on Podman."""
        if not links:
            return
        script = 'for l; do readlink "$l"; done'
        run = self.api.exec_create(self.container, ["sh", "-c", script, "sh", *(f"{self.root}/{p}" for p in links)],
                                   user="0")["Id"]
        targets = self.api.exec_start(run).decode("utf-8", "replace").splitlines()
        for rel, target in zip(links, targets):
            path = self.workspace / rel
            if path.is_symlink() or path.exists():
                path.unlink()
            path.symlink_to(target)

    def _parse(self, text: str) -> dict[str, Signature]:
        entries: dict[str, Signature] = {}
        prefix = f"{self.root}/"
        for line in text.splitlines():
            kind, mode, size, mtime, name = (line.split("|", 4) + [""] * 5)[:5]
            if name.startswith(prefix):
                entries[name[len(prefix):]] = _signature(kind, int(mode or "0", 8), int(size or 0), _microseconds(mtime))
        return entries

    def _fetch(self, source: PurePosixPath, into: Path, only: frozenset[str] | set[str] | None = None) -> None:
        from ..kinds.container import extract_safely

        stream, _ = self.api.get_archive(self.container, str(source))
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
            members = archive.getmembers()
            if only is not None:  # the archive's top is the workdir's name: land it as the workspace's
                for member in members:
                    member.name = str(PurePosixPath(self.workspace.name, *PurePosixPath(member.name).parts[1:]))
                members = [m for m in members if m.name in only]
            for member in members:
                member.uid, member.gid = os.getuid(), os.getgid()
            extract_safely(archive, members, into)

    # --- both sides ------------------------------------------------------------
    def _scan(self) -> dict[str, Signature]:
        entries: dict[str, Signature] = {}
        for top, dirs, files in os.walk(self.workspace):
            for name in [*dirs, *files]:
                path = os.path.join(top, name)
                st = os.lstat(path)
                kind = ("directory" if stat.S_ISDIR(st.st_mode) else "symbolic link" if stat.S_ISLNK(st.st_mode)
                        else "regular file" if stat.S_ISREG(st.st_mode) else "other")
                if kind != "other":  # sockets and fifos do not travel
                    rel = os.path.relpath(path, self.workspace)
                    entries[rel] = _signature(kind, stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns // 1000)
        return entries

    def _dir_info(self, name: str, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, mode, self.uid, self.gid, time.time()
        return info


def _signature(kind: str, mode: int, size: int, mtime_us: int) -> Signature:
    kind = "regular file" if kind == "regular empty file" else kind  # GNU stat names empty files apart
    if kind == "directory":
        return (kind, mode, 0, 0)  # a directory's size and mtime change with its entries, which are listed
    if kind == "symbolic link":
        return (kind, 0, size, 0)  # a link's mode means nothing, and its mtime does not travel in archives
    return (kind, mode, size, mtime_us)


def _microseconds(text: str) -> int:
    """stat's %y ("2026-11-29 02:04:39.922844304 +0000") as microseconds since the epoch."""
    whole, _, rest = text.partition(".")
    fraction, _, zone = rest.partition(" ")
    seconds = _epoch(whole, zone)
    return -1 if seconds is None else seconds * 1_000_000 + int((fraction + "000000")[:6] or 0)


@functools.lru_cache(maxsize=4096)  # a build's files share a few seconds: parse each once
def _epoch(whole: str, zone: str) -> Optional[int]:
    try:
        return int(datetime.strptime(f"{whole} {zone}", "%Y-%m-%d %H:%M:%S %z").timestamp())
    except ValueError:
        return None  # an unreadable time: treated as changed


def engine_sees(client: docker.DockerClient, directory: Path, image: str, labels: dict[str, str],
                to_host: Callable[[Path], str] = str) -> bool:
    """Whether the engine can bind-mount what is in `directory`: a container is created (never started)
    mounting a fresh directory of ours, which an engine elsewhere refuses at once, as it has no such path."""
    import docker

    from .containers import refuses_host_paths

    probe = Path(tempfile.mkdtemp(prefix=".buildenv-probe-", dir=directory))
    api = client.api
    try:
        host_config = api.create_host_config(mounts=[docker.types.Mount("/probe", to_host(probe), type="bind")])
        created = api.create_container(image, command=["true"], labels=labels, host_config=host_config)
    except docker.errors.APIError as exc:
        if refuses_host_paths(str(getattr(exc, "explanation", None) or exc)):
            return False
        raise
    finally:
        probe.rmdir()
    api.remove_container(created["Id"], force=True)
    return True
