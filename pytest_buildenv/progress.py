"""Which step a long wait is on: the lines of a tool's log that name its steps, on the terminal as they come.

Image builds hand their lines over as they read them (engine/images.build_log). Vagrant and kind write
theirs to a file or a pipe we only read at the end; `follow` reads such a file while the tool runs.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

Progress = Callable[[str], None]

# Vagrant's step lines ("==> golden: Waiting for SSH to become available..."); its provisioners'
# own output is indented under the machine's name and stays in the log.
VAGRANT_STEP = re.compile(r"^==> ")
# kind's status lines without a terminal: " • Preparing nodes 📦  ..." as a step starts, " ✓ ..." as it ends.
KIND_STEP = re.compile(r"^ ?[•✓✗] ")


FOLLOWER = "buildenv-progress"  # follow()'s reader thread: the plugin lifts pytest's capture for its lines


@contextlib.contextmanager
def follow(path: Path, progress: Progress, steps: re.Pattern[str], every: float = 0.5) -> Iterator[None]:
    """While the body runs, pass each new line of `path` that `steps` matches to `progress` (what the file
    held before is not new). A line still being written waits for its end; the last lines are read after
    the body, so none is lost to timing."""
    done = threading.Event()
    start = path.stat().st_size if path.exists() else 0

    def read() -> None:
        offset, partial = start, b""
        while True:
            finished = done.wait(every)
            try:
                with path.open("rb") as log:
                    log.seek(offset)
                    data = log.read()
            except FileNotFoundError:
                data = b""
            offset += len(data)
            *lines, partial = (partial + data).split(b"\n")
            for line in lines:
                text = line.decode(errors="replace").rstrip("\r")
                if steps.search(text):
                    progress(text.strip())
            if finished:
                return

    reader = threading.Thread(target=read, name=FOLLOWER, daemon=True)
    reader.start()
    try:
        yield
    finally:
        done.set()
        reader.join(timeout=5)
