"""The wake gateway on loopback for tests: the real Caddy, the gateway (app, watches of an
in-memory source, sync loop) configured to use it, one workspace stopped for inactivity
with its access Secret, and a stand-in "new VM" that checks the session cookie with the
VM's own webauth code and the workspace's session key, as the woken VM would."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from agentspaces.gateway.service import Gateway, GatewaySettings, start_gateway
from agentspaces_vm import share_links
from agentspaces_vm.webauth import Account, WebAuth, WebRequest
from tests.component.agent_harness import CaddyProcess, free_port, pick_loopback
from tests.support.clock import FakeClock
from tests.support.gateway import (
    MemorySource,
    access_secret,
    gateway_class,
    host_of,
    stopped_workspace,
)

NS, NAME, CLASS = "team", "demo", "gw"
PASSWORD = "correct-horse-battery"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) " \
          "Chrome/131.0.0.0 Safari/537.36"
NAVIGATE = {"User-Agent": BROWSER, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
            "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document",
            "Sec-Fetch-Site": "none"}
LINK_PORT, PRIVATE_PORT, PUBLIC_PORT = 3000, 5173, 8081
PORTS = [{"port": LINK_PORT, "visibility": "link"},
         {"port": PUBLIC_PORT, "visibility": "public"}]


@dataclass
class Rig:
    source: MemorySource
    gateway: Gateway
    caddy: CaddyProcess
    addr: str
    port: int
    clock: FakeClock
    client: httpx.AsyncClient
    share_key: bytes
    session_key: str
    scheme: str = "http"
    plain_port: int = 0  # the class's http_port (the same as `port` for tls mode none)

    @property
    def host(self) -> str:
        return host_of(NAME, NS)

    def host_header(self, host: str | None = None) -> str:
        return f"{host or self.host}:{self.port}"

    async def request(self, method: str, path: str = "/", *, host: str | None = None,
                      headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        try:
            return await self.client.request(
                method, f"{self.scheme}://{self.addr}:{self.port}{path}",
                headers={"Host": self.host_header(host), **(headers or {})},
                extensions={"sni_hostname": host or self.host}, **kw)
        finally:
            self.client.cookies.clear()  # every test sends the cookies it means to

    async def get(self, path: str = "/", **kw: Any) -> httpx.Response:
        return await self.request("GET", path, **kw)

    async def sync(self) -> None:
        assert await self.gateway.sync(), self.gateway.loader.last_error

    async def login(self, host: str | None = None) -> str:
        """Sign in through the login form; the session cookie as a Cookie header."""
        resp = await self.request(
            "POST", "/.agentspaces/login", host=host,
            headers={"User-Agent": BROWSER, "Origin": f"{self.scheme}://{self.host_header(host)}",
                     "Content-Type": "application/x-www-form-urlencoded"},
            content=f"password={PASSWORD}&next=/src/app.py")
        assert resp.status_code == 303, resp.text
        assert resp.headers["location"] == "/src/app.py"
        name = "__Host-agentspaces-session" if self.scheme == "https" else "agentspaces-session"
        return f"{name}={resp.cookies[name]}"

    def token(self, port: int, *, may_wake: bool, expires_in: float = 3600,
              key: bytes | None = None) -> str:
        return share_links.mint(key or self.share_key, self.host, port,
                                int(self.clock() + expires_in), may_wake=may_wake)

    def config(self) -> Any:
        with httpx.Client(timeout=5) as c:
            return c.get(f"http://{self.caddy.admin}/config/",
                         headers={"Host": f"localhost:{self.caddy.admin.rpartition(':')[2]}"}
                         ).json()


async def until(probe: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def running_rig(tmp_path: Path, tls_mode: str = "none") -> AsyncIterator[Rig]:
    addr = pick_loopback()
    port, https_port, admin, app = (free_port(addr) for _ in range(4))
    clock = FakeClock(time.time())
    share_key, session_key = share_links.new_key(), share_links.new_key()
    source = MemorySource()
    source.put_class(gateway_class(CLASS, tls_mode=tls_mode, http_port=port,
                                   https_port=https_port, ttl=60))
    source.put_secret(NS, f"{NAME}-access", access_secret(PASSWORD, share_key, session_key))
    source.put(stopped_workspace(NAME, NS, CLASS, ports=PORTS, changed_at=clock() - 600))
    caddy = CaddyProcess(tmp_path, f"{addr}:{admin}")
    gateway: Gateway | None = None
    try:
        # The gateway first: it keeps trying until its Caddy's admin API answers.
        gateway = await start_gateway(GatewaySettings(
            caddy_admin=f"{addr}:{admin}", listen=f"{addr}:{app}", bind=addr, http_port=port,
            https_port=https_port), source=source, wall=clock)
        await asyncio.sleep(0.3)
        assert not gateway.synced_once
        caddy.start()
        await until(lambda: gateway.synced_once, 20, "the config in Caddy")
        async with httpx.AsyncClient(timeout=15, verify=False) as client:
            yield Rig(source, gateway, caddy, addr, https_port if tls_mode != "none" else port,
                      clock, client, share_links.decode_key(share_key) or b"", session_key,
                      "https" if tls_mode != "none" else "http", port)
    finally:
        if gateway is not None:
            await gateway.aclose()
        caddy.stop()


def new_vm(rig: Rig) -> Callable[[], Any]:
    """The woken VM: its Caddy asks webauth (the VM's own code, the Secret's sessionKey
    and the same password hash) before answering."""
    access = rig.source.secrets[f"{NS}/{NAME}-access"]
    auth = WebAuth(share_links.decode_key(rig.session_key) or b"", wall_clock=rig.clock)
    account = Account(access["username"], access["scryptHash"])

    async def handle(request: web.Request) -> web.Response:
        h = request.headers
        answer = await asyncio.to_thread(auth.check, WebRequest(
            method=request.method, uri=request.path_qs, host=h.get("Host", ""),
            scheme=rig.scheme, client=request.remote or "", fetch_mode=h.get("Sec-Fetch-Mode"),
            accept=h.get("Accept", ""), authorization=h.get("Authorization"),
            cookie=h.get("Cookie")), account)
        if answer.status != 204:
            return web.Response(status=answer.status, body=answer.body)
        return web.json_response({"vm": True, "host": h.get("Host"), "path": request.path})

    return handle
