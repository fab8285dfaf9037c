"""`python -m pytest_buildenv doctor`: for each kind, usable here or exactly why not, and the fix."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional
from collections.abc import Mapping

from .errors import BuildEnvError
from .kinds import discover
from .naming import Owner, new_session_id
from .registry import Registry
from .services import Services


def run_doctor(kinds_text: str = "", write: Callable[[str], None] = print,
               defaults: Optional[Mapping[str, Any]] = None, registry: Optional[Registry] = None,
               services: Optional[Services] = None) -> int:
    """Print each kind's check; exit 1 if a kind in `kinds_text` is unusable, 2 for an unknown one."""
    registry = registry or discover()
    services = services or Services(Owner(new_session_id()))
    required = [k.strip() for k in kinds_text.split(",") if k.strip()]
    unknown = [k for k in required if k not in registry]
    if unknown:
        write(f"unknown kind {unknown[0]!r}; choose from {', '.join(registry.names)}")
        return 2
    failed = []
    for kind in registry:
        check = registry.check(kind, services, defaults)
        write(f"{kind:9} {'available' if check.ok else 'unavailable'}: {check.detail}")
        if check.fix and not check.ok:
            write(f"{'':9} fix: {check.fix}")
        inventory = registry.spec(kind).inventory
        if check.ok and inventory is not None:
            write(f"{'':9} {_quietly(partial(inventory, services))}")
        if kind in required and not check.ok:
            failed.append(kind)
    if failed:
        write(f"required but unavailable: {', '.join(failed)}")
        return 1
    return 0


def _quietly(inventory: Callable[[], str]) -> str:
    try:
        return inventory()
    except (BuildEnvError, OSError, RuntimeError) as exc:  # docker's APIError is a RuntimeError too
        return f"(could not be listed: {str(exc).splitlines()[0][:160]})"
