"""Everything on the engine that carries our session label, for the reaper (containers first, network
holders last among them, so that images free up last). Volumes shadowing KIND clusters are the kind kind's to find."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Callable, Optional
from collections.abc import Iterator

from . import daemon_errors
from ..events import emit
from ..naming import ANY_OWNED, LABEL_CLUSTER, LABEL_KIND, Labelled, session_filter

if TYPE_CHECKING:
    import docker


def quietly(action: Callable[[], object], client: docker.DockerClient) -> Callable[[], None]:
    """Run a removal; another reaper (a concurrent session) may be removing the same thing: gone is gone."""
    import docker as sdk

    def run() -> None:
        try:
            with daemon_errors("removing a labelled resource", client):
                action()
        except sdk.errors.NotFound:
            pass
        except sdk.errors.APIError as exc:
            if exc.status_code != 409 and "in progress" not in str(exc):
                raise
            emit("reap-conflict", "resource", str(exc)[:300])
    return run


def labelled_resources(client: docker.DockerClient, session: Optional[str] = None) -> Iterator[Labelled]:
    filters = session_filter(session) if session else ANY_OWNED
    api = client.api
    with daemon_errors("listing labelled resources", client):
        containers, networks = api.containers(all=True, filters=filters), api.networks(filters=filters)
        volumes, images = api.volumes(filters=filters).get("Volumes") or [], api.images(filters=filters)
    # Network holders last: Podman refuses to remove one while a builder still joins its namespace (a
    # crashed worker's builders and spares are swept with their holders, all at once).
    for c in sorted(containers, key=lambda c: (c.get("Labels") or {}).get(LABEL_KIND) == "netns"):
        yield Labelled("container", c["Id"], c["Names"][0].lstrip("/"), c["Labels"] or {},
                       quietly(partial(api.remove_container, c["Id"], force=True, v=True), client))
    for n in networks:
        yield Labelled("network", n["Id"], n["Name"], n.get("Labels") or {},
                       quietly(partial(api.remove_network, n["Id"]), client))
    for v in volumes:
        labels = v.get("Labels") or {}
        if LABEL_CLUSTER not in labels:
            yield Labelled("volume", v["Name"], v["Name"], labels,
                           quietly(partial(api.remove_volume, v["Name"], force=True), client))
    for i in images:
        name = (i.get("RepoTags") or [i["Id"]])[0]
        yield Labelled("image", i["Id"], name, i.get("Labels") or {},
                       quietly(partial(api.remove_image, i["Id"], force=True), client))
