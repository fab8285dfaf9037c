"""env.reproduce(): the same build in two fresh environments, the second varied, artifacts compared."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_buildenv import ConfigError

GCC = "buildenv-test/gcc:1"
HELLO = Path(__file__).parent.parent / "examples" / "hello" / "helloworld.c"


def with_sources(env):
    env.put(HELLO, "helloworld.c")
    return env


@pytest.mark.local
@pytest.mark.container(image=GCC)
def test_a_build_with_a_prefix_map_is_identical_under_every_variation(buildenv):
    report = with_sources(buildenv).reproduce("gcc -O2 -g -ffile-prefix-map=$PWD=. -o hello helloworld.c",
                                              artifacts=["hello"])
    assert report.identical and report.differences == [], str(report)
    assert report.varied == ("path", "time", "umask", "locale", "tz")
    assert str(report).startswith("reproduce 'gcc -O2 -g -ffile-prefix-map=$PWD=. -o hello helloworld.c', varying "
                                  "path, time, umask, locale, tz: reproducible")
    assert not buildenv.artifact("hello").exists  # the test's own environment is left as it was


@pytest.mark.local
@pytest.mark.container(image=GCC)
def test_a_timestamp_is_reported_naming_the_file(buildenv):
    report = with_sources(buildenv).reproduce('echo "built at $(date +%s)" > stamp.txt && cp helloworld.c copy.c',
                                              artifacts=["stamp.txt", "copy.c"])
    assert not report.identical and report.differences == ["stamp.txt"]
    text = str(report)
    assert text.splitlines()[0].endswith("NOT reproducible: 1 of 2 artifacts differ (stamp.txt)")
    assert repr(report) == text.splitlines()[0]  # what pytest shows for `assert report.identical, report`
    assert any(line.strip().startswith("DIFFERS stamp.txt:") for line in text.splitlines())
    assert any(line.strip().startswith("same    copy.c:") for line in text.splitlines())


@pytest.mark.local
@pytest.mark.container(image=GCC)
def test_debug_info_without_a_prefix_map_differs_under_path(buildenv):
    build = "gcc -g -c helloworld.c -o hello.o"
    assert with_sources(buildenv).reproduce(build, artifacts=["hello.o"], vary=["path"]).differences == ["hello.o"]
    others = buildenv.reproduce(build, artifacts=["hello.o"], vary=["umask", "tz"])
    if buildenv.kind == "local":  # two host directories: the path varies whatever was asked, and the report says so
        assert others.varied == ("umask", "tz", "path (this kind cannot keep it)") and not others.identical
    else:
        assert others.varied == ("umask", "tz") and others.identical


def test_an_unsupported_variation_is_one_line(buildenv):
    with pytest.raises(ConfigError, match=rf"^reproduce\(\) cannot vary 'kernel' on the {buildenv.kind} kind; "
                                          r"it varies path, time, umask, locale, tz$"):
        buildenv.reproduce("true", artifacts=["x"], vary=["kernel"])
