"""The flow this plugin exists for: build an app's image, load it into a throwaway KIND cluster,
install its chart with helm, wait until its pods are ready, and reach it over HTTP.

    pytest --buildenv=kind,container examples/kind_app

The image is built by the `container` kind (once per session, from ./Dockerfile: the app is
compiled in its build stage); the cluster is the session's, shared by every xdist worker.
"""

import os
import urllib.request
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).parent
BASES = {"BUILD_BASE": os.environ.get("BUILDENV_EXAMPLE_BASE", "buildenv-test/gcc:1"),
         "RUN_BASE": os.environ.get("BUILDENV_EXAMPLE_RUN_BASE", "buildenv-test/busybox:1")}


@pytest.mark.container(dockerfile="Dockerfile", build_args=BASES)
@pytest.mark.kind
def test_hello_app_answers_from_the_cluster(builder_container, kind_cluster):
    # What was built: a static binary, in the image that ships it.
    app = builder_container.artifact("/usr/local/bin/hello-http")
    assert app.executable and app.size > 0

    kind_cluster.load_image(builder_container.image)
    namespace = f"hello-{uuid.uuid4().hex[:6]}"  # tests of other workers share the cluster
    kind_cluster.helm_install("hello", str(HERE / "chart"), namespace=namespace,
                              values={"image": builder_container.image})
    kind_cluster.wait_ready("deployment", "hello", namespace=namespace)

    with kind_cluster.port_forward("svc/hello", 80, namespace=namespace) as port:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
    assert body == "hello from kind\n"
