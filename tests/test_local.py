"""The `local` kind's own behaviour; what every kind does is in test_contract.py."""

from __future__ import annotations


import pytest

from pytest_buildenv import ConfigError
from pytest_buildenv.kinds.local import LocalEnv


@pytest.fixture
def env(tmp_path):
    return LocalEnv(tmp_path)


def test_workspace_that_does_not_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"workspace .*/gone does not exist; create the directory"):
        LocalEnv(tmp_path / "gone")


def test_put_of_missing_source(env, tmp_path):
    with pytest.raises(ConfigError, match="does not exist on the host"):
        env.put(tmp_path / "missing.c", "x.c")
