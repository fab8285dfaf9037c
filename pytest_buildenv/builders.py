"""One process's container and dind builders: their images, spares and shared network namespaces.

The session asks `open()` for a builder per test and hands it back to
`close()`; `wait()`, at the process's end, joins the removals that ran in
the background and removes the spares and network holders left over.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, cast

from .config import ContainerSettings
from .errors import ConfigError
from .naming import Owner
from .sharing import SharedState

if TYPE_CHECKING:
    import docker

    from .backends.base import BuildEnv
    from .backends.container import ContainerEnv
    from .hostpaths import HostPaths
    from .images import ImageBuilder
    from .netns import SharedNetworks
    from .spares import SparePool


class Builders:
    def __init__(self, client: docker.DockerClient, owner: Owner, session_owner: Owner, shared: SharedState,
                 progress: Callable[[str], None], *, share_network: bool = True) -> None:
        from .backends.container import InvokingUser
        from .hostpaths import detect
        from .images import ImageBuilder
        from .netns import SharedNetworks

        self.client = client
        self.owner = owner
        # Session images belong to the process that outlives every worker (see sharing.py).
        self.images: ImageBuilder = ImageBuilder(client, session_owner, shared, progress)
        self.host_paths: HostPaths = detect(client)  # how the daemon sees our paths (a runner container?)
        # Off with --buildenv-keep: a kept builder must keep its network after the session.
        self.networks: SharedNetworks = SharedNetworks(client, owner, InvokingUser(),
                                                       enabled=share_network and not owner.keep)

    def image_for(self, settings: ContainerSettings, kind: str) -> str:
        from .images import BuildSpec

        if settings.dockerfile is not None:
            context = settings.context or settings.dockerfile.parent
            base = self.images.build(BuildSpec(settings.dockerfile, context, settings.target, settings.build_args))
        elif settings.image:
            base = self.images.from_tag(settings.image)
        else:
            base = ""
        if base and settings.provision:
            return self.images.snapshot(base, settings.provision, settings.provision_user)
        if base:
            return base
        raise ConfigError(f"no image for the {kind} kind; pass @pytest.mark.{kind}(image=...) or dockerfile=, "
                          f"set {kind}: image: in buildenv.yaml, or ini buildenv_image")

    def open(self, kind: str, settings: ContainerSettings, workspace: Path, test: str,
             spares: Optional[SparePool] = None, more_tests_coming: bool = True) -> ContainerEnv:
        """A builder for one test: a spare if one is ready, on a shared network namespace."""
        from .backends.container import ContainerEnv
        from .backends.dind import DindEnv

        cls = DindEnv if kind == "dind" else ContainerEnv
        image, to_host, networks = self.image_for(settings, kind), self.host_paths.to_host, self.networks

        def start(where: Path, test: str, network: Optional[str]) -> ContainerEnv:
            return cls(self.client, image, where, self.owner, test=test, network=network,
                       ssh_agent=settings.ssh_agent, to_host=to_host,
                       environment=settings.environment, timeout=settings.timeout)

        def make(where: Path, test: str = test) -> ContainerEnv:
            mode = networks.mode_for_new_builder(settings.network, image)
            try:
                return start(where, test, mode)
            except Exception:
                if mode == settings.network:
                    raise
                networks.holder_failed()  # its holder is gone (a test removed it?): lend another
                return start(where, test, networks.mode_for_new_builder(settings.network, image))

        key = (kind, image, settings.network, settings.ssh_agent,
               tuple(sorted(settings.environment.items())), settings.timeout)
        spare = spares.take(key) if spares is not None else None
        env = cast(ContainerEnv, spare) if spare is not None else make(workspace)
        if spares is not None:
            spares.restock(key, lambda where: make(where, "spare"), more_tests_coming)
        if not networks.claim(env):
            # Its holder is taken by another open builder (two in one test) or was removed:
            # this test gets a builder with a namespace of its own instead.
            env.close()
            env = start(env.workspace, test, settings.network)
        return env

    def close(self, env: BuildEnv) -> None:
        """Remove env in the background; its holder is lent again once that is done."""
        env.close()
        self.networks.release(env)

    def wait(self, spares: Optional[SparePool] = None) -> None:
        """The process's end: remove the spares and holders left, and wait for every removal."""
        from .backends.container import wait_for_removals

        if spares is not None:
            spares.drain()
        self.networks.close()
        wait_for_removals()
