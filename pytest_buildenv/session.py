"""One test session's environments: settings, opening and closing them, and the session's end.

Works without pytest: the plugin hands it plain values (the selection, the
settings layers, a marker's keyword arguments) and asks it for handles. What a
kind shares across a session lives in that kind's manager (see registry.py);
this module names no kind.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar
from collections.abc import Mapping

from . import kinds, masking
from .errors import BuildEnvError, ConfigError
from .handle import BuildEnv
from .naming import Labelled
from .owners import OwnerLock
from .reaper import Finding, reap
from .registry import Manager, Registry, SessionEnd, TestInfo
from .services import Services
from .settings import CommonSettings, Selection, SettingsLayer, matrix, merge
from .sharing import remove_session_state

M = TypeVar("M")
T = TypeVar("T")


@dataclass
class Stats:
    made: Counter[str] = field(default_factory=Counter)
    setup_seconds: float = 0.0
    teardown_seconds: float = 0.0
    kept: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def add(self, other: Mapping[str, Any]) -> None:
        self.made.update(other.get("made", {}))
        self.setup_seconds += other.get("setup_seconds", 0.0)
        self.teardown_seconds += other.get("teardown_seconds", 0.0)
        self.kept.extend(other.get("kept", []))
        self.notices.extend(other.get("notices", []))

    def as_dict(self) -> dict[str, Any]:
        return {"made": dict(self.made), "setup_seconds": self.setup_seconds,
                "teardown_seconds": self.teardown_seconds, "kept": list(self.kept), "notices": list(self.notices)}


class BuildEnvSession:
    def __init__(self, selection: Selection, services: Services, *, registry: Optional[Registry] = None,
                 is_session_owner: bool = True, file_layers: Optional[dict[str, SettingsLayer]] = None,
                 default_layers: Optional[dict[str, SettingsLayer]] = None,
                 artifacts_dir: Optional[Path] = None, keep: str = "") -> None:
        self.registry = registry or kinds.discover()
        self.selection = selection
        # Shared resources (session images, clusters) belong to services.session_owner, the process that
        # outlives every worker, so a crashed worker cannot get them reaped.
        self.services = services
        owner = self.owner = services.owner
        self.is_session_owner = is_session_owner
        # --buildenv-keep: "all", "failed" (a failing test's environments), or "" (nothing); owner.keep
        # labels what is made as kept, so that no sweep or reaper removes it without --include-kept.
        self.keep = keep or ("all" if owner.keep else "")
        self.file_layers = file_layers or {}
        self.default_layers = default_layers or {}
        self.artifacts_dir = artifacts_dir
        self.stats = Stats()
        self.findings_at_end: list[Finding] = []
        self.left_behind: Optional[int] = 0  # None: could not be counted (the tooling went away)
        self.end_notes: list[str] = []  # what could not be finished, one line each
        self._managers: dict[str, Manager] = {}
        self._failed = False
        self._more_tests_coming = True
        self._owner_lock: Optional[OwnerLock] = None

    @property
    def progress(self) -> Callable[[str], None]:
        return self.services.progress

    # --- the process's life ----------------------------------------------
    def hold_owner_lock(self) -> None:
        """Held while this process lives: how the reaper of another session learns we are alive."""
        if self._owner_lock is None:
            self._owner_lock = OwnerLock()

    def release_owner_lock(self) -> None:
        if self._owner_lock is not None:
            self._owner_lock.release()
            self._owner_lock = None

    def check_settings(self) -> None:
        """Every process, as settings load: each enabled kind's ini, option and buildenv.yaml settings,
        checked once (a wrong value fails the session at its start, naming where it came from).
        A marker's settings are checked when its test is collected and set up."""
        for kind in self.services.reuse.kinds:
            if kind not in self.registry or not self.registry.spec(kind).reusable:
                reusable = [name for name in self.registry if self.registry.spec(name).reusable]
                raise ConfigError(f"ini buildenv_reuse={','.join(self.services.reuse.kinds)} names {kind!r}, which "
                                  f"keeps nothing across sessions; the kinds that do: {', '.join(reusable) or 'none'}")
        for kind in self.selection.kinds:
            for _, variant in self.variants(kind, {}, Path.cwd()):
                self.settings(kind, {}, Path.cwd(), variant=variant)

    def start(self) -> list[Finding]:
        """Session owner, before any test: explicit kinds must be usable; then reap dead owners' leftovers."""
        if self.selection.explicit:
            for kind in self.selection.kinds:
                self.registry.check(kind, self.services, self._defaults(kind)).raise_if_unusable()
        return [f for f in self._reap() if f.action == "remove"]

    def test_starting(self, last: bool) -> None:
        """A process's last test: nothing to pre-start for the test after it."""
        self._more_tests_coming = not last

    def test_failed(self) -> None:
        self._failed = True

    # --- settings and environments ---------------------------------------
    def settings(self, kind: str, marker_values: Mapping[str, Any], test_dir: Path, test: str = "",
                 variant: Optional[Mapping[str, Any]] = None) -> CommonSettings:
        """The kind's settings for a test: defaults < buildenv.yaml < the test's marker < its matrix variant."""
        layers = self._layers(kind, marker_values, test_dir, test)
        if variant:
            layers = [SettingsLayer({k: v for k, v in layer.values.items() if k not in variant}, layer.base_dir,
                                    layer.source) for layer in layers]
            layers.append(SettingsLayer(variant, test_dir, f"the matrix of {test or test_dir}"))
        return merge(self.registry.spec(kind).settings, kind, layers)

    def _layers(self, kind: str, marker_values: Mapping[str, Any], test_dir: Path, test: str) -> list[SettingsLayer]:
        layers = [layer for layer in (self.default_layers.get(kind), self.file_layers.get(kind)) if layer is not None]
        if marker_values:
            layers.append(SettingsLayer(marker_values, test_dir, f"@pytest.mark.{kind} of {test or test_dir}"))
        return layers

    def variants(self, kind: str, marker_values: Mapping[str, Any], test_dir: Path) -> list[tuple[str, dict[str, Any]]]:
        """A matrix: each list given where the setting takes one value (image=["b:12", "b:13"],
        build_args=[{...}, {...}]) multiplies the test; [(id, values)] per variant, [("", {})] for none."""
        return matrix(self.registry.spec(kind).settings, self._layers(kind, marker_values, test_dir, ""))

    def manager(self, kind: str) -> Manager:
        """The kind's manager for this process, made (cheaply: it starts nothing) on first use."""
        if kind not in self._managers:
            self._managers[kind] = self.registry.spec(kind).manager(self.services)
        return self._managers[kind]

    def manager_of(self, kind: str, cls: type[M]) -> M:
        """The kind's manager as its own class, for what only that kind offers (e.g. golden VMs)."""
        manager = self.manager(kind)
        if not isinstance(manager, cls):
            raise ConfigError(f"the {kind} kind's manager is a {type(manager).__name__}, not a {cls.__name__}")
        return manager

    def open(self, kind: str, settings: CommonSettings, workspace: Path, test: str = "",
             scratch: Optional[Path] = None) -> BuildEnv:
        started = time.monotonic()
        secrets = masking.read_all(settings.secrets)  # before anything is made: a missing one is one line
        env = self.manager(kind).open(settings, workspace, TestInfo(test, self._more_tests_coming, scratch))
        env.secrets, env.output_limit = secrets, settings.output_limit
        self.stats.made[kind] += 1
        self.stats.setup_seconds += time.monotonic() - started
        fresh = (workspace.parent / f"{workspace.name}-again{n}" for n in itertools.count())

        def again() -> BuildEnv:  # env.reproduce() builds in fresh environments like this one
            where = next(path for path in fresh if not path.exists())
            where.mkdir()
            return self.open(kind, settings, where, test, scratch)
        env.reopen = (again, self.close)
        return env

    def close(self, env: BuildEnv, failed: bool = False) -> None:
        started = time.monotonic()
        if self.keep == "all" or (self.keep == "failed" and failed):
            self.stats.kept.append(self.manager(env.kind).describe_kept(env))
        else:
            self.manager(env.kind).close(env)
        self.stats.teardown_seconds += time.monotonic() - started

    # --- the session's end -------------------------------------------------
    def finish_process(self) -> dict[str, Any]:
        """Every process, at its end: managers wait for their teardown. Returns what a worker reports."""
        started = time.monotonic()
        end = SessionEnd(session_owner=self.is_session_owner, failed=self._failed, artifacts=self.artifacts_dir)
        # The session owner ends every enabled kind: under xdist it made none, but it tears down what workers shared.
        kinds = self.selection.kinds if self.is_session_owner else tuple(self._managers)
        for kind in kinds:
            self._survive(f"finishing the {kind} environments", partial(self.manager(kind).finish, end), None)
        self.stats.kept.extend(end.kept)
        self.stats.notices.extend(self.services.notices)
        self.stats.teardown_seconds += time.monotonic() - started
        return {"stats": self.stats.as_dict(), "failed": self._failed}

    def add_worker_output(self, output: Mapping[str, Any]) -> None:
        self.stats.add(output.get("stats", {}))
        if output.get("failed"):
            self._failed = True

    def finish(self) -> None:
        """Session owner, at the very end: finish, sweep what this session still owns, count what remains."""
        self.finish_process()
        if self.owner.keep:
            return  # kept: the shared directory still holds the kept clusters' kubeconfigs
        remove_session_state(self.owner.session)  # first: our own state directory is not a leftover to report
        notes = len(self.end_notes)
        # Caches (provisioned snapshots, cache volumes) are kept on purpose: neither swept nor left behind.
        self.findings_at_end = [f for f in self._reap(session=self.owner.session, force=True) if f.action == "remove"]
        left = [f for f in self._reap(session=self.owner.session, force=True, dry_run=True) if f.action == "remove"]
        self.left_behind = len(left) if len(self.end_notes) == notes else None

    def _reap(self, **options: Any) -> list[Finding]:
        return self._survive("sweeping the session", lambda: reap(
            self.registry.finders(self.selection.kinds), self.services, unreachable=self.end_notes.append,
            **options), [])

    def _survive(self, what: str, step: Callable[[], T], default: T) -> T:
        """The session's end never raises: a step whose tooling went away is one line in the summary."""
        try:
            return step()
        except (BuildEnvError, OSError) as exc:  # OSError: also requests' ConnectionError
            self.end_notes.append(f"{what}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            return default

    def leftovers(self) -> list[Labelled]:
        """Every labelled resource of the enabled kinds, whatever its session (for a suite's leak check)."""
        return [item for finder in self.registry.finders(self.selection.kinds) for item in finder(self.services, None)]

    def header_lines(self) -> list[str]:
        """What the enabled kinds run on (the container engine, once for the kinds that share it)."""
        headers = dict.fromkeys(self.registry.spec(kind).header for kind in self.selection.kinds)
        lines = [self._survive("describing", partial(header, self.services), "(not answering)")
                 for header in headers if header is not None]
        return [f"buildenv: {line}" for line in lines if line]  # a kind with nothing to say says ""

    def summary_lines(self) -> list[str]:
        made = ", ".join(f"{n} {kind}" for kind, n in sorted(self.stats.made.items())) or "none"
        left = "unknown" if self.left_behind is None else self.left_behind
        lines = [f"buildenv: session {self.owner.session}: environments made: {made}; "
                 f"setup {self.stats.setup_seconds:.1f} s, teardown {self.stats.teardown_seconds:.1f} s; "
                 f"swept at end: {len(self.findings_at_end)}; left behind: {left}"]
        lines.extend(f"buildenv: {notice}" for notice in dict.fromkeys(self.stats.notices))
        if self.end_notes:
            lines.append(f"buildenv: could not finish cleanly ({'; '.join(dict.fromkeys(self.end_notes))}); "
                         f"what session {self.owner.session} left is removed by the next session "
                         "or `python -m pytest_buildenv reap`")
        if self.owner.keep:
            lines.append(f"buildenv: kept (--buildenv-keep={self.keep}): {len(self.stats.kept)}")
            lines.extend(f"  {entry}" for entry in self.stats.kept)
            lines.append(f"  remove them all with: python -m pytest_buildenv reap --session {self.owner.session} --include-kept")
        return lines

    def _defaults(self, kind: str) -> Mapping[str, Any]:
        layer = self.default_layers.get(kind)
        return layer.values if layer is not None else {}
