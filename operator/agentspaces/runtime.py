"""Process-wide collaborators: settings, ports, adapter caches, per-workspace locks.

Adapters are cached per (endpoint, credential hash) so that every workspace of a class
shares one HTTP session and one server inventory. Nothing here holds business rules.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agentspaces.clouds.hetzner import HcloudServers, ServerInfo, ServerProvider
from agentspaces.kube import KubePort
from agentspaces.settings import OperatorSettings


def utcnow() -> datetime:
    return datetime.now(UTC)


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass
class ServerInventory:
    """One paginated, label-filtered list of our servers per project per interval.

    Steady-state drift checks read this instead of GETting each server, so Hetzner calls
    do not grow with the number of running workspaces.
    """

    provider: ServerProvider
    interval: float
    fetched_at: float = 0.0
    fetched_wall: datetime | None = None
    servers: dict[int, ServerInfo] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def snapshot(self, monotonic: Callable[[], float] = time.monotonic
                       ) -> tuple[datetime | None, dict[int, ServerInfo]]:
        async with self._lock:
            if monotonic() - self.fetched_at >= self.interval:
                listed = await self.provider.list_managed()
                self.servers = {s.id: s for s in listed}
                self.fetched_at = monotonic()
                self.fetched_wall = utcnow()
            return self.fetched_wall, self.servers


class Runtime:
    def __init__(self, settings: OperatorSettings, kube: KubePort,
                 clock: Callable[[], datetime] = utcnow,
                 server_factory: Callable[[str, str], ServerProvider] | None = None) -> None:
        self.settings = settings
        self.kube = kube
        self.clock = clock
        self._server_factory = server_factory or (lambda token, endpoint:
                                                  HcloudServers(token, endpoint))
        self._servers: dict[str, ServerProvider] = {}
        self._inventories: dict[str, ServerInventory] = {}
        self._dns: dict[str, Any] = {}
        self._stores: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._agents: dict[str, tuple[str, Any]] = {}
        # (project, class) -> (digest of its desired firewall, the firewall's id or
        # None, when it was checked): what the class's firewall was last checked against.
        self.firewall_checks: dict[str, tuple[str, int | None, datetime]] = {}
        self._closing: list[Any] = []
        self.agent_slots = asyncio.Semaphore(settings.agent_concurrency)

    def lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())

    def forget(self, uid: str) -> None:
        self._locks.pop(uid, None)
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
            self._inventories[key] = ServerInventory(self.servers(token, endpoint),
                                                     self.settings.inventory_interval)
        return self._inventories[key]

    def dns(self, token: str, endpoint: str) -> Any:
        from agentspaces.clouds.cloudflare import CloudflareDns

        key = _key(endpoint, token)
        if key not in self._dns:
            self._dns[key] = CloudflareDns(endpoint=endpoint, token=token)
        return self._dns[key]

    def store(self, endpoint: str, bucket: str, region: str, addressing: str,
              access_key: str, secret_key: str) -> Any:
        from agentspaces.clouds.r2 import S3ObjectStore

        key = _key(endpoint, bucket, region, addressing, access_key, secret_key)
        if key not in self._stores:
            self._stores[key] = S3ObjectStore.connect(
                endpoint, bucket, access_key, secret_key, region=region,
                addressing_style=addressing)
        return self._stores[key]

    def agent_client(self, uid: str, url: str, token: str, cert_pem: str) -> Any:
        """One client (one TLS session pool) per workspace agent, replaced when the
        server or the credentials change."""
        from agentspaces.agent_client import AgentClient

        key = _key(url, token, cert_pem)
        cached = self._agents.get(uid)
        if cached is not None and cached[0] == key:
            return cached[1]
        client = AgentClient(url, token, cert_pem, timeout=self.settings.agent_timeout)
        if cached is not None:
            self._closing.append(cached[1])
        self._agents[uid] = (key, client)
        return client

    async def close_stale_clients(self) -> None:
        while self._closing:
            await self._closing.pop().aclose()
