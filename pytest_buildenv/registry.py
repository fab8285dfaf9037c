"""The one table of kinds: a name, the module that implements it, and what pytest must know early.

Each kind is one module exposing ``KIND``, a ``KindSpec``: its settings
dataclass, the factory of its session-wide manager, its tooling check (used by
``doctor`` and by explicit selection), and how the reaper finds what it left.
A module is imported only when its kind is used, so an ``Entry`` carries the
little pytest needs before that: the fixtures that need the kind, and the
command-line options and ini values that set its defaults.

Every kind, built-in or not, is added through the ``pytest_buildenv_register_kinds``
hook (see ``hooks.py``; the built-ins' implementation is ``kinds/__init__.py``).
`build()` calls it: the plugin once per run (kept in the config's stash), and
``python -m pytest_buildenv doctor|reap`` through pytest's entry points.
Outside a kind's own modules, nothing compares against a kind's name.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from .errors import BackendUnavailable, Check, ConfigError
from .naming import Labelled
from .services import Services

if TYPE_CHECKING:
    from .handle import BuildEnv
    from .settings import CommonSettings

__all__ = ["Check", "Default", "Entry", "Ini", "KindSpec", "Manager", "Registry", "Services", "SessionEnd", "TestInfo"]


# --- what pytest needs before a kind's module is imported -----------------------
@dataclass(frozen=True)
class Default:
    """A command-line option or ini value that sets one of a kind's settings (weakest layer)."""

    key: str  # the setting it sets
    option: str = ""  # e.g. "--kind-image"
    ini: str = ""  # e.g. "buildenv_image"
    help: str = ""


@dataclass(frozen=True)
class Ini:
    """A process-wide ini value a kind's manager reads (not a per-test setting)."""

    name: str
    help: str
    type: Optional[str] = None  # as pytest's parser.addini takes it
    default: Any = None


@dataclass(frozen=True)
class Entry:
    module: str  # imported on first use; it must expose KIND
    fixtures: tuple[str, ...] = ()  # fixtures that need this kind (a test using one is skipped without it)
    defaults: tuple[Default, ...] = ()
    ini: tuple[Ini, ...] = ()


# Every kind's settings have a timeout and an output limit; each default is one ini value for all.
TIMEOUT = Default("timeout", ini="buildenv_timeout", help="default per-command timeout in seconds")
OUTPUT_LIMIT = Default("output_limit", ini="buildenv_output_limit",
                       help="bytes of each output stream a Result holds (default 4194304); the whole goes to a file")


# --- what a kind's module provides -------------------------------------------------
@dataclass(frozen=True)
class TestInfo:
    """What a manager learns of the test it opens an environment for."""

    nodeid: str = ""
    more_tests_coming: bool = True  # False for a process's last test: nothing to pre-start for
    scratch: Optional[Path] = None  # a directory of the run's (basetemp) for pre-started workspaces


@dataclass
class SessionEnd:
    """What a manager is told when its process finishes."""

    session_owner: bool  # the process that tears down what the whole run shared (clusters)
    failed: bool = False
    artifacts: Optional[Path] = None  # --buildenv-artifacts: where logs of a failed run go
    kept: list[str] = field(default_factory=list)  # --buildenv-keep: lines saying how to reach what stays


class Manager(Protocol):
    """A kind's session-wide manager: one per process, made on first use, cheap until then."""

    def open(self, settings: Any, workspace: Path, test: TestInfo) -> BuildEnv:
        """A fresh environment for one test, started."""

    def close(self, env: BuildEnv) -> None:
        """The test is over: tear `env` down (perhaps in the background, or keep it for reuse)."""

    def describe_kept(self, env: BuildEnv) -> str:
        """One line saying how to reach `env`, kept by --buildenv-keep."""

    def finish(self, end: SessionEnd) -> None:
        """The process is ending: wait for background teardown; the session owner removes shared resources."""


Finder = Callable[[Services, Optional[str]], Iterable[Labelled]]


@dataclass(frozen=True)
class KindSpec:
    settings: type[CommonSettings]
    manager: Callable[[Services], Manager]
    check: Callable[[Services, Mapping[str, Any]], Check]  # given the kind's defaults too (e.g. kind_bin)
    leftovers: Optional[Finder] = None  # labelled resources of a session (None: all sessions)
    inventory: Optional[Callable[[Services], str]] = None  # for doctor: what the kind's caches hold, and their size
    header: Optional[Callable[[Services], str]] = None  # the session header: what the kind runs on (kinds may share one)
    reusable: bool = False  # keeps environments for later sessions when ini buildenv_reuse names it (reuse.py)


# --- the registry ------------------------------------------------------------------
class Registry:
    """The kinds this run knows, in the order they were registered (the built-ins first)."""

    def __init__(self, entries: Optional[Mapping[str, Entry]] = None) -> None:
        self.entries: dict[str, Entry] = dict(entries or {})
        self._specs: dict[str, KindSpec] = {}

    @classmethod
    def build(cls, hook: Any) -> Registry:
        """Every kind registered through `hook` (a plugin manager's hook relay): built-ins and plugins alike."""
        registry = cls()
        hook.pytest_buildenv_register_kinds(registry=registry)
        return registry

    def add(self, name: str, entry: Entry) -> None:
        """Register a kind (from a pytest_buildenv_register_kinds hook)."""
        if name in self.entries or name == "auto":
            raise ConfigError(f"kind {name!r} is already registered; pick another name")
        self.entries[name] = entry

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def spec(self, name: str) -> KindSpec:
        """The kind's module, imported now (its tooling is imported later still, when it is used)."""
        if name not in self._specs:
            entry = self.entries.get(name)
            if entry is None:
                raise ConfigError(f"unknown kind {name!r}; choose from {', '.join(self.names)}")
            spec = getattr(importlib.import_module(entry.module), "KIND", None)
            if not isinstance(spec, KindSpec):
                raise ConfigError(f"{entry.module} defines no KIND = KindSpec(...); fix the kind's module")
            self._specs[name] = spec
        return self._specs[name]

    def kind_of_fixture(self, fixture: str) -> Optional[str]:
        return next((name for name, entry in self.entries.items() if fixture in entry.fixtures), None)

    def defaults(self, name: str) -> tuple[Default, ...]:
        return (TIMEOUT, OUTPUT_LIMIT, *self.entries[name].defaults)

    def all_ini(self) -> list[Ini]:
        return list({ini.name: ini for entry in self.entries.values() for ini in entry.ini}.values())

    def check(self, name: str, services: Services, defaults: Optional[Mapping[str, Any]] = None) -> Check:
        """The kind's tooling check; a check that raises is reported as its cause and remedy."""
        try:
            return self.spec(name).check(services, defaults or {})
        except BackendUnavailable as exc:
            return Check.failed(exc)
        except ConfigError:
            raise
        except Exception as exc:  # a kind's own bug (another package's, say): one line, never a traceback
            return Check(False, f"the {name} kind's check raised {type(exc).__name__}: {exc}",
                         f"fix {self.entries[name].module}")

    def available(self, name: str, services: Services, defaults: Optional[Mapping[str, Any]] = None) -> bool:
        return self.check(name, services, defaults).ok

    def finders(self, kinds: Iterable[str]) -> list[Finder]:
        """Each kind's way of finding its leftovers, once each (kinds may share one, e.g. the engine's)."""
        found: list[Finder] = []
        for name in kinds:
            finder = self.spec(name).leftovers
            if finder is not None and finder not in found:
                found.append(finder)
        return found
