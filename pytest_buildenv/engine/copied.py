"""A workspace copied in and out of a builder, for an engine that cannot see this machine's files
(a remote engine, a laptop's engine VM that shares other directories): `workspace: copy`.

The host directory stays the workspace, and each command's own exec does the syncing around it
(`SYNC_SCRIPT`, put in the builder with the first copy): what changed on the host since the last
sync comes in on the exec's stdin as a tar stream; the builder lists /work before and after the
command, and after the command's own stderr writes, behind a token line, the entries that changed,
those that went, and a tar of the changed files and links. One exec per command, as with a bind mount:
the engine's archive API costs ~40 ms a call on Docker, and only the first copy uses it.
How the copy reaches its builder is a `Channel`: the engine's API here (`EngineChannel`); any
exec stream that can unpack a tar and run a command will do (a pod's: kinds/pod/).
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Optional, Protocol

from ..errors import BuildEnvError
from ..result import Capture
from .archive import extract_safely
from .containers import refuses_host_paths

if TYPE_CHECKING:
    import docker

SYNC = PurePosixPath("/.buildenv-sync")  # in the builder: the script, the host's deletions, the listings
# Needs sh, find, stat, grep, cut, sed, tr, xargs and tar: busybox and Debian have them all.
# `run CMD...` unpacks stdin (when BUILDENV_SYNC_IN is set), makes the host's deletions, runs CMD and
# reports; `report` alone reports (for a command killed before it could).
SYNC_SCRIPT = r"""# pytest-buildenv: the copied workspace's side in the builder (engine/copied.py)
S=/.buildenv-sync R=/work T=$BUILDENV_SYNC
# BUILDENV_TOOLS: where this script's own tools are (a pod's helper busybox); the command keeps the image's PATH.
USER_PATH=$PATH PATH=${BUILDENV_TOOLS:+$BUILDENV_TOOLS:}$PATH
list() { find "$R" -exec stat -c '%F|%a|%s|%y|%n' {} + 2>/dev/null; }
# The command, found on the image's PATH as execvp would find it: a busybox sh (a pod's helper) would run
# its own applets for names it knows (tar, sh, ls), not the image's programs.
command_path() {
    case $1 in */*) echo "$1"; return 0 ;; esac
    IFS=:; for d in $USER_PATH; do
        if [ -f "${d:-.}/$1" ] && [ -x "${d:-.}/$1" ]; then unset IFS; echo "${d:-.}/$1"; return 0; fi
    done; unset IFS; return 1
}
report() {
    list > "$S/after.$T"
    printf '\n%s\n' "$T"
    grep -vxFf "$S/before.$T" "$S/after.$T"
    printf '%s-gone\n' "$T"
    cut -d'|' -f5- "$S/after.$T" > "$S/names.$T"
    cut -d'|' -f5- "$S/before.$T" | grep -vxFf "$S/names.$T"
    printf '%s-tar\n' "$T"
    grep -vxFf "$S/before.$T" "$S/after.$T" | grep -E '^(regular|symbolic)' | cut -d'|' -f5- \
        | sed "s|^$R/|./|" | tr '\n' '\0' | xargs -0 -r tar -c -f - -C "$R"
    rm -f "$S/before.$T" "$S/after.$T" "$S/names.$T"
}
if [ "$1" = report ]; then report >&2; exit 0; fi
shift
if [ -n "$BUILDENV_SYNC_IN" ]; then
    tar -x -f - -C / || { echo "buildenv: the builder could not unpack the workspace changes (tar)" >&2; exit 125; }
    while IFS= read -r p; do rm -rf "$R/$p"; done < "$S/delete"
fi
list > "$S/before.$T"
(PATH=$USER_PATH; if p=$(command_path "$1"); then shift; exec "$p" "$@"; fi; echo "sh: $1: not found" >&2; exit 127) \
    </dev/null
rc=$?
report >&2
exit $rc
"""
Signature = tuple[int, int, int]  # host mode (type bits too), size, mtime in nanoseconds


class Channel(Protocol):
    """The two things a copied workspace asks of its builder's side, besides each command's own exec."""

    def unpack(self, archive: bytes) -> None:
        """Unpack a tar archive at / in the builder (the first copy)."""

    def run(self, argv: list[str], environment: dict[str, str]) -> bytes:
        """Run argv as the builder's user (a report for a command killed before it made one); its stderr."""


class EngineChannel:
    """A container's side, through the engine's archive and exec API."""

    def __init__(self, client: docker.DockerClient, container: str, user: str) -> None:
        self.api, self.container, self.user = client.api, container, user

    def unpack(self, archive: bytes) -> None:
        if not self.api.put_archive(self.container, "/", archive):
            raise BuildEnvError(f"the engine refused to copy the workspace into {self.container[:12]}")

    def run(self, argv: list[str], environment: dict[str, str]) -> bytes:
        exec_id = self.api.exec_create(self.container, argv, user=self.user, environment=environment)["Id"]
        said: Optional[bytes] = self.api.exec_start(exec_id, demux=True)[1]
        return said or b""


class CopiedWorkspace:
    """`root` in the builder kept in step with `workspace` on the host. `uid`/`gid` own what goes in."""

    def __init__(self, channel: Channel, workspace: Path, root: PurePosixPath, uid: int, gid: int,
                 shell: str = "sh") -> None:
        if str(root) != "/work":
            raise BuildEnvError(f"a copied workspace lives at /work in the builder, not {root}")
        self.channel = channel
        self.workspace = workspace
        self.root = root
        self.uid, self.gid = uid, gid
        self.shell = shell  # what runs the sync script: the image's sh, or a pod's helper busybox
        self.on_host: dict[str, Signature] = {}  # the host tree as of the last sync

    # --- in ------------------------------------------------------------------
    def seed(self, files: Iterable[tuple[PurePosixPath, bytes]] = ()) -> None:
        """The first copy, through the archive API: the workspace at root, owned by the builder's user,
        the sync script, and `files` (absolute paths, root's)."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            archive.addfile(self._dir_info(str(self.root).lstrip("/"), 0o755))
            archive.addfile(self._dir_info(str(SYNC).lstrip("/"), 0o777))
            for path, data in [*files, (SYNC / "sync", SYNC_SCRIPT.encode())]:
                info = tarfile.TarInfo(str(path).lstrip("/"))
                info.size, info.mode, info.mtime = len(data), 0o644, time.time()
                archive.addfile(info, io.BytesIO(data))
            self.on_host = self._scan()
            self._add(archive, self.on_host, exact=True)
        self.channel.unpack(buffer.getvalue())

    def command(self, argv: list[str]) -> tuple[list[str], str, Optional[bytes]]:
        """argv wrapped in the sync script; the token its report starts with; what goes in on its stdin
        (what changed on the host, and the host's deletions), or None when nothing did."""
        now = self._scan()
        changed = {p: s for p, s in now.items() if self.on_host.get(p) != s}
        deleted = sorted(set(self.on_host) - set(now))
        self.on_host = now
        stdin = None
        if changed or deleted:
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
                self._add(archive, changed)
                data = "".join(f"{p}\n" for p in deleted).encode()
                info = tarfile.TarInfo(f"{str(SYNC).lstrip('/')}/delete")
                info.size, info.mode, info.mtime = len(data), 0o666, int(time.time())
                archive.addfile(info, io.BytesIO(data))
            stdin = buffer.getvalue()
        token = f"buildenv-sync-{secrets.token_hex(8)}"
        return [self.shell, str(SYNC / "sync"), "run", *argv], token, stdin

    def _add(self, archive: tarfile.TarFile, entries: dict[str, Signature], exact: bool = False) -> None:
        """Entries, owned by the builder's user. Times go to the next whole second unless `exact` (the
        archive API keeps fractions; busybox's tar does not): a file edited on the host must never look
        older in the builder than what was built from it before."""
        for rel in sorted(entries):  # parents before children
            info = archive.gettarinfo(str(self.workspace / rel), f"{str(self.root).lstrip('/')}/{rel}")
            info.uid, info.gid, info.uname, info.gname = self.uid, self.gid, "", ""
            mtime_ns = entries[rel][2]
            info.mtime = mtime_ns / 1e9 if exact else -(-mtime_ns // 1_000_000_000)
            if info.isfile():
                with open(self.workspace / rel, "rb") as data:
                    archive.addfile(info, data)
            else:
                archive.addfile(info)

    # --- out -----------------------------------------------------------------
    def stderr_of(self, token: str, err: Capture) -> ReportSplit:
        """Where the wrapped command's stderr goes: its own part to `err`, the builder's report apart."""
        return ReportSplit(err, f"\n{token}\n".encode())

    def pull(self, token: str, split: ReportSplit) -> None:
        """Apply the builder's report (behind `token` on the command's stderr, split off by stderr_of)."""
        split.close()
        report = split.report
        if report is None:  # killed before it reported: the report alone
            said = self.channel.run([self.shell, str(SYNC / "sync"), "report"], {"BUILDENV_SYNC": token})
            report = said.partition(f"\n{token}\n".encode())[2]
        changed, _, rest = report.partition(f"{token}-gone\n".encode())
        gone, _, archive = rest.partition(f"{token}-tar\n".encode())
        listing = changed.decode("utf-8", "replace").splitlines()
        self._refuse_newlines(listing)
        touched = self._remove(gone.decode("utf-8", "replace").splitlines())
        touched += self._directories(listing)
        touched += self._extract(archive)
        self._rescan(touched)

    def _refuse_newlines(self, lines: list[str]) -> None:
        """The builder's listing is a line per entry (type|mode|size|time|name): a name with a newline in it
        breaks a line in two, and the second part has no fields. Such a name cannot come back this way."""
        for before, line in zip(["", *lines], lines):
            if line and line.count("|") < 4:
                name = before.split("|", 4)[-1]
                raise BuildEnvError(f"{name!r} and what follows it: a file name with a newline, which a copied "
                                    "workspace cannot bring back from the builder; rename it in the build, or "
                                    "bind-mount the workspace (workspace: bind, on an engine that sees this machine)")

    def _relative(self, path: str) -> Optional[str]:
        prefix = f"{self.root}/"
        return path[len(prefix):] if path.startswith(prefix) else None

    def _remove(self, paths: list[str]) -> list[str]:
        gone = [rel for rel in map(self._relative, paths) if rel]
        for rel in sorted(gone, reverse=True):  # children before parents
            path = self.workspace / rel
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return gone

    def _directories(self, lines: list[str]) -> list[str]:
        made = []
        for line in lines:
            kind, mode, _, _, name = (line.split("|", 4) + [""] * 5)[:5]
            rel = self._relative(name)
            if kind == "directory" and rel:
                (self.workspace / rel).mkdir(parents=True, exist_ok=True)
                os.chmod(self.workspace / rel, int(mode or "755", 8))
                made.append(rel)
        return made

    def _extract(self, data: bytes) -> list[str]:
        """Files through tarfile's safe extraction; links remade as they are (an archive's link may point
        anywhere, as the builder's did)."""
        if not data.strip(b"\0\n"):
            return []
        with tarfile.open(fileobj=io.BytesIO(data), ignore_zeros=True) as archive:
            members = archive.getmembers()
            files = []
            for member in members:
                member.name = os.path.normpath(member.name)
                if member.issym():
                    path = self.workspace / member.name
                    if path.is_symlink() or path.exists():
                        path.unlink()
                    path.symlink_to(member.linkname)
                elif member.isfile():
                    member.uid, member.gid = os.getuid(), os.getgid()
                    files.append(member)
            extract_safely(archive, files, self.workspace)
        return [m.name for m in members]

    # --- the host's side ------------------------------------------------------------
    def _scan(self) -> dict[str, Signature]:
        """The host tree's signatures (a walk with scandir: this runs before every command)."""
        entries: dict[str, Signature] = {}
        pending = [("", str(self.workspace))]
        while pending:
            prefix, directory = pending.pop()
            with os.scandir(directory) as listing:
                for entry in listing:
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        entries[prefix + entry.name] = (st.st_mode, 0, 0)  # its entries are listed
                        pending.append((prefix + entry.name + "/", entry.path))
                    elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):  # sockets and fifos do not travel
                        entries[prefix + entry.name] = (st.st_mode, st.st_size, st.st_mtime_ns)
        return entries

    def _rescan(self, paths: Iterable[str]) -> None:
        """The host's signatures of what a pull wrote, instead of walking the whole tree again."""
        for rel in paths:
            try:
                st = os.lstat(self.workspace / rel)
            except FileNotFoundError:
                self.on_host.pop(rel, None)
                continue
            self.on_host[rel] = (st.st_mode, 0, 0) if stat.S_ISDIR(st.st_mode) else (st.st_mode, st.st_size,
                                                                                     st.st_mtime_ns)

    def _dir_info(self, name: str, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, mode, self.uid, self.gid, time.time()
        return info


def engine_sees(client: docker.DockerClient, directory: Path, image: str, labels: dict[str, str],
                to_host: Callable[[Path], str] = str) -> bool:
    """Whether the engine can bind-mount what is in `directory`: a container is created (never started)
    mounting a fresh directory of ours, which an engine elsewhere refuses at once, as it has no such path."""
    import docker

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


class ReportSplit:
    """A wrapped command's stderr as it comes: the command's own to its Capture (bounded, whatever it prints),
    and what follows `marker` (the builder's report: what changed) kept apart, whole, for pull()."""

    def __init__(self, own: Capture, marker: bytes) -> None:
        self.own, self.marker = own, marker
        self.report: Optional[bytes] = None
        self._after: Optional[bytearray] = None
        self._pending = b""  # what could be the start of the marker

    def write(self, chunk: bytes) -> None:
        if self._after is not None:
            self._after += chunk
            return
        data = self._pending + chunk
        at = data.find(self.marker)
        if at >= 0:
            self.own.write(data[:at])
            self._after, self._pending = bytearray(data[at + len(self.marker):]), b""
            return
        cut = max(0, len(data) - (len(self.marker) - 1))
        self.own.write(data[:cut])
        self._pending = data[cut:]

    def close(self) -> None:
        if self._after is None:
            self.own.write(self._pending)
            self._pending = b""
        else:
            self.report = bytes(self._after)

    def reset(self) -> None:
        self.own.reset()
        self.report, self._after, self._pending = None, None, b""

    def data(self) -> bytes:
        return self.own.data()
