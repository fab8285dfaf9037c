"""Image hygiene on real images built here: the silly-secrets leak, a clean image, layer sizes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import docker
import pytest

from pytest_buildenv.hygiene import ChecksumMismatch, layer_report, leaked_files, verify_sha256
from pytest_buildenv.engine.images import BuildSpec, ImageBuilder
from pytest_buildenv.naming import Owner, new_session_id
from pytest_buildenv.reaper import reap_kinds

DATA = Path(__file__).parent / "data" / "hygiene"


@pytest.fixture(scope="module")
def build():
    client = docker.from_env()
    builder = ImageBuilder(client, Owner(new_session_id()))
    yield lambda name: builder.build(BuildSpec(DATA / name, DATA))
    reap_kinds(["container"], session=builder.owner.session, force=True)


def test_silly_secrets_are_flagged_with_the_layer_that_holds_them(build):
    image = build("Dockerfile.silly_secrets")
    leaks = leaked_files(image)
    assert [(leak.path, leak.deleted_in, leak.secret_looking) for leak in leaks] == [("tmp/secret.txt", 3, True)]
    leak = leaks[0]
    assert leak.layer == 1 and leak.size == len("hunter2-api-token\n")  # layer 0 is the busybox base
    assert "deleted in layer 3 but still in layer 1" in str(leak)


def test_clean_image_is_not_flagged(build):
    assert leaked_files(build("Dockerfile.clean")) == []


def test_secret_looking_file_left_in_place(build):
    leaks = leaked_files(build("Dockerfile.key_left_in"))
    assert [(leak.path, leak.deleted_in, leak.secret_looking) for leak in leaks] == [("root/.ssh/id_ed25519", None, True)]


def test_custom_patterns(build):
    leaks = leaked_files(build("Dockerfile.clean"), patterns=["bin"])
    assert [(leak.path, leak.layer, leak.secret_looking) for leak in leaks] == [("opt/tool/bin", 1, True)]


def test_layer_report_counts_and_sizes(build):
    image = build("Dockerfile.silly_secrets")
    report = layer_report(image)
    assert report.count == 4  # base + ADD + RUN + RUN
    inspected = docker.from_env().images.get(image).attrs["Size"]
    assert report.total_size == inspected
    assert any("rm /tmp/secret.txt" in layer.created_by for layer in report.layers)


def test_verify_sha256(tmp_path):
    payload = tmp_path / "tool.tar.gz"
    payload.write_bytes(b"payload")
    good = hashlib.sha256(b"payload").hexdigest()
    assert verify_sha256(payload, good) == payload
    with pytest.raises(ChecksumMismatch, match="do not use this payload"):
        verify_sha256(payload, "0" * 64)
