"""The wake gateway against a real cluster, for integration tests and benchmarks: a real
Caddy listening on a loopback address, configured through its admin API by the gateway
(`start_gateway` with a kubeconfig: watches of the apiserver, the app, the sync loop),
which runs on an event loop of its own thread so synchronous tests can drive it with
plain HTTP. Requests name a URL as a user would open it and go to the address its
records point at (the gateway's, or a VM's), with the URL's host and port as Host."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from agentspaces.gateway.service import Gateway, GatewaySettings, start_gateway
from tests.component.agent_harness import CaddyProcess, free_port
from tests.support.gateway_rig import NAVIGATE
from tests.support.waiting import wait_for

START_SECONDS = 30.0


def open_at(address: str, url: str, *, navigate: bool = False, cookie: str | None = None,
            auth: tuple[str, str] | None = None) -> httpx.Response:
    """GET `url` from whatever listens at `address` (on the URL's port), as a browser
    whose resolver gave it `address` would: the Host is the URL's. Redirects are not
    followed; no cookie is kept between calls."""
    parts = urlsplit(url)
    headers = {"Host": parts.netloc, **(NAVIGATE if navigate else {})}
    if cookie:
        headers["Cookie"] = cookie
    target = f"http://{address}:{parts.port or 80}{parts.path or '/'}"
    if parts.query:
        target += f"?{parts.query}"
    with httpx.Client(timeout=15, follow_redirects=False) as client:
        return client.get(target, headers=headers, auth=auth)


@dataclass
class LiveGateway:
    address: str  # where the class's wakeGateway points
    port: int  # the class's http port (tls mode none)
    caddy: CaddyProcess
    gateway: Gateway
    loop: asyncio.AbstractEventLoop

    def open(self, url: str, *, navigate: bool = False, cookie: str | None = None,
             auth: tuple[str, str] | None = None) -> httpx.Response:
        """GET `url` at the gateway (see open_at)."""
        return open_at(self.address, url, navigate=navigate, cookie=cookie, auth=auth)

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.port}{path}"


@contextmanager
def running_gateway(kubeconfig: Path, root: Path, address: str, http_port: int
                    ) -> Iterator[LiveGateway]:
    """Caddy on `address`:`http_port` and the gateway configuring it; both stopped on
    the way out, whatever happened."""
    root.mkdir(parents=True, exist_ok=True)
    admin = f"127.0.0.1:{free_port('127.0.0.1')}"
    settings = GatewaySettings(caddy_admin=admin, listen=f"127.0.0.1:{free_port('127.0.0.1')}",
                               bind=address, http_port=http_port,
                               https_port=free_port(address))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="wake-gateway", daemon=True)
    thread.start()
    caddy = CaddyProcess(root, admin)
    gateway: Gateway | None = None
    try:
        caddy.start()
        gateway = asyncio.run_coroutine_threadsafe(
            start_gateway(settings, kubeconfig=str(kubeconfig)), loop).result(START_SECONDS)
        wait_for(lambda: gateway is not None and gateway.synced_once, START_SECONDS,
                 "the gateway's first config in Caddy")
        yield LiveGateway(address, http_port, caddy, gateway, loop)
    finally:
        try:
            if gateway is not None:
                asyncio.run_coroutine_threadsafe(gateway.aclose(), loop).result(START_SECONDS)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(START_SECONDS)
            if not thread.is_alive():
                loop.close()
            caddy.stop()
