"""The handle's contract, written once and run on every enabled kind (ids [local], [container], ...).

The main CI stage runs it on local, container and dind; the VM stage on vm
(`-o buildenv_config=tests/data/vm/contract.yaml`, clones reset by snapshot).
What only one kind does is tested in that kind's own file.
"""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from pytest_buildenv import BuildCommandError, CommandTimeout


def test_string_runs_through_sh_and_list_runs_as_is(buildenv):
    assert buildenv.run("echo $((6 * 7)) | tr 4 X").stdout == "X2\n"
    assert buildenv.run(["echo", "$HOME", "a b"]).stdout == "$HOME a b\n"


def test_result_fields_and_separate_streams(buildenv):
    result = buildenv.run("echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr, result.ok) == (3, "out\n", "err\n", False)
    assert result.duration > 0


def test_check_raises_with_output_tail(buildenv):
    with pytest.raises(BuildCommandError) as raised:
        buildenv.run("for i in $(seq 1 100); do echo line$i; done; echo 'cc: error: boom' >&2; exit 2", check=True)
    message = str(raised.value)
    assert message.splitlines()[0].startswith("command ") and "exited 2" in message.splitlines()[0]
    assert "line100" in message and "line1\n" not in message and "cc: error: boom" in message
    assert raised.value.result.exit_code == 2
    assert buildenv.run("true", check=True).ok


def test_timeout_kills_the_command_and_everything_it_started(buildenv):
    seconds = random.randint(10_000, 99_999)  # a process no other test (or xdist worker) runs
    with pytest.raises(CommandTimeout, match=r"timed out after 1 s") as raised:
        buildenv.run(f"sleep {seconds} & echo started; sleep {seconds}", timeout=1)
    assert raised.value.result.timed_out and raised.value.result.stdout == "started\n"
    survivors = buildenv.run(
        f"for d in /proc/[0-9]*; do tr '\\0' ' ' < $d/cmdline 2>/dev/null; echo; done | grep -c '^sleep {seconds}' || true")
    assert survivors.stdout.strip() == "0"


def test_large_output_is_kept_whole_up_to_the_output_limit(buildenv):
    result = buildenv.run("seq 1 200000")  # 1.3 MB, under the default 4 MiB
    assert result.stdout.count("\n") == 200000 and result.stdout.endswith("200000\n")
    past = buildenv.run("seq 1 1000000")  # 6.9 MB: its head and tail, and where the whole is
    assert past.stdout.startswith("1\n2\n") and past.stdout.endswith("999999\n1000000\n")
    assert "bytes of output left out here (output_limit 4194304); the whole is in " in past.stdout


def test_env_cwd_and_workdir(buildenv):
    buildenv.run("mkdir -p sub", check=True)
    result = buildenv.run("echo $GREETING; pwd", env={"GREETING": "hi"}, cwd="sub")
    assert result.stdout == f"hi\n{buildenv.workdir}/sub\n"
    assert buildenv.run("pwd").stdout == f"{buildenv.workdir}\n"


def test_put_get_and_artifact_of_text_and_binary(buildenv, tmp_path):
    payload = os.urandom(100_000)
    (tmp_path / "blob.bin").write_bytes(payload)
    (tmp_path / "notes.txt").write_text("ünïcode text\n")
    os.chmod(tmp_path / "blob.bin", 0o750)
    landed = buildenv.put(tmp_path / "blob.bin", "in/blob.bin")
    buildenv.put(tmp_path / "notes.txt", "in/notes.txt")
    assert str(landed) == f"{buildenv.workdir}/in/blob.bin"
    art = buildenv.artifact("in/blob.bin")
    assert (art.exists, art.is_file, art.size, art.mode & 0o700, art.executable) == (True, True, len(payload), 0o700, True)
    assert art.sha256 == hashlib.sha256(payload).hexdigest() and art.read_bytes() == payload
    assert buildenv.run(["sha256sum", "in/blob.bin"], check=True).stdout.split()[0] == art.sha256
    assert buildenv.artifact("in/notes.txt").read_text() == "ünïcode text\n"
    back = buildenv.get("in", tmp_path / "back")
    assert (back / "blob.bin").read_bytes() == payload and (back / "notes.txt").read_text() == "ünïcode text\n"


def test_files_the_build_makes_are_the_users(buildenv):
    buildenv.run("echo made > made.txt && chmod 640 made.txt", check=True)
    art = buildenv.artifact("made.txt")
    uid, gid = (int(n) for n in buildenv.run("id -u; id -g", check=True).stdout.split())
    host = buildenv.host_path("made.txt")
    if host is None:
        assert (art.uid, art.gid, art.mode, art.read_text()) == (uid, gid, 0o640, "made\n")
        return
    # The workspace is the host's: the file there is the invoking user's, whom the builder runs as
    # (or root in the builder is, on rootless Docker).
    assert (art.uid, art.gid, art.mode, art.read_text()) == (os.getuid(), os.getgid(), 0o640, "made\n")
    assert (host.stat().st_uid, host.stat().st_gid) == (os.getuid(), os.getgid())
    assert (uid, gid) in {(os.getuid(), os.getgid()), (0, 0)}


def test_missing_artifact(buildenv):
    art = buildenv.artifact("nope")
    assert not art.exists and not art.is_file and not art.executable
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        art.size  # noqa: B018


def test_transcript_records_every_command_in_order(buildenv):
    buildenv.run("echo one")
    buildenv.run(["sh", "-c", "echo two >&2; exit 1"])
    assert [(r.command, r.exit_code) for r in buildenv.transcript] == [("echo one", 0), ("sh -c echo two >&2; exit 1", 1)]
    text = buildenv.transcript.render()
    assert text.index("echo one") < text.index("two") and "exit 1" in text


def test_missing_executable_is_exit_127(buildenv):
    result = buildenv.run(["definitely-not-a-program"])
    assert result.exit_code == 127 and "definitely-not-a-program" in result.stderr


def test_a_program_that_exits_127_silently_is_left_silent(buildenv):
    """Where an engine loses a missing program's words, the plugin says them; never for one that is there."""
    result = buildenv.run(["sh", "-c", "exit 127"])
    assert result.exit_code == 127 and result.stderr == "" and result.stdout == ""


def test_host_is_a_testinfra_host_bound_to_the_environment(buildenv):
    uid = int(buildenv.run("id -u", check=True).stdout)
    buildenv.run("mkdir -p made && echo hi > made/file", check=True)
    host = buildenv.host
    assert host.user().uid == uid
    assert host.file(f"{buildenv.workdir}/made").is_directory
    assert host.file(f"{buildenv.workdir}/made/file").content_string == "hi\n"
    assert host.run("echo $((2 + 3))").stdout == "5\n"
    assert host.run("exit 3").rc == 3
    assert any("echo $((2 + 3))" in r.command for r in buildenv.transcript)  # its commands are the build's
