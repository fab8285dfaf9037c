"""Shared network namespaces: a process's builders join a holder's namespace instead of each making one.

Why: for every container with a network namespace of its own, Docker builds a
libnetwork sandbox (a veth pair on the bridge, torn down again on removal) and
adds an OCI prestart hook that re-executes the whole dockerd binary
(`libnetwork-setkey`). Measured with `perf` on this project's CI machine, that
is about a third of the engine's CPU per container (see benchmarks/bench_speed.py).
A container started with `network_mode=container:<holder>` gets neither, and
sees the same network as a builder of its own would: the holder is on the
network the settings asked for (the default bridge, `none`, a named network).

What stays per test: a holder is lent to one open builder at a time, and it is
lent again only after the previous tenant has been removed, so no process a
finished test left behind can still hold a port or socket there. A second
builder open at the same time (two environments in one test) gets a namespace
of its own. Holders are labelled like every other resource: the session removes
them at its end and the reaper after a crash.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Protocol

from ..events import emit
from ..naming import Owner
from .containers import InvokingUser, schedule_removal, start_idle_container

if TYPE_CHECKING:
    import docker


CONTAINER_MODE = "container:"


# Two holders per network: a test's builder never waits for the one the test
# before it just released (its removal is still in flight); it waits, if at
# all, for the tenant of two tests ago.
HOLDERS_PER_NETWORK = 2


class Tenant(Protocol):
    """What lending a holder needs of a builder: the network mode it was started with, and,
    once closed, its removal in flight."""

    @property
    def network(self) -> Optional[str]: ...

    @property
    def removal(self) -> Optional[Future[None]]: ...


@dataclass
class Holder:
    id: str
    tenant_open: bool = False
    gone: bool = False  # removed behind our back: its builders have lost their network
    departures: list[Future[None]] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return f"{CONTAINER_MODE}{self.id}"


def shareable(network: Optional[str]) -> bool:
    """Host networking and an explicit container: mode make no namespace, so there is nothing to share."""
    return network != "host" and not (network or "").startswith(CONTAINER_MODE)


class SharedNetworks:
    """One process's holders, per network setting, lent round-robin to new builders."""

    def __init__(self, client: docker.DockerClient, owner: Owner, user: InvokingUser, enabled: bool = True) -> None:
        self.client = client
        self.enabled = enabled  # off with --buildenv-keep: a kept builder must keep its network
        self.owner = owner
        self.user = user
        self._lock = threading.Condition()  # also signals "a holder finished starting"
        self._holders: dict[Optional[str], list[Holder]] = {}
        self._starting: dict[Optional[str], int] = {}
        self._turn: dict[Optional[str], int] = {}
        self._by_mode: dict[str, Holder] = {}

    def mode_for_new_builder(self, network: Optional[str], image: str) -> Optional[str]:
        """The network_mode for a builder about to be created (it may be a spare, claimed later)."""
        if not (self.enabled and shareable(network)):
            return network
        with self._lock:
            turn = self._turn.get(network, 0)
            self._turn[network] = turn + 1
            holders = self._holders.setdefault(network, [])
            starting = self._starting.get(network, 0)
            if len(holders) + starting >= HOLDERS_PER_NETWORK:
                self._lock.wait_for(lambda: holders or not self._starting.get(network))
                return holders[turn % len(holders)].mode if holders else network
            self._starting[network] = starting + 1
        holder = None
        try:
            holder = self._start_holder(network, image)  # unlocked: claims must not wait ~0.2 s for it
        except Exception:
            pass  # share nothing then: the builder's own start reports the cause in its words
        finally:
            with self._lock:
                self._starting[network] -= 1
                if holder is not None:
                    holders.append(holder)
                    self._by_mode[holder.mode] = holder
                self._lock.notify_all()
        return holder.mode if holder is not None else network

    def holder_failed(self) -> None:
        """A builder could not join its holder: stop lending every holder that is no longer running.

        Checks them all: whoever removed one (a test cleaning up with
        `docker rm -f $(docker ps -aq)`) most likely removed the others too.
        """
        with self._lock:
            for holders in self._holders.values():
                for holder in [h for h in holders if not self._running(h)]:
                    holder.gone = True
                    holders.remove(holder)

    def claim(self, env: Tenant) -> bool:
        """Lend env's holder to env for one test.

        False when env cannot have it: another open builder of this process
        holds it (two builders in one test), or the holder is gone (a test
        removed it, and with it the network of the builders that joined it).
        """
        holder = self._by_mode.get(env.network or "")
        if holder is None:
            return True  # a namespace of its own (host, sharing off, or no holder could start)
        with self._lock:
            if holder.tenant_open or holder.gone:
                return False
            holder.tenant_open = True
            departures, holder.departures = holder.departures, []
        for departure in departures:
            departure.exception()  # waits; a failed removal is the session sweep's business
        if not self._running(holder):
            self.holder_failed()
            return False
        return True

    def _running(self, holder: Holder) -> bool:
        import docker

        try:
            return bool(self.client.api.inspect_container(holder.id)["State"]["Running"])
        except docker.errors.NotFound:
            return False

    def release(self, env: Tenant) -> None:
        """env was closed: its holder is free once env's removal is done."""
        holder = self._by_mode.get(env.network or "")
        removal = env.removal
        if holder is None:
            return
        with self._lock:
            holder.tenant_open = False
            if removal is not None:
                holder.departures.append(removal)

    def close(self) -> None:
        """Schedule every holder's removal; `wait_for_removals()` joins it with its builders'."""
        with self._lock:
            holders = list(self._by_mode.values())  # gone ones too: a stopped holder still exists
            self._holders.clear()
            self._by_mode.clear()
        for holder in holders:
            schedule_removal(self.client, holder.id)

    def _start_holder(self, network: Optional[str], image: str) -> Holder:
        name = self.owner.name("netns")
        holder_id = start_idle_container(self.client, image, name=name, user=self.user.user_spec,
                                         labels=self.owner.labels("netns"), role="network holder", network=network)
        emit("created", "netns", name, self.owner.session, network=network or "default")
        return Holder(holder_id)
