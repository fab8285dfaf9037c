"""Masked secrets: the `secrets` setting gives commands their variables and build steps their mounts, and no
file the session writes, nor its terminal, ever holds a value: each occurrence reads [MASKED]."""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
from pathlib import Path

import pytest

from pytest_buildenv import masking
from pytest_buildenv.naming import Owner, new_session_id
from pytest_buildenv.reaper import reap_kinds
from pytest_buildenv.services import Services
from pytest_buildenv.settings import SettingError

DATA = Path(__file__).parent / "data" / "secrets"

LEAKY = """
import hashlib, os, pytest

def test_the_command_has_it(buildenv):
    seen = buildenv.run('printf %s "$API_TOKEN" | sha256sum', check=True).stdout.split()[0]
    assert seen == os.environ["EXPECTED_SHA"]
    shown = buildenv.run('echo "out $API_TOKEN"; echo "err $API_TOKEN" >&2', check=True)
    assert (shown.stdout, shown.stderr) == ("out [MASKED]\\n", "err [MASKED]\\n")

def test_a_careless_failure(buildenv):
    buildenv.run(f'echo "leaking $API_TOKEN"; echo "{os.environ["BUILDENV_TEST_SECRET"]}" >&2; exit 3', check=True)
"""


def reap_on(endpoint, session: str) -> None:
    reap_kinds(["container"], services=Services(Owner(new_session_id()), endpoint=endpoint), session=session, force=True)


def written_files(*roots: Path) -> list[Path]:
    return [path for root in roots for path in root.rglob("*") if path.is_file() and not path.is_symlink()]


def test_no_file_the_session_wrote_holds_a_secret(pytester, suite_endpoint, monkeypatch):
    value = f"buildenv-secret-{secrets.token_hex(12)}"
    monkeypatch.setenv("BUILDENV_TEST_SECRET", value)
    monkeypatch.setenv("EXPECTED_SHA", hashlib.sha256(value.encode()).hexdigest())
    state = pytester.path / "state"  # the session's own files (build logs, records): TMPDIR's pytest-buildenv-UID
    state.mkdir()
    monkeypatch.setenv("TMPDIR", str(state))
    monkeypatch.setenv("PYTEST_BUILDENV_EVENTS", str(pytester.path / "events.jsonl"))
    (pytester.path / "image").mkdir()  # its own context: the project's files change as the session writes them
    shutil.copy(DATA / "Dockerfile", pytester.path / "image" / "Dockerfile")
    pytester.makefile(".yaml", buildenv="local: {secrets: {API_TOKEN: BUILDENV_TEST_SECRET}}\n"
                                        "container: {secrets: {API_TOKEN: BUILDENV_TEST_SECRET}, dockerfile: image/Dockerfile, "
                                        "build_args: {NONCE: '%s'}}\n" % secrets.token_hex(8))
    pytester.makepyfile(LEAKY)
    result = pytester.runpytest_subprocess("--buildenv=local,container", f"--buildenv-engine={suite_endpoint.url}",
                                           "--junitxml=report.xml", "--buildenv-artifacts=artifacts",
                                           "--buildenv-keep=failed", "-p", "no:cacheprovider")
    out = result.stdout.str() + result.stderr.str()
    session = re.search(r"buildenv: session (\w+):", out)
    assert session, out
    reap_on(suite_endpoint, session.group(1))  # kept (keep=failed): its builder and image
    result.assert_outcomes(passed=2, failed=2)
    assert any(b"sees [MASKED]" in path.read_bytes() for path in written_files(state)), "the careless step ran"
    assert value not in out and "leaking [MASKED]" in out, out
    leaks = [str(path) for path in written_files(pytester.path) if value.encode() in path.read_bytes()]
    assert leaks == [], leaks
    assert list((pytester.path / "artifacts").rglob("*")), "the failures' artifacts were saved (and searched)"
    assert "[MASKED]" in (pytester.path / "report.xml").read_text()


def test_masking_takes_each_line_of_a_key_file_and_leaves_short_words_alone():
    key = "-----BEGIN KEY-----\nc2VjcmV0LWxpbmUtb25l\nc2VjcmV0LWxpbmUtdHdv\nab\n-----END KEY-----\n"
    masking.add(key)
    assert masking.mask(f"cat: {key}") == "cat: [MASKED]"
    assert masking.mask("only c2VjcmV0LWxpbmUtdHdv, ab") == "only [MASKED], ab"


def test_a_secret_whose_variable_is_unset_is_one_line_at_setup(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.local(secrets={"API_TOKEN": "BUILDENV_TEST_NEVER_SET"})
        def test_x(buildenv):
            pass
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*secret 'API_TOKEN' comes from the environment variable BUILDENV_TEST_NEVER_SET, "
                                 "which is not set; export BUILDENV_TEST_NEVER_SET*"])
    assert "Traceback" not in result.stdout.str()


@pytest.mark.parametrize("name", ["a token", "api-token", "1st"])
def test_a_secret_name_that_is_no_variable_is_refused_naming_the_key(name):
    from pytest_buildenv.kinds.local import LocalSettings

    with pytest.raises(SettingError, match=rf"^secrets name '{name}' is not a variable's name"):
        LocalSettings(secrets={name: "TOKEN"})
