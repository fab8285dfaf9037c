"""The one table of kinds: a name, the module that implements it, and what pytest must know early.

Each kind is one module (``kinds/<name>.py``) exposing ``KIND``, a ``KindSpec``:
its settings dataclass, the factory of its session-wide manager, its tooling
check (used by ``doctor`` and by explicit selection), and how the reaper finds
what it left. A module is imported only when its kind is used, so the entries
below carry the little pytest needs before that: the fixtures that need the
kind, and the command-line options and ini values that set its defaults.

Another package adds a kind by implementing the ``pytest_buildenv_register_kinds``
hook (see ``hooks.py``) and adding an ``Entry`` naming its module. Outside this
table and a kind's own modules, nothing compares against a kind's name.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, TypeVar

from .errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    from .handle import BuildEnv
    from .naming import Owner
    from .reaper import Labelled
    from .settings import CommonSettings
    from .sharing import SharedState

T = TypeVar("T")


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


IMAGE = Default("image", ini="buildenv_image", help="default image for container and dind")
PIDS = Default("pids", ini="buildenv_pids", help="process limit of a builder (default 4096; 0: none)")
BUILDER_INI = (
    Ini("buildenv_engine_wait", "seconds to wait for an unreachable engine before failing a test", default="60"),
    Ini("buildenv_spares", "builders pre-started per settings while tests run (0: none)", default="2"),
    Ini("buildenv_share_network", "builders of one process join a holder's network namespace "
        "(one open builder per holder) instead of each making one", type="bool", default=True),
)

BUILTIN: dict[str, Entry] = {
    "local": Entry("pytest_buildenv.kinds.local"),
    "container": Entry("pytest_buildenv.kinds.container", ("builder_container",), (IMAGE, PIDS), BUILDER_INI),
    "dind": Entry("pytest_buildenv.kinds.dind", ("dind_sibling",), (IMAGE, PIDS), BUILDER_INI),
    "kind": Entry("pytest_buildenv.kinds.kind", ("kind_cluster",), (
        Default("kind_bin", option="--kind-bin", help="the kind executable (default: kind on PATH)"),
        Default("image", option="--kind-image", help="KIND node image (kind create cluster --image)"),
        Default("cluster", option="--kind-cluster",
                help="reuse this existing KIND cluster instead of creating one; it is never deleted"),
    )),
    "vm": Entry("pytest_buildenv.kinds.vm", ("golden_vm", "vm_clone"), (
        Default("vagrantfile", option="--vagrantfile", help="the golden VM's Vagrantfile (vm kind)"),
    ), (Ini("buildenv_golden_keep", "golden boxes kept per Vagrantfile; older ones are removed (default 2)",
            default="2"),)),
}
# Every kind's settings have a timeout; its default is one ini value for all.
TIMEOUT = Default("timeout", ini="buildenv_timeout", help="default per-command timeout in seconds")


# --- what a kind's module provides -------------------------------------------------
@dataclass(frozen=True)
class Check:
    """Whether a kind can run here: the cause when it cannot, and the command that fixes it."""

    ok: bool
    detail: str
    fix: str = ""

    def raise_if_unusable(self) -> None:
        if not self.ok:
            raise BackendUnavailable(f"{self.detail}; {self.fix}" if self.fix else self.detail)


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


Finder = Callable[["Services", Optional[str]], Iterable["Labelled"]]


@dataclass(frozen=True)
class KindSpec:
    settings: type[CommonSettings]
    manager: Callable[[Services], Manager]
    check: Callable[[Mapping[str, Any]], Check]  # given the kind's defaults (e.g. kind_bin)
    leftovers: Optional[Finder] = None  # labelled resources of a session (None: all sessions)
    inventory: Optional[Callable[[], str]] = None  # for doctor: what the kind's caches hold, and their size
    header: Optional[Callable[[], str]] = None  # for the session header: what the kind runs on (kinds may share one)


class Services:
    """What a session's managers share: owners, shared state, progress, ini values, and a memo
    for things several kinds use (the container engine's client), made once on first use."""

    def __init__(self, owner: Owner, session_owner: Optional[Owner] = None, shared: Optional[SharedState] = None,
                 progress: Optional[Callable[[str], None]] = None, ini: Optional[Mapping[str, Any]] = None) -> None:
        self.owner = owner
        self.session_owner = session_owner or owner  # shared resources belong to the process that outlives workers
        self._shared = shared
        self.progress = progress or (lambda line: None)
        self.ini = dict(ini or {})
        self.notices: list[str] = []  # what the session summary must say (e.g. a privileged builder)
        self._memo: dict[str, Any] = {}
        self._lock = threading.RLock()  # reentrant: one service's factory may ask for another (the client)

    @property
    def shared(self) -> SharedState:
        if self._shared is None:
            from .sharing import SharedState

            self._shared = SharedState(self.owner.session, labels=self.session_owner.labels("state"))
        return self._shared

    def memo(self, key: str, make: Callable[[], T]) -> T:
        with self._lock:
            if key not in self._memo:
                self._memo[key] = make()
            return self._memo[key]  # type: ignore[no-any-return]

    def existing(self, key: str) -> Any:
        """What memo() made for `key`, or None: for ends that must not make what was never used."""
        return self._memo.get(key)


# --- the registry ------------------------------------------------------------------
class Registry:
    """The kinds this run knows: the built-in ones, plus any another package registered."""

    def __init__(self, entries: Optional[Mapping[str, Entry]] = None) -> None:
        self.entries: dict[str, Entry] = dict(BUILTIN if entries is None else entries)
        self._specs: dict[str, KindSpec] = {}

    def add(self, name: str, entry: Entry) -> None:
        """Register another kind (from a pytest_buildenv_register_kinds hook)."""
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
        return (TIMEOUT, *self.entries[name].defaults)

    def all_ini(self) -> list[Ini]:
        return list({ini.name: ini for entry in self.entries.values() for ini in entry.ini}.values())

    def check(self, name: str, defaults: Optional[Mapping[str, Any]] = None) -> Check:
        """The kind's tooling check; a check that raises is reported as its message."""
        try:
            return self.spec(name).check(defaults or {})
        except BackendUnavailable as exc:
            detail, _, fix = str(exc).partition("; ")
            return Check(False, detail, fix)

    def available(self, name: str, defaults: Optional[Mapping[str, Any]] = None) -> bool:
        return self.check(name, defaults).ok

    def finders(self, kinds: Iterable[str]) -> list[Finder]:
        """Each kind's way of finding its leftovers, once each (kinds may share one, e.g. the engine's)."""
        found: list[Finder] = []
        for name in kinds:
            finder = self.spec(name).leftovers
            if finder is not None and finder not in found:
                found.append(finder)
        return found
