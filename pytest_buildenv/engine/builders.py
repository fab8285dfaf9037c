"""The session-wide manager of builders on the engine, shared by the container and dind kinds:
images built once per session, spares pre-started while tests run, shared network namespaces,
an engine that goes away waited for; and what doctor, the header and the reaper say of the engine."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

from ..errors import Check, ConfigError, EngineNotAnswering
from ..handle import BuildEnv
from ..naming import LABEL_CACHE, Labelled
from ..registry import SessionEnd, TestInfo
from ..services import Services
from . import connect, describe_unreachable, engine_lost, is_read_timeout, not_back, platforms, probe
from .builder import CACHE_VOLUME, Builder, BuilderSpec, ContainerSettings, host_options
from .containers import wait_for_removals
from .endpoint import describe, run_as
from .images import BuildSpec
from .resources import labelled_resources
from .shared import Engine


PING_EVERY = 2.0  # seconds between pings while a builder is opened: a stopped engine is seen within that of the wait


class Builders:
    """One process's builders of one class (Builder, or dind's), on the session's engine."""

    def __init__(self, engine: Engine, env_class: type[Builder] = Builder) -> None:
        self.engine = engine
        self.env_class = env_class
        self._abandoned: list[threading.Thread] = []  # opens given up on: what they make is removed as it comes

    def image_for(self, settings: ContainerSettings) -> str:
        kind, images = self.env_class.kind, self.engine.images
        platforms.require(settings.platform, engine_is_local=self.engine.endpoint.socket is not None)
        if settings.dockerfile is not None:
            context = settings.context or settings.dockerfile.parent
            base = images.build(BuildSpec(
                settings.dockerfile, context, settings.target, settings.build_args, secrets=settings.secrets,
                ssh=settings.ssh, platform=settings.platform, cache_from=settings.cache_from,
                cache_to=settings.cache_to, builder=settings.buildx_builder))
        elif settings.image:
            base = images.from_tag(settings.image, settings.platform)
        else:
            raise ConfigError(f"no image for the {kind} kind; pass @pytest.mark.{kind}(image=...) or dockerfile=, "
                              f"set {kind}: image: in buildenv.yaml, or ini buildenv_image")
        return images.snapshot(base, settings.provision, settings.provision_user) if settings.provision else base

    def spec_for(self, settings: ContainerSettings, image: str, workspace: Path, network: Optional[str]) -> BuilderSpec:
        """The builder's spec for these settings on this engine."""
        to_host = self.engine.host_paths.to_host
        options, mounts = host_options(settings, to_host)
        copy = settings.workspace == "copy" or (settings.workspace is None
                                                and not self.engine.sees_workspaces(workspace, image))
        return BuilderSpec(image, network=network, ssh_agent=settings.ssh_agent, environment=settings.environment,
                           timeout=settings.timeout, mounts=mounts, host_options=options, caches=settings.caches,
                           copy_workspace=copy, platform=settings.platform,
                           timeout_scale=platforms.EMULATION_FACTOR if platforms.emulated(settings.platform) else 1.0)

    def configure(self, settings: ContainerSettings, image: str, workspace: Path, test: str,
                  network: Optional[str]) -> Builder:
        """A builder for these settings, not started yet."""
        return self.env_class(self.engine.client, self.spec_for(settings, image, workspace, network), workspace,
                              self.engine.owner, test=test, to_host=self.engine.host_paths.to_host)

    def _start(self, settings: ContainerSettings, image: str, workspace: Path, test: str) -> Builder:
        """Started on a shared network namespace when one can be had; a builder that cannot join its
        holder (gone: a test removed it) is started again on another. Our own errors (bad settings) are
        never retried."""
        networks = self.engine.networks
        mode = networks.mode_for_new_builder(settings.network, image)
        try:
            return self.configure(settings, image, workspace, test, mode).start()
        except ConfigError:
            raise
        except Exception:
            if mode == settings.network:
                raise
            networks.holder_failed()
            mode = networks.mode_for_new_builder(settings.network, image)
            return self.configure(settings, image, workspace, test, mode).start()

    # --- the Manager protocol ----------------------------------------------------
    def open(self, settings: ContainerSettings, workspace: Path, test: TestInfo) -> Builder:
        """A builder for one test. An engine that is unreachable (or goes away while the builder is made,
        as in a daemon's shutdown, when pings still answer) is waited for, and one that takes calls in and
        answers none (a stopped daemon) is not: either way, ini buildenv_engine_wait seconds at most.
        Then it is trusted for nothing it said before. No ping on the way while the engine answers:
        opening is a hot path, and every step of it talks to the engine anyway."""
        seconds = self.engine.settings.wait
        outage: Optional[float] = None  # when this open found the engine gone
        while True:
            left = seconds if outage is None else seconds - (time.monotonic() - outage)
            try:
                env = self._watched(lambda: self._open(settings, workspace, test), max(left, 1.0), test.nodeid)
            except Exception as exc:
                if not (engine_lost(exc) or is_read_timeout(exc)):
                    raise
                if outage is None:
                    outage = time.monotonic()
                    cause = describe_unreachable(exc.__cause__ or exc, self.engine.endpoint)[0]
                    self.engine.progress(f"{cause}; waiting up to {seconds:g} s for it (ini buildenv_engine_wait)")
                elif time.monotonic() - outage >= seconds:
                    raise not_back(seconds, self.engine.endpoint) from None
                self.engine.images.forget()
                time.sleep(0.5)
                continue
            if outage is not None:
                self.engine.progress(f"the container engine at {self.engine.endpoint.url} is back after "
                                     f"{time.monotonic() - outage:.1f} s")
            return env

    def _watched(self, make: Callable[[], Builder], seconds: float, test: str) -> Builder:
        """make() in a thread of its own, given as long as it needs (an image build takes minutes) while
        the engine answers a probe every PING_EVERY s; after `seconds` of no answer, EngineNotAnswering.
        A builder that make() finishes after that is removed as it comes: no test will have it."""
        outcome: dict[str, Any] = {}
        lock, late = threading.Lock(), threading.Event()

        def run() -> None:
            try:
                env = make()
            except BaseException as exc:  # raised again below, in the test's thread
                outcome["error"] = exc
                return
            with lock:
                outcome["env"] = env
                if late.is_set():
                    with contextlib.suppress(Exception):  # the engine it waited for may be gone again
                        self.close(env)

        worker = threading.Thread(target=run, daemon=True, name="buildenv-open")
        worker.start()
        answered = time.monotonic()
        while True:
            worker.join(PING_EVERY)
            if not worker.is_alive():
                break
            if probe(self.engine.endpoint, timeout=round(PING_EVERY)).ok:  # a client of its own: ours may be stuck
                answered = time.monotonic()
            elif time.monotonic() - answered >= seconds:
                with lock:
                    if "env" not in outcome and "error" not in outcome:
                        late.set()
                        self._abandoned.append(worker)
                        raise EngineNotAnswering(
                            f"the container engine at {self.engine.endpoint.url} did not answer for {seconds:g} s "
                            f"while a builder was opened for {test}",
                            "look at the engine (a stopped or overloaded daemon), or raise ini buildenv_engine_wait")
        if "error" in outcome:
            raise outcome["error"]
        env: Builder = outcome["env"]
        return env

    def _open(self, settings: ContainerSettings, workspace: Path, test: TestInfo) -> Builder:
        """A builder for one test: a spare if one is ready, on a shared network namespace."""
        image = self.image_for(settings)
        key = (self.env_class.kind, image, json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str))
        spares = self.engine.spares(test.scratch)
        spare = spares.take(key) if spares is not None else None
        if isinstance(spare, Builder) and not spare.running():
            spare.close()  # it died with the engine (or was removed): never handed to a test
            spare = None
        env = spare if isinstance(spare, Builder) else self._start(settings, image, workspace, test.nodeid)
        if spares is not None:
            spares.restock(key, lambda where: self._start(settings, image, where, "spare"), test.more_tests_coming)
        if env.host_options.get("privileged"):
            self.engine.notices.append(f"{env.name} ran privileged (docker_options privileged=True)")
        if not self.engine.networks.claim(env):
            # Its holder is taken by another open builder (two in one test) or was removed:
            # this test gets a builder with a namespace of its own instead.
            env.close()
            env = self.configure(settings, image, env.workspace, test.nodeid, settings.network).start()
        return env

    def close(self, env: BuildEnv) -> None:
        """Remove env in the background; its holder is lent again once that is done."""
        assert isinstance(env, Builder)
        env.close()
        self.engine.networks.release(env)

    def describe_kept(self, env: BuildEnv) -> str:
        """A shell in the builder as the test's user, in its workdir (DOCKER_HOST named when set)."""
        assert isinstance(env, Builder)
        engine = "".join(f"{name}={value} " for name, value in self.engine.endpoint.cli_environment.items())
        return (f"{env.kind} {env.name}: {engine}docker exec -it --user {env.user_spec} --workdir {env.workdir} "
                f"{env.name} sh   (workspace {env.workspace})")

    def finish(self, end: SessionEnd) -> None:
        """The process's end: remove the spares and holders left, and wait for every removal. An open given
        up on (the engine did not answer) goes first: once the engine is back it still makes what it was
        making, holders included, and then removes its builder."""
        for worker in self._abandoned:
            worker.join(self.engine.settings.wait)
        if self.engine.made_spares is not None:
            self.engine.made_spares.drain()
        wait_for_removals()  # the builders first: Podman refuses to remove a holder whose namespace one still uses
        if self.engine.made_networks is not None:
            self.engine.made_networks.close()
        wait_for_removals()


# --- what doctor, the session header and the reaper say of the engine (container and dind alike) ---
def engine_check(services: Services, defaults: Mapping[str, Any]) -> Check:
    """The engine answers: which one, and its version."""
    return probe(services.endpoint)


def engine_header(services: Services) -> str:
    """Which engine, what it is, and how workspaces reach it."""
    endpoint = services.endpoint
    with contextlib.closing(connect(endpoint, timeout=10)) as client:  # closed: a client left to the GC warns
        info = describe(client)
    groups = run_as(info, 0, 0).groups_said()
    return (f"engine {info} at {endpoint.url} (from {endpoint.source}); workspaces bind-mounted if it sees them, "
            f"else copied in and out (setting workspace: bind|copy){'; ' + groups if groups else ''}")


def caches_held(services: Services) -> str:
    """The cache volumes on the engine with their sizes (what `reap --include-cache` would remove)."""
    with contextlib.closing(connect(services.endpoint, timeout=10)) as client:
        volumes = client.api.df().get("Volumes") or []
    caches = sorted((v["Name"][len(CACHE_VOLUME):], (v.get("UsageData") or {}).get("Size", -1))
                    for v in volumes if LABEL_CACHE in (v.get("Labels") or {}) and v["Name"].startswith(CACHE_VOLUME))
    listed = ", ".join(f"{name} {size // 1024} KiB" if size >= 0 else name for name, size in caches)
    return f"caches: {listed or 'none'}; {platforms.listing()}"


def engine_leftovers(services: Services, session: Optional[str]) -> Iterator[Labelled]:
    return labelled_resources(services.engine.client, session)

