"""progress.follow: the step lines of a log another process writes, passed on while it writes them."""

from __future__ import annotations

import subprocess
import sys

from pytest_buildenv.progress import KIND_STEP, VAGRANT_STEP, follow

# A writer as Vagrant is one: step lines, its provisioner's output under them, a line written in two parts.
WRITER = r"""
import sys, time
with open(sys.argv[1], "a") as log:
    for part in ["==> golden: Importing base box\n", "    golden: provisioner output\n", "==> golden: Wait",
                 "ing for SSH\n", "==> golden: Running provisioner: shell...\n"]:
        log.write(part)
        log.flush()
        time.sleep(0.3)
"""


def test_follow_passes_on_new_step_lines_whole_and_in_order(tmp_path):
    log = tmp_path / "provision.log"
    log.write_text("==> golden: from an earlier run\n")
    seen: list[str] = []
    with follow(log, seen.append, VAGRANT_STEP, every=0.1):
        subprocess.run([sys.executable, "-c", WRITER, str(log)], check=True)
    assert seen == ["==> golden: Importing base box", "==> golden: Waiting for SSH",
                    "==> golden: Running provisioner: shell..."]


def test_follow_waits_for_a_file_not_yet_there(tmp_path):
    log = tmp_path / "later.log"
    seen: list[str] = []
    with follow(log, seen.append, KIND_STEP, every=0.1):
        log.write_text("Creating cluster \"x\" ...\n • Preparing nodes 📦  ...\n ✓ Preparing nodes 📦\n")
    assert seen == ["• Preparing nodes 📦  ...", "✓ Preparing nodes 📦"]


def test_kinds_step_lines_and_no_others():
    assert KIND_STEP.search(" ✓ Ensuring node image (kindest/node:v1.34.4) 🖼")
    assert KIND_STEP.search(" ✗ Starting control-plane 🕹️")
    assert not KIND_STEP.search("Set kubectl context to \"kind-x\"")
    assert not VAGRANT_STEP.search("    golden: ==> not a step")
