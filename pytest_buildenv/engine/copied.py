"""A workspace copied in and out of a builder, for an engine that cannot see this machine's files
(a remote engine, a laptop's engine VM that shares other directories): `workspace: copy`.

The host directory stays the workspace. The command's own exec does the syncing around it: what
changed on the host since the last sync comes in on its stdin as a tar stream (unpacked with the
builder's tar), and after the command it lists the tree on its stderr behind a token line. What the
command changed (that listing against the last one) comes back in one more exec, `tar -c` of those
files. Changes are found by comparing listings (type, mode, size, mtime to the microsecond), so no
clock is shared between the machines. (The engine's archive API costs ~40 ms a call on Docker:
only the first copy uses it.)
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

SYNC = PurePosixPath("/.buildenv-sync")  # in the builder: the deletions to make and the files pushed, per run
Signature = tuple[str, int, int, int]  # type, permissions, size, mtime in microseconds
# Every entry under the workdir: type|permissions (octal)|size|mtime (to the nanosecond)|path.
# GNU's and busybox's stat both print this; find, stat, tar and xargs are in every builder image we take.
_FORMAT = "'%F|%a|%s|%y|%n'"
_LIST = "find {root} -exec stat -c " + _FORMAT + " {{}} + 2>/dev/null"
# With changes on stdin: unpack them, make the host's deletions, and list what was pushed as the builder
# has it (its tar may round times). Then the command, and the listing after it, on stderr behind tokens.
_WRAP = ('S={sync}; pre=; if [ -n "$BUILDENV_SYNC_IN" ]; then '
         'tar -x -f - -C / || {{ echo "buildenv: the builder could not unpack the workspace changes (tar)" >&2; '
         'exit 125; }}; while IFS= read -r p; do rm -rf "{root}/$p"; done < $S/delete; '
         "pre=$(while IFS= read -r p; do printf '%s\\0' \"{root}/$p\"; done < $S/pushed "
         "| xargs -0 -r stat -c " + _FORMAT + ' 2>/dev/null); fi; "$@" </dev/null; rc=$?; '
         '{{ printf "\\n%s\\n%s\\n%s-after\\n" "$BUILDENV_SYNC" "$pre" "$BUILDENV_SYNC"; ' + _LIST + '; }} >&2; '
         'exit $rc')


class CopiedWorkspace:
    """`root` in the builder kept in step with `workspace` on the host. `uid`/`gid` own what goes in."""

    def __init__(self, client: docker.DockerClient, container: str, workspace: Path, root: PurePosixPath,
                 uid: int, gid: int) -> None:
        self.api = client.api
        self.container = container
        self.workspace = workspace
        self.root = root
        self.uid, self.gid = uid, gid
        self.user = f"{uid}:{gid}"
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

    def command(self, argv: list[str]) -> tuple[list[str], str, Optional[bytes]]:
        """Wrap argv: what changed on the host goes in on its stdin (returned), and its exec lists the
        tree after it, behind the token (returned) on its stderr."""
        now = self._scan()
        changed = {p: s for p, s in now.items() if self.on_host.get(p) != s}
        self._deleted = sorted(set(self.on_host) - set(now))
        stdin = None
        if changed or self._deleted:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
                pushed = self._add_changes(archive, changed, round_up=True)
                for name, lines in (("delete", self._deleted), ("pushed", pushed)):
                    data = "".join(f"{line}\n" for line in lines).encode()
                    info = tarfile.TarInfo(f"{str(SYNC).lstrip('/')}/{name}")
                    info.size, info.mode, info.mtime = len(data), 0o666, int(time.time())
                    archive.addfile(info, io.BytesIO(data))
            stdin = buffer.getvalue()
        self._runs += 1
        token = f"buildenv-sync-{os.getpid()}-{self._runs}"
        return ["sh", "-c", _WRAP.format(sync=SYNC, root=self.root), "sh", *argv], token, stdin

    def _add_changes(self, archive: tarfile.TarFile, changed: dict[str, Signature], round_up: bool = False) -> list[str]:
        """Add the changed entries, owned by the builder's user; returns the files and links among them.
        `round_up`: times to the next whole second, for a tar that drops fractions (busybox's): a file
        edited on the host must never look older in the builder than what was built from it before."""
        pushed = []
        for rel in sorted(changed):  # parents before children
            info = archive.gettarinfo(str(self.workspace / rel), f"{str(self.root).lstrip('/')}/{rel}")
            info.uid, info.gid, info.uname, info.gname = self.uid, self.gid, "", ""
            mtime = changed[rel][3] / 1e6
            info.mtime = -(-changed[rel][3] // 1_000_000) if round_up else mtime  # ceil, in whole seconds
            if info.isfile():
                with open(self.workspace / rel, "rb") as data:
                    archive.addfile(info, data)
            else:
                archive.addfile(info)
            if not info.isdir():
                pushed.append(rel)
            self.in_builder[rel] = changed[rel]  # directories; files and links as the builder reports them
            self.on_host[rel] = changed[rel]
        for rel in self._deleted:
            self.on_host.pop(rel, None)
            for gone in [p for p in self.in_builder if p == rel or p.startswith(rel + "/")]:
                del self.in_builder[gone]
        return pushed

    def _put(self, data: bytes) -> None:
        if not self.api.put_archive(self.container, "/", data):
            raise BuildEnvError(f"the engine refused to copy the workspace into {self.container}")

    # --- out -----------------------------------------------------------------
    def pull(self, token: str, stderr: str) -> str:
        """Bring back what the command changed (its listing, behind `token` on its stderr, against the
        last one); returns the command's own stderr."""
        stderr, found, text = stderr.rpartition(f"\n{token}\n")
        if not found:  # killed before it listed the tree: list it now
            stderr, pre = text, ""
            run = self.api.exec_create(self.container, ["sh", "-c", _LIST.format(root=self.root)], user=self.user)["Id"]
            text = self.api.exec_start(run).decode("utf-8", "replace")
        else:
            pre, _, text = text.partition(f"{token}-after\n")
        self.in_builder.update(self._parse(pre))  # what was pushed, as the builder has it
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
        for rel in sorted(p for p in changed if listing[p][0] == "directory"):
            (self.workspace / rel).mkdir(parents=True, exist_ok=True)
        self._links([p for p in changed if listing[p][0] == "symbolic link"])
        self._fetch([p for p in changed if listing[p][0] == "regular file"])
        self.in_builder = listing
        self._rescan(changed)
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

    def _fetch(self, files: list[str]) -> None:
        """The files, in one `tar -c` in the builder streamed back on its stdout. As the builder's user: an
        exec as root in a builder made for a user has no capabilities, and could read less."""
        from ..kinds.container import extract_safely

        if not files:
            return
        run = self.api.exec_create(self.container, ["tar", "-c", "-f", "-", "-C", str(self.root),
                                                    *(f"./{p}" for p in files)], user=self.user)["Id"]
        out, err = self.api.exec_start(run, demux=True)
        if self.api.exec_inspect(run)["ExitCode"] != 0:
            words = (err or b"").decode("utf-8", "replace").strip().splitlines()
            raise BuildEnvError(f"copying the build's files out of {self.container[:12]} failed "
                                f"({words[-1] if words else 'tar exited non-zero'}); a builder image for an "
                                "engine that cannot see the workspace needs tar")
        with tarfile.open(fileobj=io.BytesIO(out or b"")) as archive:
            members = [m for m in archive.getmembers() if m.isfile()]
            for member in members:
                member.uid, member.gid = os.getuid(), os.getgid()
            extract_safely(archive, members, self.workspace)

    # --- both sides ------------------------------------------------------------
    def _scan(self) -> dict[str, Signature]:
        """The host tree's signatures (a walk with scandir: this runs before every command)."""
        entries: dict[str, Signature] = {}
        pending = [("", str(self.workspace))]
        while pending:
            prefix, directory = pending.pop()
            with os.scandir(directory) as listing:
                for entry in listing:
                    st = entry.stat(follow_symlinks=False)
                    rel = prefix + entry.name
                    if stat.S_ISDIR(st.st_mode):
                        entries[rel] = _signature("directory", 0, 0, 0)
                        pending.append((rel + "/", entry.path))
                    elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):  # sockets and fifos do not travel
                        kind = "regular file" if stat.S_ISREG(st.st_mode) else "symbolic link"
                        entries[rel] = _signature(kind, stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns // 1000)
        return entries

    def _rescan(self, paths: Iterable[str]) -> None:
        """The host's signatures of what a pull wrote, instead of walking the whole tree again."""
        for rel in paths:
            try:
                st = os.lstat(self.workspace / rel)
            except FileNotFoundError:
                self.on_host.pop(rel, None)
                continue
            kind = ("directory" if stat.S_ISDIR(st.st_mode) else "symbolic link" if stat.S_ISLNK(st.st_mode)
                    else "regular file")
            self.on_host[rel] = _signature(kind, stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns // 1000)

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
