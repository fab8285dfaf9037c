"""What a Dockerfile's text says that a builder may not take, and the one line an engine's refusal becomes.

Read by images.py before a build on a builder without BuildKit (so a Dockerfile that needs it says so
at once, not as the classic builder's puzzling words), and after a refusal from any builder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple, Optional

from ..errors import ConfigError, ImageBuildError, tail

REFERENCE = "https://docs.docker.com/reference/dockerfile/"

# `COPY <<EOF /x`, `RUN <<-"EOT" sh`: a heredoc opens on an instruction line (Dockerfile syntax 1.4).
_HEREDOC = re.compile(r"^\s*(RUN|COPY|ADD)\b.*<<-?[\"']?[A-Za-z_]\w*", re.IGNORECASE)
_MOUNT = re.compile(r"^\s*RUN\b.*--mount=(\S*)", re.IGNORECASE)
_SYNTAX = re.compile(r"^#\s*syntax\s*=\s*(\S+)", re.IGNORECASE)
# BuildKit's frontends: "dockerfile parse error line 6: ..." (v0.8), "dockerfile parse error on line 6: ..."
# (newer); the classic builder: "Dockerfile parse error line 6: ...".
_PARSE_ERROR = re.compile(r"dockerfile parse error (?:on )?line (\d+): (.+)", re.IGNORECASE)
# buildah (Podman): `Build error: Unknown instruction: "MADE" &imagebuilder.Step{... Original:"MADE IT"}`.
_BUILDAH_UNKNOWN = re.compile(r'(Unknown instruction: "[^"]*").*Original:"((?:[^"\\]|\\.)*)"')


class Feature(NamedTuple):
    line: int
    what: str


def buildkit_features(text: str) -> list[Feature]:
    """The lines that need BuildKit: mounts on RUN, heredocs, a `# syntax=` frontend."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        mount, syntax = _MOUNT.match(line), _SYNTAX.match(line)
        if _HEREDOC.match(line):
            found.append(Feature(number, "a heredoc (<<)"))
        elif mount:
            found.append(Feature(number, f"RUN --mount={mount.group(1).split(',')[0]}"))
        elif number == 1 and syntax:
            found.append(Feature(number, f"a # syntax= frontend ({syntax.group(1)})"))
    return found


def heredoc_line(text: str) -> Optional[int]:
    return next((f.line for f in buildkit_features(text) if f.what.startswith("a heredoc")), None)


def has_syntax_line(text: str) -> bool:
    return any(_SYNTAX.match(line) for line in text.splitlines()[:1])


def parse_error(words: str, text: str) -> Optional[tuple[int, str]]:
    """(line, the engine's words) when an engine's message is a Dockerfile parse error; `text` is the
    Dockerfile, where buildah's message (which names the line's text, not its number) is looked up."""
    found = _PARSE_ERROR.search(words)
    if found:
        return int(found.group(1)), found.group(2).strip()
    unknown = _BUILDAH_UNKNOWN.search(words)
    if unknown:
        original = unknown.group(2).strip()
        lines = [n for n, line in enumerate(text.splitlines(), 1) if line.strip() == original]
        return (lines[0] if lines else 0), unknown.group(1)
    return None


def refusal(dockerfile: Path, line: int, words: str, engine: str) -> str:
    """One line for a Dockerfile an engine refused: where, the engine's words, and the remedy."""
    text = dockerfile.read_text(errors="replace")
    heredoc = heredoc_line(text)
    if heredoc is not None and line >= heredoc:
        remedy = ("heredocs need Dockerfile syntax 1.4 or newer: add a first line `# syntax=IMAGE` naming a newer "
                  "frontend (docker/dockerfile:1, or a local image of one), or use a newer engine")
    else:
        remedy = f"fix that line (the Dockerfile reference: {REFERENCE})"
    return f"{dockerfile}:{line}: {engine} refused the Dockerfile: {words}; {remedy}"


def step_failed(dockerfile: Path, words: str, output: str) -> ImageBuildError:
    """A step of the build failed (a RUN that exited non-zero): the engine's words, then the output's tail."""
    return ImageBuildError(f"docker build of {dockerfile} failed: {words}; fix the failing step "
                           f"(its output follows)\n{tail(output)}")


def refused(dockerfile: Path, words: str, engine: str) -> Optional[ConfigError]:
    """The one error an engine's words become when they are a Dockerfile parse error, else None."""
    parsed = parse_error(words, dockerfile.read_text(errors="replace"))
    return ConfigError(refusal(dockerfile, parsed[0], parsed[1], engine)) if parsed is not None else None


def needs_buildkit(dockerfile: Path, engine: str, fix: str) -> Optional[str]:
    """One line when the Dockerfile needs BuildKit and `engine`'s builder has none, else None."""
    features = buildkit_features(dockerfile.read_text(errors="replace"))
    if not features:
        return None
    first = features[0]
    return (f"{dockerfile}:{first.line}: {first.what} needs BuildKit, and {engine} builds without it "
            f"(the classic builder); {fix}")
