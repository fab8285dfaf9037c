"""`PodEnv`: one test's builder pod. Its workspace is copied in and out as in copy mode
(engine/copied.py) through the agent (agent.py); files outside /work go through the agent too."""

from __future__ import annotations

import io
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from ...engine.archive import extract_as
from ...engine.containers import InvokingUser
from ...engine.copied import CopiedWorkspace
from ...errors import BuildEnvError, ConfigError
from ...events import emit
from ...handle import BuildEnv
from ...kube import GONE_ALREADY, api_error, call, gone, kubernetes_client, pod_not_ready, unreachable
from ...naming import Owner
from ...result import Capture, FileInfo
from .agent import TOOLS, Agent
from .spec import WORKDIR, PodSettings, manifest

# What a pod that cannot start says, for which waiting longer cannot help.
_HOPELESS = ("ErrImage", "ImagePullBackOff", "init container", "CrashLoop", "ConfigError")


class PodEnv(BuildEnv):
    """A builder pod. `start()` creates it and copies the workspace in; commands run through its exec stream."""

    kind = "pod"

    def __init__(self, api: Any, namespace: str, settings: PodSettings, workspace: Path, owner: Owner, *,
                 test: str = "", identity: str = "", wait: float = 60) -> None:
        super().__init__(workspace, WORKDIR, environment=settings.environment, timeout=settings.timeout)
        self.api, self.namespace, self.settings, self.owner, self.test = api, namespace, settings, owner, test
        self.image = settings.image or ""
        self.name = owner.name("pod", test.rsplit("::", 1)[-1])
        self.identity = identity  # the ConfigMap holding this machine's passwd and group
        self.user = InvokingUser()
        self.node = ""  # set by start(): where the scheduler put it
        self.wait = wait  # seconds to wait for an API server that does not answer
        self.agent = Agent(self)
        self.copied: Optional[CopiedWorkspace] = None
        self._started = False

    @property
    def core(self) -> Any:
        return kubernetes_client().CoreV1Api(self.api)

    def manifest(self) -> dict[str, Any]:
        return manifest(self.name, self.settings, self.owner, self.test, self.identity, self.user)

    # --- lifetime --------------------------------------------------------
    def start(self) -> PodEnv:
        """Create the pod, wait until it runs, copy the workspace in; idempotent."""
        if self._started:
            return self
        if not self.image:
            raise ConfigError("no image for the pod kind; pass @pytest.mark.pod(image=...), set pod: image: in "
                              "buildenv.yaml, or ini buildenv_image")
        self._started = True
        self._call(f"creating pod {self.name}", self.core.create_namespaced_pod, self.namespace, self.manifest())
        emit("created", "pod", self.name, self.owner.session, kind=self.kind)
        self._wait_running()
        self.copied = CopiedWorkspace(PodChannel(self), self.workspace, WORKDIR, self.user.uid, self.user.gid,
                                      shell=str(TOOLS / "sh"))
        self.copied.seed()
        return self

    def _wait_running(self) -> None:
        """Until the builder runs. A pod that cannot start (an image the nodes cannot pull, an init container
        that failed) is one line at once; one the scheduler cannot place, at the start timeout."""
        deadline = time.monotonic() + self.settings.start_timeout
        while True:
            pod = self._call(f"reading pod {self.name}", self.core.read_namespaced_pod, self.name, self.namespace)
            why = pod_not_ready(self.api, pod)
            if not why:
                self.node = pod.spec.node_name or ""
                return
            if pod.status.phase in ("Failed", "Succeeded") or any(word in why for word in _HOPELESS):
                raise BuildEnvError(f"pod {self.name} cannot start: {why}")
            if time.monotonic() >= deadline:
                raise BuildEnvError(f"pod {self.name} did not start within {self.settings.start_timeout:g} s: {why}; "
                                    "raise the pod setting start_timeout if the cluster is only slow")
            time.sleep(0.1)

    def _call(self, action: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        """An API call; an API server that does not answer is waited for, then one line."""
        waited_since = None
        while True:
            try:
                return method(*args, _request_timeout=30, **kwargs)
            except Exception as exc:
                if not unreachable(exc):
                    raise api_error(action, exc) from None
                waited_since = waited_since or time.monotonic()
                if time.monotonic() - waited_since >= self.wait:
                    raise gone(self.api, action, self.wait, exc) from None
                time.sleep(0.5)

    def running(self) -> bool:
        """Started, and the cluster says it still runs."""
        if not self._started:
            return False
        try:
            pod = self.core.read_namespaced_pod(self.name, self.namespace, _request_timeout=30)
        except Exception:
            return False
        return bool(pod.status.phase == "Running" and pod.metadata.deletion_timestamp is None)

    def delete(self) -> None:
        """Delete the pod at once (no grace: a builder has nothing to save); gone already is fine."""
        call(self.api, f"deleting pod {self.name}", self.core.delete_namespaced_pod, self.name, self.namespace,
             grace_period_seconds=0, fine=GONE_ALREADY)

    def close(self) -> None:
        if self._started:
            self._started = False
            self.delete()
            emit("removed", "pod", self.name, self.owner.session, kind=self.kind)

    # --- running ---------------------------------------------------------
    def _execute(self, argv: list[str], env: dict[str, str], cwd: PurePosixPath, timeout: Optional[float],
                 user: Optional[str], out: Capture, err: Capture) -> tuple[int, bool]:
        if user is not None:
            raise ConfigError(f"run(user={user!r}) cannot apply to a pod: Kubernetes runs every exec as the pod's "
                              "user (the invoking user); drop user=")
        if self.copied is None:
            raise BuildEnvError(f"{self.name} is not started; call start() first")
        argv, token, stdin = self.copied.command(argv)
        env = {**env, "BUILDENV_SYNC": token, "BUILDENV_TOOLS": str(TOOLS), **({"BUILDENV_SYNC_IN": "1"} if stdin else {})}
        self.agent.killed_by = ""
        split = self.copied.stderr_of(token, err)  # the builder's report follows the command's own stderr
        code, _, _, timed_out = self.agent.run(argv, env, cwd, stdin, timeout, out=out, err=split)
        self.killed_by = self.agent.killed_by
        self.copied.pull(token, split)
        return code, timed_out

    # --- files outside /work ---------------------------------------------
    def _stat_outside(self, path: PurePosixPath) -> Optional[FileInfo]:
        code, out, err, _ = self.agent.run([str(TOOLS / "stat"), "-c", "%f|%s|%u|%g", str(path)], {}, WORKDIR)
        if code:
            if b"No such file" in err:
                return None
            raise BuildEnvError(f"cannot look at {path} in {self.name}: {err.decode(errors='replace').strip()}")
        mode, size, uid, gid = out.decode().strip().split("|")
        return FileInfo(mode=int(mode, 16), size=int(size), uid=int(uid), gid=int(gid))

    def _read_outside(self, path: PurePosixPath) -> bytes:
        code, out, err, _ = self.agent.run([str(TOOLS / "cat"), str(path)], {}, WORKDIR)
        if code:
            raise FileNotFoundError(f"{path} cannot be read in {self.name}: {err.decode(errors='replace').strip()}")
        return out

    def _put_outside(self, src: Path, target: PurePosixPath) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", dereference=True) as archive:
            archive.add(str(src), arcname=target.name)
        self.agent.unpack(buffer.getvalue(), target.parent)

    def _get_outside(self, source: PurePosixPath, dest: Path) -> None:
        """A tar of `source`, written to a file as it comes (never whole in memory), then extracted safely."""
        with tempfile.TemporaryFile() as spool:
            code, _, err, _ = self.agent.exchange(
                [str(TOOLS / "sh"), "-c", f'cd "$1" && exec {TOOLS}/tar -c -f - "$2"', "sh", str(source.parent),
                 source.name], None, None, "", sink=spool)
            if code:
                raise FileNotFoundError(f"get(): {source} cannot be copied from {self.name}: "
                                        f"{err.decode(errors='replace').strip()}")
            spool.seek(0)
            extract_as(spool, source, dest, self.name)


class PodChannel:
    """A copied workspace's side in a pod (engine/copied.py's Channel): the agent, over the exec stream."""

    def __init__(self, env: PodEnv) -> None:
        self.env = env

    def unpack(self, archive: bytes) -> None:
        self.env.agent.unpack(archive, PurePosixPath("/"))

    def run(self, argv: list[str], environment: dict[str, str]) -> bytes:
        return self.env.agent.run(argv, environment, WORKDIR)[2]
