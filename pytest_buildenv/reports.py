"""What a failing test leaves for a human: its transcript in the report, its workspace on disk."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Iterable

from .backends.base import BuildEnv

SECTION = "buildenv transcript"


def transcript_text(envs: Iterable[BuildEnv]) -> str:
    parts = []
    for env in envs:
        parts.append(f"=== {env.kind} environment, workspace {env.workspace}\n{env.transcript.render() or '(no commands run)'}")
    return "\n".join(parts)


def sanitize_test_id(nodeid: str) -> str:
    return re.sub(r"[^\w.-]+", "_", nodeid).strip("_")[:180]


def save_artifacts(envs: Iterable[BuildEnv], nodeid: str, root: Path) -> Path:
    """Copy each environment's workspace and transcript to ROOT/<test id>/; return that directory."""
    target = root / sanitize_test_id(nodeid)
    target.mkdir(parents=True, exist_ok=True)
    for number, env in enumerate(envs):
        label = env.kind if number == 0 else f"{env.kind}-{number}"
        shutil.copytree(env.workspace, target / f"workspace-{label}", symlinks=True, dirs_exist_ok=True)
        (target / f"transcript-{label}.txt").write_text(env.transcript.render() + "\n")
    return target
