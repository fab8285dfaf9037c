"""What a failing test leaves for a human: its transcript in the report, its workspace on disk."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from collections.abc import Iterable
from typing import Any

from .errors import BuildEnvError
from .handle import BuildEnv

SECTION = "buildenv transcript"


def transcript_text(envs: Iterable[BuildEnv]) -> str:
    parts = []
    for env in envs:
        parts.append(f"=== {env.kind} environment, workspace {env.workspace}\n{env.transcript.render() or '(no commands run)'}")
    return "\n".join(parts)


# Frames of ours and of contextlib (our `with` blocks that turn a library's error into our one line).
_OWN_FRAMES = (str(Path(__file__).parent), contextlib.__file__)


def shorten(excinfo: Any) -> None:
    """A failure we raise shows the test's own line and our one line: the frames of ours below the test,
    and the chain (the library's errors, whose words the line already gives), are left out of the report.
    `-v` or `--fulltrace` shows them (plugin.py)."""
    if not excinfo.errisinstance(BuildEnvError):
        return
    error = excinfo.value
    error.__cause__ = None
    error.__suppress_context__ = True
    # Out of the traceback's own chain (tb_next is writable): pytest rebuilds its view from it.
    kept, tb = [], excinfo.tb
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_OWN_FRAMES):
            kept.append(tb)
        tb = tb.tb_next
    if not kept:
        return
    for entry, after in zip(kept, [*kept[1:], None]):
        entry.tb_next = after
    excinfo.traceback = type(excinfo.traceback)(kept[0])


def sanitize_test_id(nodeid: str) -> str:
    return re.sub(r"[^\w.-]+", "_", nodeid).strip("_")[:180]


def save_artifacts(envs: Iterable[BuildEnv], nodeid: str, root: Path) -> Path:
    """Copy each environment's workdir (as `get` fetches it: a VM's from the guest) and transcript
    to ROOT/<test id>/; return that directory."""
    target = root / sanitize_test_id(nodeid)
    target.mkdir(parents=True, exist_ok=True)
    for number, env in enumerate(envs):
        label = env.kind if number == 0 else f"{env.kind}-{number}"
        workspace = target / f"workspace-{label}"
        try:
            env.get(env.workdir, workspace)
        except (OSError, BuildEnvError) as exc:
            workspace.mkdir(exist_ok=True)
            (workspace.parent / f"workspace-{label}.missing.txt").write_text(
                f"{env.workdir} could not be fetched from the {env.kind} environment: {exc}\n")
        (target / f"transcript-{label}.txt").write_text(env.transcript.render() + "\n")
    return target
