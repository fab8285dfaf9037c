"""`container`: a builder container, workspace at /work, running as the invoking user.

The builder and its manager live in engine/ (builder.py, builders.py), shared with `dind`:
this kind is the plain builder, with the engine's cache volumes listed by doctor.
"""

from __future__ import annotations

from ..engine.builder import WORKDIR, Builder, BuilderSpec, ContainerSettings
from ..engine.builders import Builders, caches_held, engine_check, engine_header, engine_leftovers
from ..registry import KindSpec
from ..services import Services

__all__ = ["WORKDIR", "BuilderSpec", "ContainerEnv", "ContainerSettings"]


class ContainerEnv(Builder):
    """A builder container (see engine/builder.py): `run()`, `artifact()`, `get()`, `put()` and the rest."""

    kind = "container"


def _manager(services: Services) -> Builders:
    return Builders(services.engine, ContainerEnv)


KIND = KindSpec(settings=ContainerSettings, manager=_manager, check=engine_check, leftovers=engine_leftovers,
                inventory=caches_held, header=engine_header)
