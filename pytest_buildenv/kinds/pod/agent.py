"""A pod's end of every exec: a small shell agent, run by the helper's static busybox.

The API server's exec stream is the only way in, and it has four pitfalls, each handled here:

- A long command dies with its stream when the API server's connection drops: the agent runs each
  command detached (setsid), its output and exit code going to files under /.buildenv-sync/runs;
  a dropped stream is opened again on the same run (`agent wait`), which prints them once it ends.
- stdin's end-of-file needs the v5 websocket protocol: the agent reads exactly the bytes it is told
  and checks their sha256, so a short or corrupted copy is refused whichever protocol the cluster
  speaks (and sent once more).
- Exec takes no environment: variables (a secret, say) travel inside that stdin, never in the
  exec's URL, which the API server may log.
- An image may lack tar, find or sh: the agent and the sync script use the helper's tools only
  (TOOLS), and the command keeps the image's PATH.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import shlex
import tarfile
import time
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import IO, Any, Optional, Protocol

from ...engine.builder import KILL_MARKED
from ...engine.copied import SYNC, SYNC_SCRIPT
from ...errors import BackendUnavailable, BuildEnvError
from ...kube import api_error, gone, kubernetes_client, unreachable
from ...result import Held, Sink

TOOLS = SYNC / "bin"  # the helper's static busybox and its applets
AGENT = SYNC / "agent"
CONTAINER = "builder"  # the pod's container that commands run in
CHUNK = 1 << 20  # stdin goes out in frames of this size

# run ID SIZE SHA CWD FORGET ARGV...: stdin is a tar of `env` (export lines) and perhaps `stdin` (what
#   ARGV reads); ARGV runs detached in CWD, out/err/rc to files, which are then printed. FORGET: the
#   runs whose output came back (their files go).
# wait ID: a run whose stream dropped: wait for its exit code, then print the same.
# unpack ID SIZE SHA DIR: stdin is a tar, unpacked in DIR.
AGENT_SCRIPT = r"""# pytest-buildenv: a pod's side of each exec (kinds/pod/agent.py)
S=/.buildenv-sync T=/.buildenv-sync/bin
USER_PATH=$PATH PATH=$T:$PATH
mode=$1 D=$S/runs/$2
emit() {
    while [ ! -f "$D/rc" ]; do
        [ -f "$D/started" ] || { echo "buildenv: no run $D in this pod" >&2; exit 125; }
        sleep 0.1
    done
    cat "$D/out"; cat "$D/err" >&2; exit "$(cat "$D/rc")"
}
receive() {
    head -c "$1" > "$D/in"
    got=$(wc -c < "$D/in")
    [ "$got" -eq "$1" ] || { echo "buildenv: stdin arrived truncated ($got of $1 bytes)" >&2; exit 125; }
    [ "$(sha256sum < "$D/in" | cut -d' ' -f1)" = "$2" ] || { echo "buildenv: stdin arrived corrupted" >&2; exit 125; }
}
case $mode in
wait) emit ;;
unpack)
    mkdir -p "$D" && receive "$3" "$4" && tar -x -f "$D/in" -C "$5"; rc=$?; rm -rf "$D"; exit $rc ;;
run)
    mask=$(umask); umask 077; mkdir -p "$D" && receive "$3" "$4" && tar -x -f "$D/in" -C "$D" || exit 125
    umask "$mask"; rm -f "$D/in"; [ -f "$D/stdin" ] || ln -s /dev/null "$D/stdin"
    cwd=$5; for done in $6; do rm -rf "$S/runs/$done"; done; shift 6
    touch "$D/started"
    PATH=$USER_PATH "$T/setsid" "$T/sh" -c '
        d=$1 cwd=$2; shift 2; . "$d/env"; rm -f "$d/env"
        cd "$cwd" && "$@"; echo $? > "$d/rc.new"; mv "$d/rc.new" "$d/rc"' \
        sh "$D" "$cwd" "$@" < "$D/stdin" > "$D/out" 2> "$D/err" &
    wait
    emit ;;
esac
echo "buildenv: unknown agent mode $mode" >&2; exit 125
"""


def tools_setup() -> list[str]:
    """The init container's command: the helper's busybox and its applets, the agent, the sync script."""
    script = (f'mkdir -p {TOOLS} {SYNC}/runs && cp /bin/busybox {TOOLS}/busybox && {TOOLS}/busybox --install -s {TOOLS}'
              f' && printf "%s" "$0" > {AGENT} && printf "%s" "$1" > {SYNC}/sync')
    return ["/bin/busybox", "sh", "-c", script, AGENT_SCRIPT, SYNC_SCRIPT]


class Pod(Protocol):
    """What the agent needs of its pod (a PodEnv)."""

    name: str
    namespace: str
    api: Any  # may be replaced (a test does, to cut the connection): the exec client follows it
    wait: float  # seconds to wait for an API server that does not answer

    def delete(self) -> None: ...


class Agent:
    def __init__(self, pod: Pod) -> None:
        self.pod = pod
        self.killed_by = ""  # set when a timed-out command could not be ended but by deleting the pod
        self._finished: list[str] = []  # runs whose output came back: the next run removes their files
        self._exec_api: tuple[Any, Any] = (None, None)  # (the api it was made from, the exec streams' client)

    def run(self, argv: list[str], env: Mapping[str, str], cwd: PurePosixPath, stdin: Optional[bytes] = None,
            timeout: Optional[float] = None, out: Optional[Sink] = None,
            err: Optional[Sink] = None) -> tuple[int, bytes, bytes, bool]:
        """argv under the agent: (exit code, stdout, stderr, timed out); the output goes to `out` and `err` as
        it comes if given (what they hold is returned)."""
        marker = secrets.token_hex(8)
        lines = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in {**env, "BUILDENV_EXEC": marker}.items())
        data = _tar([("env", lines.encode()), *([("stdin", stdin)] if stdin is not None else [])])
        run = secrets.token_hex(8)
        forget, self._finished = " ".join(self._finished), []
        argv = [str(TOOLS / "sh"), str(AGENT), "run", run, str(len(data)), hashlib.sha256(data).hexdigest(), str(cwd),
                forget, *argv]
        for attempt in (1, 2):  # a run whose copy arrived short, or that never started, is sent again, once
            code, said, complaint, timed_out = self.exchange(argv, data, timeout, marker, out=out, err=err,
                                                             again=[str(TOOLS / "sh"), str(AGENT), "wait", run])
            if not (code == 125 and complaint.startswith(b"buildenv: ")):
                break
            if attempt == 2 or not (b"stdin arrived" in complaint or b"buildenv: no run" in complaint):
                raise BuildEnvError(f"{self.pod.name}: {complaint.decode(errors='replace').strip()}; "
                                    "run the command again")
        self._finished.append(run)
        return code, said, complaint, timed_out

    def unpack(self, archive: bytes, directory: PurePosixPath) -> None:
        argv = [str(TOOLS / "sh"), str(AGENT), "unpack", secrets.token_hex(8), str(len(archive)),
                hashlib.sha256(archive).hexdigest(), str(directory)]
        code, _, err, _ = self.exchange(argv, archive, None, "")
        if code:
            raise BuildEnvError(f"copying into {directory} in {self.pod.name} failed: "
                                f"{err.decode(errors='replace').strip()[-300:] or f'exit {code}'}")

    def exchange(self, argv: list[str], data: Optional[bytes], timeout: Optional[float], marker: str,
                 again: Optional[list[str]] = None, sink: Optional[IO[bytes]] = None, out: Optional[Sink] = None,
                 err: Optional[Sink] = None) -> tuple[int, bytes, bytes, bool]:
        """One exec: `data` on stdin, (exit code, stdout, stderr, timed out) back (stdout into `sink` if given;
        into `out` and `err` as it comes if given, and what they hold returned). On timeout the marked
        processes are killed (the pod deleted if they cannot be); a stream that drops is opened again as
        `again`, which prints the whole output."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        timed_out, lost_since = False, None
        out = out if out is not None else Held()
        err = err if err is not None else Held()
        while True:
            out.reset()
            err.reset()
            try:
                ws = self._stream(argv, stdin=data is not None)
                lost_since = None  # the server answers again: a later drop gets its own wait
                if data is not None:
                    for start in range(0, len(data), CHUNK):
                        ws.write_channel(0, data[start:start + CHUNK])
                    if ws.subprotocol == "v5.channel.k8s.io":  # stdin's end: a short copy is said so at once
                        ws.close_channel(0)
                status = self._drain(ws, out, err, sink, deadline)
            except Exception as exc:
                if not unreachable(exc) and not _dropped(exc):
                    raise api_error(f"running {argv[-1]!r} in {self.pod.name}", exc) from None
                status = None
            if isinstance(status, _Deadline):
                if timed_out or again is None or not self._kill(marker):  # killed, and still not done
                    self.pod.delete()
                    self.killed_by = "its pod, deleted: the command could not be ended inside it"
                    return -9, out.data(), err.data(), True
                timed_out, deadline = True, time.monotonic() + 10
                argv, data, sink = again, None, _rewind(sink)  # the killed run's output, all of it
                continue
            if status is not None:
                return _exit_code(status), out.data(), err.data(), timed_out
            # The stream dropped before the exit code came: the run goes on in the pod.
            if again is None:
                raise BackendUnavailable(f"the exec stream to {self.pod.name} dropped mid-copy",
                                         "run it again; if it keeps dropping, look at the API server's connection")
            argv, data, sink = again, None, _rewind(sink)
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since >= self.pod.wait:
                raise gone(self.pod.api, f"running a command in {self.pod.name}", self.pod.wait)
            time.sleep(0.2)

    def _stream(self, argv: list[str], stdin: bool) -> Any:
        """An exec stream, on an ApiClient of this pod's own: the client's stream() swaps its ApiClient's
        call_api while it connects, and the REST calls of another thread (a spare's) must not see that."""
        from kubernetes.stream import stream

        if self._exec_api[0] is not self.pod.api:
            self._exec_api = (self.pod.api, kubernetes_client().ApiClient(self.pod.api.configuration))
        core = kubernetes_client().CoreV1Api(self._exec_api[1])
        return stream(core.connect_get_namespaced_pod_exec, self.pod.name, self.pod.namespace, command=argv,
                      container=CONTAINER, stdin=stdin, stdout=True, stderr=True, tty=False,
                      _preload_content=False, binary=True)

    @staticmethod
    def _drain(ws: Any, out: Sink, err: Sink, sink: Optional[IO[bytes]],
               deadline: Optional[float]) -> Any:
        """The stream into out/err (stdout into `sink`, if given) until it closes: its status; None when it
        closed without one (it dropped); _Deadline when `deadline` came first. Channels are emptied as
        frames come, so a large output is never copied over and over."""
        status = b""
        try:
            while ws.is_open():
                wait = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
                ws.update(timeout=wait)
                for channel, into in ((1, out), (2, err)):
                    chunk = ws._channels.pop(channel, b"")
                    if chunk and channel == 1 and sink is not None:
                        sink.write(chunk)
                    elif chunk:
                        into.write(chunk)
                status += ws._channels.pop(3, b"")
                if deadline is not None and time.monotonic() >= deadline and not status:
                    return _Deadline()
        finally:
            ws.close()
        return json.loads(status) if status else None

    def _kill(self, marker: str) -> bool:
        """Kill the marked processes; False when that could not be done (no process can start, say)."""
        try:
            ws = self._stream([str(TOOLS / "sh"), "-c", f"PATH={TOOLS}:$PATH; {KILL_MARKED}", "sh", marker], stdin=False)
            return isinstance(self._drain(ws, Held(), Held(), None, time.monotonic() + 10), dict)
        except Exception:
            return False


class _Deadline:
    """The command's timeout came before its exit code."""


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    """Files readable by their owner only (the environment may hold a secret)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _rewind(sink: Optional[IO[bytes]]) -> Optional[IO[bytes]]:
    if sink is not None:
        sink.seek(0)
        sink.truncate()
    return sink


def _exit_code(status: Mapping[str, Any]) -> int:
    """The exit code in an exec's status (channel 3): Success, or NonZeroExitCode with the code as a cause."""
    if status.get("status") == "Success":
        return 0
    causes = (status.get("details") or {}).get("causes") or []
    code = next((c.get("message") for c in causes if c.get("reason") == "ExitCode"), None)
    if status.get("reason") == "NonZeroExitCode" and code is not None:
        return int(code)
    raise BackendUnavailable(f"the cluster could not run the command: {status.get('message') or status}",
                             "look at the pod's events (kubectl describe pod)")


def _dropped(exc: BaseException) -> bool:
    """The exec stream broke (its connection, not the server's answer)."""
    import websocket

    return isinstance(exc, (websocket.WebSocketException, OSError))
