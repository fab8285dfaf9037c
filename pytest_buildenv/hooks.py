"""Hooks other packages implement (registered with pytest_addhooks, as xdist does for schedulers).

Marked with pluggy's markers for "pytest", so that the CLI (``python -m pytest_buildenv``), which
runs no pytest session, finds the same implementations through pytest's entry points.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .registry import Registry

hookspec = pluggy.HookspecMarker("pytest")
hookimpl = pluggy.HookimplMarker("pytest")


@hookspec
def pytest_buildenv_register_kinds(registry: Registry) -> None:
    """Add kinds to this run, e.g. ``registry.add("ssh", Entry("my_pkg.ssh_kind", fixtures=("ssh_host",)))``.

    The module named must expose ``KIND = KindSpec(...)`` (see pytest_buildenv.registry);
    its fixtures are the package's own, opening environments with
    ``pytest_buildenv.plugin.open_environment(request, "ssh")``. The built-in kinds are
    registered the same way (pytest_buildenv.kinds).
    """
