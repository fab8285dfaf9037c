"""Crash-proof clean-up without a helper container.

A resource is dead when its owner's lock (owners.py) can be taken, or, lock
file gone, its pid no longer exists. The reaper removes
dead resources on this host, reports those of other hosts (removing them only
past a given age), never touches a live session's resources, and never one
without our labels.
"""

from __future__ import annotations

import json
import shutil
import itertools
import socket
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Optional
from collections.abc import Iterable, Iterator

from .errors import BuildEnvError
from .events import emit
from . import reuse
from .kinds import discover
from .owners import owner_alive
from .naming import (LABEL_CACHE, LABEL_CREATED, LABEL_HOST, LABEL_KEEP, LABEL_PID, LABEL_SESSION, Labelled, Owner,
                     new_session_id)
from .registry import Finder, Registry
from .services import Services
from .sharing import LABELS_FILE, state_root

@dataclass(frozen=True)
class Finding:
    resource: str  # container, network, volume, image, cluster, vm, state (a session's directory)
    ident: str
    name: str
    session: str
    action: str  # "remove", "keep" or "report"
    reason: str

    def line(self) -> str:
        return f"{self.action:6} {self.resource:9} {self.name:50} session {self.session}: {self.reason}"


def judge(labels: dict[str, str], *, this_host: str, foreign_max_age: Optional[float],
          include_kept: bool, now: Optional[float] = None, include_cache: bool = False) -> tuple[str, str]:
    """(action, reason) for one resource: remove it, keep it, or only report it."""
    if LABEL_CACHE in labels and not include_cache:
        return "keep", "a cached provisioned snapshot, shared across sessions (remove with reap --include-cache)"
    if labels.get(LABEL_KEEP) == "true" and not include_kept:
        return "keep", "kept with --buildenv-keep (remove with reap --include-kept)"
    host, pid = labels.get(LABEL_HOST, "?"), int(labels.get(LABEL_PID, "0") or 0)
    if host != this_host:
        age = (now or time.time()) - float(labels.get(LABEL_CREATED, "0") or 0)
        if foreign_max_age is not None and age > foreign_max_age:
            return "remove", f"from host {host}, {age / 3600:.1f} h old"
        return "report", f"owned by pid {pid} on host {host}; not ours to judge"
    if owner_alive(host, pid):
        return "keep", f"owner pid {pid} is alive"
    return "remove", f"owner pid {pid} is gone"


def labelled_state_dirs(session: Optional[str] = None) -> Iterator[Labelled]:
    """This user's session state directories (records, kubeconfigs, VM clone directories)."""
    for labels_file in sorted((state_root() / "sessions").glob(f"*/{LABELS_FILE}")):
        directory = labels_file.parent
        try:
            labels = json.loads(labels_file.read_text())
        except (OSError, ValueError):
            continue  # being written, or already removed by a concurrent reaper
        if session is None or labels.get(LABEL_SESSION) == session:
            yield Labelled("state", str(directory), str(directory), labels,
                           partial(shutil.rmtree, directory, ignore_errors=True))


def reap(finders: Iterable[Finder], services: Services, *, dry_run: bool = False, session: Optional[str] = None,
         include_kept: bool = False, foreign_max_age: Optional[float] = None,
         force: bool = False, include_cache: bool = False, include_reusable: bool = False,
         unreachable: Optional[Callable[[str], None]] = None) -> list[Finding]:
    """Remove dead owners' resources (or, with `force`, every resource of `session`); environments kept
    for reuse only when unclaimed and expired, or with `include_reusable` (reuse.judge).

    `finders` are the kinds' ways of finding what they labelled (registry.finders);
    session state directories are always looked at. With `unreachable`, a finder whose
    tooling does not answer (BuildEnvError) is reported to it and skipped, not raised.
    """
    this_host = socket.gethostname()
    findings = []
    found = itertools.chain.from_iterable(_found(finder, services, session, unreachable) for finder in finders)
    for item in itertools.chain(found, labelled_state_dirs(session)):
        kept = reuse.judge(item, include_reusable)  # before force: a session's sweep leaves what it keeps
        if kept is not None:
            action, reason = kept
        elif force and (include_cache or LABEL_CACHE not in item.labels):
            action, reason = "remove", "session swept by its owner"
        else:
            action, reason = judge(item.labels, this_host=this_host, foreign_max_age=foreign_max_age,
                                   include_kept=include_kept, include_cache=include_cache)
        if action == "remove" and not dry_run:
            try:
                if kept is None:
                    item.remove()
                elif not reuse.remove_unclaimed(item, services.session_owner):
                    action, reason = "keep", "kept for reuse: a session claimed it as it was judged"
            except (BuildEnvError, OSError) as exc:  # OSError: docker's APIError too (a removal refused)
                if unreachable is None:
                    raise
                # One refusal is said, and the sweep goes on: what it could not remove is still counted.
                unreachable(str(exc).splitlines()[0] if str(exc) else repr(exc))
                continue
            if action == "remove":
                emit("reaped", item.resource, item.name, item.labels.get(LABEL_SESSION, "?"), reason=reason)
        findings.append(Finding(item.resource, item.ident, item.name,
                                item.labels.get(LABEL_SESSION, "?"), action, reason))
    return findings


def _found(finder: Finder, services: Services, session: Optional[str],
           unreachable: Optional[Callable[[str], None]]) -> list[Labelled]:
    try:
        return list(finder(services, session))
    except BuildEnvError as exc:
        if unreachable is None:
            raise
        unreachable(str(exc))
        return []


def reap_kinds(kinds: Iterable[str], registry: Optional[Registry] = None, services: Optional[Services] = None,
               **options: Any) -> list[Finding]:
    """reap() over the named kinds' leftovers, outside any session (the CLI, a library user): the kinds of
    `registry` (default: as a pytest run finds them), on `services`' engine (default: DOCKER_HOST, ...)."""
    registry = registry or discover()
    return reap(registry.finders(kinds), services or Services(Owner(new_session_id())), **options)
