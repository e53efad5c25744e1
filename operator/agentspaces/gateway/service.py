"""The running gateway: the source's watches, the sync loop that turns workspaces into
Caddy's config, and the app behind Caddy. `start_gateway` starts all of it and returns
a `Gateway` to close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from agentspaces.gateway.access import AccessCache
from agentspaces.gateway.app import GatewayApp
from agentspaces.gateway.caddy_admin import CaddyLoader
from agentspaces.gateway.caddy_config import CaddySettings, build_config
from agentspaces.gateway.policy import WakeOn
from agentspaces.gateway.registry import Registry
from agentspaces.gateway.served import ClassView, Route, Served, route_for, served_view
from agentspaces.gateway.source import KubeSource, Source

log = logging.getLogger(__name__)

IDLE_SYNC_SECONDS = 5.0  # at the latest, the routes are rebuilt this often
RETRY_SECONDS = 1.0  # while Caddy's admin API does not answer yet
CLOSE_SECONDS = 5.0  # how long a close waits for the watches and the sync loop to end


@dataclass(frozen=True)
class GatewaySettings:
    caddy_admin: str  # loopback host:port of Caddy's admin API
    listen: str  # loopback host:port of the gateway app
    bind: str = ""  # where Caddy listens for users ("" = every interface)
    http_port: int = 80
    https_port: int = 443
    wake_on: WakeOn = WakeOn.NAVIGATION
    # Added to changedAt + dns.ttl before the routes to a woken server go away.
    margin_seconds: float = 30.0
    health_listen: str | None = None  # host:port for /healthz only (kubelet probes)
    upstream_ca_files: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass
class Gateway:
    source: Source
    settings: GatewaySettings
    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    registry: Registry = field(default_factory=Registry)
    front_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    synced_once: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _runners: list[web.AppRunner] = field(default_factory=list)
    _versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.loader = CaddyLoader(self.settings.caddy_admin)
        self.access = AccessCache(self.source.read_secret, self.monotonic)
        self.app = GatewayApp(registry=self.registry, access=self.access,
                              patch=self.source.patch_annotations, front_key=self.front_key,
                              wall=self.wall, monotonic=self.monotonic,
                              wake_on=self.settings.wake_on,
                              healthy=lambda: self.synced_once)

    @property
    def caddy_settings(self) -> CaddySettings:
        s = self.settings
        return CaddySettings(admin_listen=s.caddy_admin, app_dial=s.listen,
                             front_key=self.front_key,
                             ask_endpoint=f"http://{s.listen}/ask", bind=s.bind,
                             http_port=s.http_port, https_port=s.https_port,
                             upstream_ca_files=s.upstream_ca_files,
                             trusted_proxies=s.trusted_proxies)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> Gateway:
        host, port = _split(self.settings.listen)
        await self._serve(self.app.make(), host, port)
        if self.settings.health_listen:
            health = web.Application()
            health.router.add_get("/healthz", self.app.handle)
            await self._serve(health, *_split(self.settings.health_listen))
        self._tasks.append(asyncio.create_task(self.source.run(self.changed),
                                               name="gateway-source"))
        self._tasks.append(asyncio.create_task(self._loop(), name="gateway-sync"))
        log.info("wake gateway: app on %s, caddy admin at %s", self.settings.listen,
                 self.settings.caddy_admin)
        return self

    async def _serve(self, app: web.Application, host: str, port: int) -> None:
        # No access log: URLs may hold share links.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, host, port).start()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded, and the caller's own cancel still reaches it (asyncio.wait
            # neither raises the tasks' errors nor hides a cancel of the caller).
            done, pending = await asyncio.wait(self._tasks, timeout=CLOSE_SECONDS)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("gateway task %s failed", task.get_name(),
                              exc_info=task.exception())
            if pending:
                log.error("gateway tasks still running after %.0f s: %s", CLOSE_SECONDS,
                          ", ".join(t.get_name() for t in pending))
        self._tasks.clear()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        await self.source.aclose()

    def changed(self) -> None:
        self._changed.set()

    # -- sync -------------------------------------------------------------------------

    def desired(self) -> list[tuple[Served, Route]]:
        """Every served workspace with a route now."""
        classes = {v.name: v for v in (ClassView.from_body(b)
                                       for b in self.source.classes().values()) if v}
        now = self.wall()
        routed = []
        for key, body in self.source.workspaces().items():
            version = str((body.get("metadata") or {}).get("resourceVersion", ""))
            if self._versions.get(key) != version:
                self._versions[key] = version
                namespace, _, name = key.partition("/")
                self.access.invalidate(namespace, name)  # its Secret may have changed too
            ws = served_view(body, classes)
            route = route_for(ws, now, self.settings.margin_seconds) if ws else None
            if ws is not None and route is not None:
                routed.append((ws, route))
        for gone in set(self._versions) - set(self.source.workspaces()):
            del self._versions[gone]
        return routed

    async def sync(self) -> bool:
        """Rebuild the routes and give Caddy the config if it changed; True when Caddy
        runs the current routes."""
        routed = self.desired()
        self.registry.update(routed)
        self.access.retain({ws.key for ws, _ in routed})
        self.app.ask.forget(frozenset(ws.host for ws, _ in routed))
        config = build_config(self.caddy_settings, routed)
        if not await self.loader.apply(config, self.monotonic()):
            return False
        self.registry.loaded({ws.host: route for ws, route in routed})
        self.synced_once = True
        return True

    def _next_wait(self, ok: bool) -> float:
        if not ok:
            return RETRY_SECONDS
        now = self.wall()
        due = [r.until - now for r in self.registry.routes.values() if r.until is not None]
        return max(0.05, min([IDLE_SYNC_SECONDS, *due]))

    async def _loop(self) -> None:
        while True:
            self._changed.clear()
            try:
                ok = await self.sync()
            except Exception:  # a bug must not end the gateway; logged, retried
                log.exception("gateway sync failed")
                ok = False
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that
            # lands as the event is set, and aclose would wait on this loop for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_wait(ok)):
                    await self._changed.wait()


async def start_gateway(settings: GatewaySettings, *, source: Source | None = None,
                        kubeconfig: str | None = None, context: str | None = None,
                        in_cluster: bool = False, wall: Callable[[], float] = time.time,
                        monotonic: Callable[[], float] = time.monotonic) -> Gateway:
    """A started gateway (its app listening, its watches and sync running); close it
    with `await gateway.aclose()`. Without `source`, it watches the cluster the
    kubeconfig (or, `in_cluster`, the pod's ServiceAccount) names."""
    if source is None:
        from agentspaces.dashboard.kubeapi import Cluster

        cluster = Cluster.in_cluster() if in_cluster else Cluster.from_kubeconfig(
            kubeconfig, context)
        source = KubeSource(cluster)
    return await Gateway(source, settings, wall=wall, monotonic=monotonic).start()
