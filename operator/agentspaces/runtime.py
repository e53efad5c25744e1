"""Process-wide collaborators: settings, clocks, ports, adapter caches, per-workspace locks.

Adapters are cached per (endpoint, credential hash) so that every workspace of a class
shares one HTTP session and one server inventory. The runtime owns every adapter it
creates and closes them all in `aclose()` (the operator's cleanup handler). Nothing
here holds business rules.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from agentspaces.agent_client import AgentClient, AgentPort, StatusWatchPort
from agentspaces.agent_watch import WatchCoverage
from agentspaces.class_inputs import ClassInputs
from agentspaces.clouds.budget import BudgetExhausted
from agentspaces.clouds.cloudflare import CloudflareDns, DnsProvider
from agentspaces.clouds.hetzner import HcloudServers, ServerInfo, ServerProvider
from agentspaces.clouds.hetzner_pricing import CachedPrices
from agentspaces.clouds.r2 import ObjectStore, S3ObjectStore
from agentspaces.kube import KubePort
from agentspaces.quota_gate import QuotaGate
from agentspaces.requeue_holds import RequeueHolds
from agentspaces.settings import OperatorSettings
from agentspaces.workspace_versions import WorkspaceVersions

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class Closeable(Protocol):
    async def aclose(self) -> None: ...


class ServerAdapter(ServerProvider, Closeable, Protocol):
    """A server port holding an HTTP session."""


class DnsAdapter(DnsProvider, Closeable, Protocol):
    """A DNS port holding an HTTP client."""


class AgentAdapter(AgentPort, Closeable, Protocol):
    """An agent port holding a pinned TLS connection pool."""


class StoreAdapter(ObjectStore, Protocol):
    """An object store holding a connection pool (its calls block, and so does close)."""

    def close(self) -> None: ...


ServerFactory = Callable[[str, str], ServerAdapter]
"""(token, endpoint) -> adapter"""
DnsFactory = Callable[[str, str], DnsAdapter]
"""(token, endpoint) -> adapter"""
StoreFactory = Callable[[str, str, str, str, str, str, str | None], StoreAdapter]
"""(endpoint, bucket, region, addressing style, access key, secret key, the endpoint the
VMs' presigned URLs are signed for or None for `endpoint`) -> adapter"""
AgentFactory = Callable[[str, str, str, float], AgentAdapter]
"""(url, token, pinned certificate PEM, timeout) -> client"""


def _hcloud(token: str, endpoint: str) -> HcloudServers:
    return HcloudServers(token, endpoint)


def _cloudflare(token: str, endpoint: str) -> CloudflareDns:
    return CloudflareDns(endpoint=endpoint, token=token)


def _s3(endpoint: str, bucket: str, region: str, addressing: str, access_key: str,
        secret_key: str, vm_endpoint: str | None) -> S3ObjectStore:
    return S3ObjectStore.connect(endpoint, bucket, access_key, secret_key, region=region,
                                 addressing_style=addressing, vm_endpoint=vm_endpoint)


def _agent(url: str, token: str, cert_pem: str, timeout: float) -> AgentClient:
    return AgentClient(url, token, cert_pem, timeout=timeout)


@dataclass
class ServerInventory:
    """One paginated, label-filtered list of our servers per project per interval.

    Steady-state drift checks read this instead of GETting each server, so Hetzner calls
    do not grow with the number of running workspaces.
    """

    provider: ServerProvider
    interval: float
    clock: Callable[[], datetime] = utcnow
    """Wall time of a listing (status compares it with a server's creation)."""
    monotonic: Callable[[], float] = time.monotonic
    """When the next listing is due."""
    fetched_at: float | None = None
    fetched_wall: datetime | None = None
    servers: dict[int, ServerInfo] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def snapshot(self) -> tuple[datetime | None, dict[int, ServerInfo]]:
        async with self._lock:
            if self.fetched_at is None or self.monotonic() - self.fetched_at >= self.interval:
                # Dated by its start: a server created while the pages were read may
                # be missing from them, and must not look deleted for that.
                started = self.clock()
                try:
                    listed = await self.provider.list_managed()
                except BudgetExhausted:
                    if self.fetched_at is None:
                        raise
                    # Creates and deletes come first: the last listing serves, undated,
                    # since a server missing from it proves nothing (no GET to confirm).
                    return None, self.servers
                self.servers = {s.id: s for s in listed}
                self.fetched_at = self.monotonic()
                self.fetched_wall = started
            return self.fetched_wall, self.servers

    def note(self, server: ServerInfo) -> None:
        """A change this process made (a claimed pool server's new labels), so drift
        checks see it before the next listing does."""
        if server.id in self.servers:
            self.servers[server.id] = server

    def confirm(self, server: ServerInfo) -> None:
        """A server a GET just found although the listing lacks it (created while the
        listing ran, or dated by a clock ahead of Hetzner's): listed from now on, so
        its workspace confirms it once per listing, not on every poll."""
        self.servers[server.id] = server


@dataclass
class PoolState:
    """What this process knows of one class's warm pool between visits
    (reconcile/warm_pool.py): its lock, taken by visits and claims alike, and the servers
    whose loader answered "awaiting-claim" on the last visit."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: set[int] = field(default_factory=set)
    status: Any = None
    """The pool's status as last written (api.status.WarmPoolStatus), so a claim can
    take its server out of it at once."""


class Runtime:
    def __init__(self, settings: OperatorSettings, kube: KubePort,
                 clock: Callable[[], datetime] = utcnow,
                 monotonic: Callable[[], float] = time.monotonic, *,
                 server_factory: ServerFactory = _hcloud,
                 dns_factory: DnsFactory = _cloudflare,
                 store_factory: StoreFactory = _s3,
                 agent_factory: AgentFactory = _agent) -> None:
        self.settings = settings
        self.kube = kube
        self.class_inputs = ClassInputs(kube, settings.class_cache, monotonic)
        self.clock = clock
        self.monotonic = monotonic
        self._server_factory = server_factory
        self._dns_factory = dns_factory
        self._store_factory = store_factory
        self._agent_factory = agent_factory
        self._servers: dict[str, ServerAdapter] = {}
        self._inventories: dict[str, ServerInventory] = {}
        self._prices: dict[str, CachedPrices] = {}
        self._dns: dict[str, DnsAdapter] = {}
        self._stores: dict[str, StoreAdapter] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._agents: dict[str, tuple[str, AgentAdapter]] = {}
        # (project, class) -> (digest of its desired firewall, the firewall's id or
        # None, when it was checked): what the class's firewall was last checked against.
        self.firewall_checks: dict[str, tuple[str, int | None, datetime]] = {}
        # Workspace uid -> the hostname label this process has seen it hold, so later
        # reconciles make no Lease call (reconcile/host_claim.py).
        self.host_claims: dict[str, str] = {}
        self._closing: list[AgentAdapter] = []
        self.agent_slots = asyncio.Semaphore(settings.agent_concurrency)
        self.quota_gate = QuotaGate(monotonic)
        # Workspaces whose agent watcher (agent_watch.py) reconciles them at least once
        # per poll interval, so the timer can skip them.
        self.watch_coverage = WatchCoverage(
            settings.poll_interval, min(settings.poll_interval, settings.agent_timeout),
            monotonic)
        # Waits longer than a poll interval, kept by the timer (requeue_holds.py).
        self.holds = RequeueHolds(monotonic)
        # Class name -> its warm pool's lock and ready servers.
        self.pools: dict[str, PoolState] = {}
        # The Workspace version each reconcile last read or wrote: a poll starts from
        # Kopf's watched body when it is that version (workspace_versions.py).
        self.versions = WorkspaceVersions()

    def lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    def forget(self, uid: str) -> None:
        self._locks.pop(uid, None)
        self.versions.forget(uid)
        self.watch_coverage.end(uid)
        self.holds.release(uid)
        cached = self._agents.pop(uid, None)
        if cached is not None:
            self._closing.append(cached[1])

    def servers(self, token: str, endpoint: str) -> ServerProvider:
        key = _key(endpoint, token)
        if key not in self._servers:
            self._servers[key] = self._server_factory(token, endpoint)
        return self._servers[key]

    def inventory(self, token: str, endpoint: str) -> ServerInventory:
        key = _key(endpoint, token)
        if key not in self._inventories:
            self._inventories[key] = ServerInventory(
                self.servers(token, endpoint), self.settings.inventory_interval,
                clock=self.clock, monotonic=self.monotonic)
        return self._inventories[key]

    def prices(self, token: str, endpoint: str) -> CachedPrices:
        """The project's Hetzner price list, fetched at most once a day."""
        key = _key(endpoint, token)
        if key not in self._prices:
            self._prices[key] = CachedPrices(self.servers(token, endpoint).pricing,
                                             monotonic=self.monotonic)
        return self._prices[key]

    def dns(self, token: str, endpoint: str) -> DnsProvider:
        key = _key(endpoint, token)
        if key not in self._dns:
            self._dns[key] = self._dns_factory(token, endpoint)
        return self._dns[key]

    def store(self, endpoint: str, bucket: str, region: str, addressing: str,
              access_key: str, secret_key: str, vm_endpoint: str | None = None
              ) -> ObjectStore:
        key = _key(endpoint, bucket, region, addressing, access_key, secret_key,
                   vm_endpoint or "")
        if key not in self._stores:
            self._stores[key] = self._store_factory(endpoint, bucket, region, addressing,
                                                    access_key, secret_key, vm_endpoint)
        return self._stores[key]

    def agent_client(self, uid: str, url: str, token: str, cert_pem: str) -> AgentPort:
        """One client (one TLS session pool) per workspace agent, replaced when the
        server or the credentials change."""
        key = _key(url, token, cert_pem)
        cached = self._agents.get(uid)
        if cached is not None and cached[0] == key:
            return cached[1]
        client = self._agent_factory(url, token, cert_pem, self.settings.agent_timeout)
        if cached is not None:
            self._closing.append(cached[1])
        self._agents[uid] = (key, client)
        return client

    def watchable_agent(self, uid: str) -> StatusWatchPort | None:
        """The workspace's current agent client if it can long-poll; None before a
        reconcile created one."""
        cached = self._agents.get(uid)
        client = cached[1] if cached is not None else None
        return client if isinstance(client, StatusWatchPort) else None

    async def close_stale_clients(self) -> None:
        while self._closing:
            await self._closing.pop().aclose()

    async def aclose(self) -> None:
        """Close every client this runtime created (operator shutdown). One that fails
        to close does not keep the others open."""
        async_clients: list[Closeable] = [*self._servers.values(), *self._dns.values(),
                                          *(client for _, client in self._agents.values()),
                                          *self._closing]
        stores = list(self._stores.values())
        self._servers.clear()
        self._inventories.clear()
        self._prices.clear()
        self._dns.clear()
        self._agents.clear()
        self._closing.clear()
        self._stores.clear()
        for client in async_clients:
            try:
                await client.aclose()
            except Exception as err:  # shutting down: note it and close the rest
                log.warning("closing %r failed: %s", client, type(err).__name__)
        for store in stores:
            try:
                await asyncio.to_thread(store.close)
            except Exception as err:
                log.warning("closing %r failed: %s", store, type(err).__name__)
