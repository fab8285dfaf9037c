"""The handle on the `local` kind: what every kind must do, on the host."""

from __future__ import annotations

import os

import pytest

from pytest_buildenv import BuildCommandError, CommandTimeout, ConfigError
from pytest_buildenv.kinds.local import LocalEnv


@pytest.fixture
def env(tmp_path):
    return LocalEnv(tmp_path)


def test_string_runs_through_sh_and_list_runs_as_is(env):
    assert env.run("echo $((6 * 7)) | tr 4 X").stdout == "X2\n"
    assert env.run(["echo", "$HOME", "a b"]).stdout == "$HOME a b\n"


def test_result_fields_and_separate_streams(env):
    result = env.run("echo out; echo err >&2; exit 3")
    assert (result.exit_code, result.stdout, result.stderr, result.ok) == (3, "out\n", "err\n", False)
    assert result.duration > 0


def test_check_raises_with_output_tail(env):
    with pytest.raises(BuildCommandError) as raised:
        env.run("for i in $(seq 1 100); do echo line$i; done; exit 2", check=True)
    message = str(raised.value)
    assert message.splitlines()[0].startswith("command 'for i in")
    assert "exited 2" in message and "line100" in message and "line1\n" not in message
    assert raised.value.result.exit_code == 2


def test_timeout_kills_the_command_and_its_children(env, tmp_path):
    with pytest.raises(CommandTimeout) as raised:
        env.run("sleep 30 & echo started; sleep 30", timeout=0.5)
    assert raised.value.result.timed_out and raised.value.result.stdout == "started\n"
    assert "timed out after 0.5 s" in str(raised.value)
    # nothing of the command survives: no sleep owned by us whose cwd is the workspace
    survivors = [p for p in os.listdir("/proc") if p.isdigit() and _cwd(p) == str(env.workspace)]
    assert survivors == []


def _cwd(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def test_large_output_is_kept_whole(env):
    result = env.run("seq 1 200000")
    assert result.stdout.count("\n") == 200000 and result.stdout.endswith("200000\n")


def test_env_cwd_and_workdir(env):
    (env.workspace / "sub").mkdir()
    result = env.run("echo $GREETING; pwd", env={"GREETING": "hi"}, cwd="sub")
    assert result.stdout == f"hi\n{env.workspace}/sub\n"
    assert str(env.workdir) == str(env.workspace)


def test_put_get_and_artifact_of_binary_file(env, tmp_path_factory):
    payload = bytes(range(256)) * 64
    src = tmp_path_factory.mktemp("src") / "blob.bin"
    src.write_bytes(payload)
    os.chmod(src, 0o750)
    landed = env.put(src, "in/blob.bin")
    art = env.artifact("in/blob.bin")
    assert str(landed) == f"{env.workspace}/in/blob.bin"
    assert (art.exists, art.is_file, art.size, art.mode, art.executable) == (True, True, len(payload), 0o750, True)
    assert (art.uid, art.gid) == (os.getuid(), os.getgid())
    import hashlib
    assert art.sha256 == hashlib.sha256(payload).hexdigest() and art.read_bytes() == payload
    back = env.get("in/blob.bin", tmp_path_factory.mktemp("out") / "copy.bin")
    assert back.read_bytes() == payload


def test_missing_artifact(env):
    art = env.artifact("nope")
    assert not art.exists and not art.is_file and not art.executable
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        art.size


def test_transcript_records_every_command_in_order(env):
    env.run("echo one")
    env.run(["sh", "-c", "echo two >&2; exit 1"])
    assert [(r.command, r.exit_code) for r in env.transcript] == [("echo one", 0), ("sh -c echo two >&2; exit 1", 1)]
    text = env.transcript.render()
    assert text.index("echo one") < text.index("two") and "exit 1" in text


def test_missing_executable_is_exit_127(env):
    result = env.run(["definitely-not-a-program"])
    assert result.exit_code == 127 and "definitely-not-a-program" in result.stderr


def test_workspace_that_does_not_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"workspace .*/gone does not exist; create the directory"):
        LocalEnv(tmp_path / "gone")


def test_put_of_missing_source(env, tmp_path):
    with pytest.raises(ConfigError, match="does not exist on the host"):
        env.put(tmp_path / "missing.c", "x.c")
