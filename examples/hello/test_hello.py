"""The seed's hello world, built and run in whatever environments are enabled.

    pytest examples/hello                                 # on the host (local)
    pytest examples/hello --buildenv=local,container      # and in a builder container
    pytest examples/hello --buildenv=pod                  # in a builder pod (KUBECONFIG's cluster)
"""

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.local
@pytest.mark.container(image="buildenv-test/gcc:1")
@pytest.mark.pod(image="buildenv-test/gcc:1")
def test_hello_world_builds_and_runs(buildenv):
    buildenv.put(HERE / "helloworld.c", "helloworld.c")
    buildenv.put(HERE / "Makefile", "Makefile")

    buildenv.run("make helloworld_app", check=True)

    app = buildenv.artifact("helloworld_app")
    assert app.is_file and app.executable
    assert (app.uid, app.gid) == (os.getuid(), os.getgid())  # owned by you, not root
    assert buildenv.run("./helloworld_app", check=True).stdout == "Hello, world!\n"
