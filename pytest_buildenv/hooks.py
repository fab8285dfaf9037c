"""Hooks other packages implement (registered with pytest_addhooks, as xdist does for schedulers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .registry import Registry


def pytest_buildenv_register_kinds(registry: Registry) -> None:
    """Add kinds to this run, e.g. ``registry.add("ssh", Entry("my_pkg.ssh_kind", fixtures=("ssh_host",)))``.

    The module named must expose ``KIND = KindSpec(...)`` (see pytest_buildenv.registry);
    its fixtures are the package's own, opening environments with
    ``pytest_buildenv.plugin.open_environment(request, "ssh")``.
    """
