"""The wake gateway with the real Caddy on loopback: the gateway app and its Caddy,
configured through the admin API, for workspaces from an in-memory source (what the
apiserver would show). A stand-in "new VM" checks the session cookie with the VM's own
webauth code and the same session key, as the woken VM would."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from cryptography import x509

from agentspaces.gateway.caddy_config import CaddySettings, build_config
from agentspaces.gateway.served import ClassView, route_for, served_view
from agentspaces.pki import generate
from agentspaces_vm import share_links
from tests.component.agent_harness import CADDY, pick_loopback
from tests.support.gateway import (
    USERNAME,
    gateway_class,
    host_of,
    running_at,
    starting,
    stopped_workspace,
)
from tests.support.gateway_rig import (
    BROWSER,
    CLASS,
    LINK_PORT,
    NAME,
    NAVIGATE,
    NS,
    PASSWORD,
    PORTS,
    PRIVATE_PORT,
    PUBLIC_PORT,
    Rig,
    new_vm,
    running_rig,
    until,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(tmp_path) as r:
        yield r


# -- the tests ------------------------------------------------------------------------


async def test_unknown_hosts_get_404(rig: Rig) -> None:
    for host in ("example.test", f"other.{rig.host.partition('.')[2]}", f"evil.{rig.host}",
                 f"{rig.host}.evil.test", f"0{LINK_PORT}.{rig.host}", f"70000.{rig.host}"):
        resp = await rig.get(host=host, headers=NAVIGATE)
        assert resp.status_code == 404, host
        assert resp.text == "unknown host\n"
    assert rig.source.secret_reads == 0  # nothing read for a host it does not serve


async def test_signed_out_and_background_requests_never_wake(rig: Rig) -> None:
    curl = await rig.get()
    assert curl.status_code == 401
    assert curl.headers["www-authenticate"].startswith("Basic realm=")
    browser = await rig.get(headers=NAVIGATE)
    assert browser.status_code == 401 and 'name="password"' in browser.text
    unauthenticated = []
    for i in range(20):
        if i % 4 == 0:
            unauthenticated.append(await rig.get(f"/p{i}", auth=("agent", "wrong")))
        elif i % 4 == 1:
            unauthenticated.append(await rig.get(f"/p{i}", host=f"{LINK_PORT}.{rig.host}",
                                                 headers=NAVIGATE))
        else:
            unauthenticated.append(await rig.get(f"/p{i}", headers=NAVIGATE))
    assert {r.status_code for r in unauthenticated} == {401}
    authed = ("agent", PASSWORD)
    background = [
        await rig.get("/api/poll", auth=authed, headers={
            "User-Agent": BROWSER, "Accept": "*/*", "Sec-Fetch-Mode": "cors",
            "Sec-Fetch-Dest": "empty", "Sec-Fetch-Site": "same-origin"}),
        await rig.get("/api/poll", auth=authed, headers={"User-Agent": BROWSER,
                                                          "Accept": "application/json"}),
        await rig.request("HEAD", "/", auth=authed, headers=NAVIGATE),
        await rig.request("POST", "/api/save", auth=authed, content=b"{}",
                          headers={"User-Agent": BROWSER, "Content-Type": "application/json"}),
        await rig.get("/ws", auth=authed, headers={**NAVIGATE, "Connection": "Upgrade",
                                                   "Upgrade": "websocket",
                                                   "Sec-WebSocket-Version": "13",
                                                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZQ=="}),
        await rig.get("/", auth=authed, headers={**NAVIGATE, "Sec-Purpose": "prefetch"}),
        await rig.get("/", auth=authed, headers={**NAVIGATE, "Sec-Fetch-Dest": "iframe"}),
        await rig.get("/", auth=authed, headers={
            **NAVIGATE, "User-Agent": "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"}),
        await rig.get("/", auth=authed, headers={"Accept": "text/html",
                                                 "User-Agent": "curl/8.5.0"}),
    ]
    for resp in background:
        assert resp.status_code == 503, (resp.request.method, resp.request.headers)
        assert resp.headers["retry-after"] == "30"
    await asyncio.sleep(0.2)
    assert rig.source.patches == []
    assert rig.gateway.app.wakes == 0


async def test_a_signed_in_navigation_shows_the_waking_page_and_wakes_once(rig: Rig) -> None:
    cookie = await rig.login()
    pages = [await rig.get("/src/app.py", headers={**NAVIGATE, "Cookie": cookie})
             for _ in range(3)]
    page = pages[0]
    assert page.status_code == 200
    assert f"<title>Waking {NAME}</title>" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "<script>" not in page.text and "/.agentspaces/gateway/waking.js" in page.text
    script = await rig.get("/.agentspaces/gateway/waking.js")
    assert script.status_code == 200 and "location.reload" in script.text
    assert script.headers["content-type"].startswith("text/javascript")
    # Three navigations, one wake, with who and from where.
    assert len(rig.source.patches) == 1
    namespace, name, annotations = rig.source.patches[0]
    assert (namespace, name) == (NS, NAME)
    assert annotations["agentspaces.dev/wake"] == f"gateway-{int(rig.clock())}"
    assert annotations["agentspaces.dev/woken-by"] == f"gateway: {USERNAME} from 127.0.0.1"
    # Basic auth navigations wake too (another workspace state: a wake is pending now).
    again = await rig.get("/", auth=("agent", PASSWORD), headers=NAVIGATE)
    assert again.status_code == 200 and len(rig.source.patches) == 1


async def test_progress_endpoint_follows_the_workspace(rig: Rig) -> None:
    path = "/.agentspaces/gateway/status"
    assert (await rig.get(path)).status_code == 401
    cookie = {"Cookie": await rig.login()}
    first = (await rig.get(path, headers=cookie)).json()
    assert first["phase"] == "Stopped" and first["ready"] is False
    assert {"type": "Ready", "status": "False", "reason": "Stopped",
            "message": "stopped after 30m idle"} in first["conditions"]
    assert rig.source.patches == []  # reading the state never wakes
    await rig.get("/", headers={**NAVIGATE, **cookie})
    rig.source.put(starting(rig.source.get(NS, NAME), "waiting for the agent"))
    await rig.sync()
    now = (await rig.get(path, headers=cookie)).json()
    assert now["phase"] == "Starting" and now["starting"] is True and now["ready"] is False
    assert any(c["message"] == "creating server <b>cx23</b>" for c in now["conditions"])
    page = await rig.get("/", headers={**NAVIGATE, **cookie})
    assert "creating server &lt;b&gt;cx23&lt;/b&gt;" in page.text  # escaped
    assert len(rig.source.patches) == 1  # already starting: no second wake


async def test_ready_workspace_is_proxied_to_its_new_server_until_the_ttl_passes(
        rig: Rig) -> None:
    cookie = {"Cookie": await rig.login()}
    await rig.get("/", headers={**NAVIGATE, **cookie})
    vm_addr = pick_loopback()
    runner = web.AppRunner(web.Application())
    runner.app.router.add_route("*", "/{tail:.*}", new_vm(rig))
    await runner.setup()
    try:
        await web.TCPSite(runner, vm_addr, rig.port).start()
        now = rig.clock()
        rig.source.put(running_at(rig.source.get(NS, NAME), vm_addr, ready_at=now,
                                  changed_at=now - 5))
        await rig.sync()
        state = (await rig.get("/.agentspaces/gateway/status", headers=cookie)).json()
        assert state["ready"] is True  # the page reloads now
        resp = await rig.get("/src/app.py", headers={**NAVIGATE, **cookie})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"vm": True, "host": rig.host_header(), "path": "/src/app.py"}
        port_host = f"{LINK_PORT}.{rig.host}"
        assert (await rig.get("/", host=port_host, headers=NAVIGATE)).status_code == 401
        assert (await rig.get("/", headers=NAVIGATE)).status_code == 401  # no cookie: VM says
        # Until ttl (60) + margin (30) after the later of changedAt and Ready (a browser
        # may still hold the gateway's address or a connection to it), then no route.
        rig.clock.now = now + 60 + 29
        await rig.sync()
        assert (await rig.get("/src/app.py", headers={**NAVIGATE, **cookie})).status_code == 200
        rig.clock.now = now + 60 + 31
        await rig.sync()
        gone = await rig.get("/src/app.py", headers={**NAVIGATE, **cookie})
        assert gone.status_code == 404 and gone.text == "unknown host\n"
        assert rig.host not in json.dumps(rig.config())
    finally:
        await runner.cleanup()


async def test_share_links(rig: Rig) -> None:
    link_host = f"{LINK_PORT}.{rig.host}"
    q = share_links.QUERY_PARAM

    async def follow(token: str, host: str = link_host) -> tuple[httpx.Response, str]:
        """Open a link: the redeemed cookie and the page the redirect leads to."""
        redeemed = await rig.get("/src", host=host, params={q: token, "x": "1"},
                                 headers=NAVIGATE)
        if redeemed.status_code != 303:
            return redeemed, ""
        assert redeemed.headers["location"] == "/src?x=1"  # the token left the URL
        cookie = redeemed.headers["set-cookie"].split(";")[0]
        assert cookie == f"agentspaces-share={token}"
        assert "HttpOnly" in redeemed.headers["set-cookie"]
        page = await rig.get("/src?x=1", host=host, headers={**NAVIGATE, "Cookie": cookie})
        return page, cookie

    watching, cookie = await follow(rig.token(LINK_PORT, may_wake=False))
    assert watching.status_code == 200 and "This link does not wake it" in watching.text
    assert rig.source.patches == []
    # The cookie is enough for the page's polls; the holder sees no condition messages.
    state = await rig.get("/.agentspaces/gateway/status", host=link_host,
                          headers={"Cookie": cookie})
    assert state.status_code == 200
    assert all("message" not in c for c in state.json()["conditions"])
    # It opens only its own port: the IDE and other ports still ask for the password.
    for host in (rig.host, f"{PRIVATE_PORT}.{rig.host}"):
        assert (await rig.get("/", host=host, headers={**NAVIGATE, "Cookie": cookie})
                ).status_code == 401

    for bad in (rig.token(LINK_PORT, may_wake=True)[:-2] + "AA",  # tampered
                rig.token(LINK_PORT, may_wake=True, expires_in=-1),  # expired
                rig.token(LINK_PORT, may_wake=True, key=b"k" * 32),  # another key
                "garbage"):
        resp, _ = await follow(bad)
        assert resp.status_code == 403 and resp.text == "forbidden\n"
    # A link for one port never opens another port, the IDE, or a private port.
    other = rig.token(LINK_PORT, may_wake=True)
    for host in (f"{PRIVATE_PORT}.{rig.host}", rig.host):
        assert (await follow(other, host))[0].status_code == 403
    assert (await follow(rig.token(PRIVATE_PORT, may_wake=True),
                         f"{PRIVATE_PORT}.{rig.host}"))[0].status_code == 403
    twice = await rig.get("/", host=link_host, headers=NAVIGATE,
                          params=[(q, other), (q, other)])
    assert twice.status_code == 403
    assert rig.source.patches == []

    woke, _ = await follow(rig.token(LINK_PORT, may_wake=True))
    assert woke.status_code == 200 and f"Waking {NAME}" in woke.text
    assert [p[2]["agentspaces.dev/woken-by"] for p in rig.source.patches] == [
        f"gateway: share link for port {LINK_PORT} from 127.0.0.1"]

    # Rotating the link key revokes every link, cookies included, within seconds.
    assert (await rig.get("/", host=link_host, headers={**NAVIGATE, "Cookie": cookie})
            ).status_code == 200
    rotated = dict(rig.source.secrets[f"{NS}/{NAME}-access"],
                   shareLinkKey=share_links.new_key())
    rig.source.put_secret(NS, f"{NAME}-access", rotated)
    await asyncio.sleep(rig.gateway.access.max_age + 0.1)
    assert (await rig.get("/", host=link_host, headers={**NAVIGATE, "Cookie": cookie})
            ).status_code == 401  # back to the password
    assert (await follow(cookie.partition("=")[2]))[0].status_code == 403


async def test_public_port_says_stopped_and_never_wakes(rig: Rig) -> None:
    host = f"{PUBLIC_PORT}.{rig.host}"
    resp = await rig.get("/", host=host, headers=NAVIGATE, auth=("agent", PASSWORD))
    assert resp.status_code == 503 and resp.text == "stopped\n"
    assert rig.source.patches == [] and rig.source.secret_reads == 0


async def test_owner_stopped_workspace_is_not_woken(rig: Rig) -> None:
    rig.source.put(stopped_workspace(NAME, NS, CLASS, ports=PORTS, running=False))
    await rig.sync()
    page = await rig.get("/", headers=NAVIGATE, auth=("agent", PASSWORD))
    assert page.status_code == 200 and "stopped by its owner" in page.text
    assert rig.source.patches == []


async def test_ask_endpoint_allows_only_served_hosts(rig: Rig) -> None:
    ask = f"http://{rig.gateway.settings.listen}/ask"

    async def allowed(domain: str) -> bool:
        resp = await rig.client.get(ask, params={"domain": domain})
        assert resp.status_code in (200, 403)
        return resp.status_code == 200

    assert await allowed(rig.host)
    assert await allowed(f"{LINK_PORT}.{rig.host}")
    assert await allowed(f"{PRIVATE_PORT}.{rig.host}")
    for other in ("example.test", f"www.{rig.host}", f"0{LINK_PORT}.{rig.host}",
                  f"99999.{rig.host}", f"a.{LINK_PORT}.{rig.host}",
                  host_of("nobody", NS)):
        assert not await allowed(other), other
    # Undeclared ports only up to a budget per workspace (CAs count certificates).
    extra = [await allowed(f"{p}.{rig.host}") for p in range(10000, 10040)]
    assert extra.count(True) == 15  # 16 undeclared ports, one (5173) taken above
    assert await allowed(f"{LINK_PORT}.{rig.host}")  # declared ports stay allowed
    rig.source.delete(NS, NAME)
    await rig.sync()
    assert not await allowed(rig.host)
    assert not await allowed(f"{LINK_PORT}.{rig.host}")


async def test_deleting_or_opting_out_removes_the_routes(rig: Rig) -> None:
    assert rig.host in json.dumps(rig.config())
    rig.source.put(stopped_workspace(NAME, NS, CLASS, ports=PORTS, on_request=False))
    await rig.sync()
    assert (await rig.get(headers=NAVIGATE)).status_code == 404
    assert rig.host not in json.dumps(rig.config())
    rig.source.put(stopped_workspace(NAME, NS, CLASS, ports=PORTS))
    await rig.sync()
    assert (await rig.get(headers=NAVIGATE)).status_code == 401
    loads = rig.gateway.loader.loads
    await rig.sync()
    assert rig.gateway.loader.loads == loads  # unchanged config: no POST /load
    rig.source.delete(NS, NAME)
    await rig.sync()
    assert (await rig.get(headers=NAVIGATE)).status_code == 404
    assert rig.host not in json.dumps(rig.config())


async def test_a_restarted_caddy_gets_the_config_again(rig: Rig, tmp_path: Path) -> None:
    rig.caddy.stop()
    with pytest.raises(httpx.TransportError):
        await rig.get()
    rig.caddy.start()
    rig.gateway.loader._checked_at = float("-inf")  # the next sync reads the config back
    await until(rig.gateway.sync, 10, "a reload")
    assert (await rig.get()).status_code == 401



def _peer_names(addr: str, port: int, server_name: str) -> list[str]:
    """The DNS names in the certificate the gateway presents for `server_name`."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((addr, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return cert.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


async def test_tls_internal_certificates_on_demand_and_proxy_to_the_vm(
        tmp_path: Path) -> None:
    async with running_rig(tmp_path, "internal") as rig:
        moved = await rig.client.get(f"http://{rig.addr}:{rig.plain_port}/x?y=1",
                                     headers={"Host": f"{rig.host}:{rig.plain_port}"})
        assert moved.status_code == 308
        assert moved.headers["location"] == f"https://{rig.host}:{rig.port}/x?y=1"
        # A certificate for a served host and its port hosts, from Caddy's own CA...
        names = await asyncio.to_thread(_peer_names, rig.addr, rig.port, rig.host)
        assert names == [rig.host]
        port_host = f"{LINK_PORT}.{rig.host}"
        assert await asyncio.to_thread(_peer_names, rig.addr, rig.port, port_host) == [
            port_host]
        # ...and none for anything else (the ask endpoint says no).
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.to_thread(_peer_names, rig.addr, rig.port, "other.example.test")
        assert (await rig.get()).status_code == 401
        cookie = {"Cookie": await rig.login()}
        assert cookie["Cookie"].startswith("__Host-agentspaces-session=")

        # The woken VM serves TLS with its own certificate (tls mode internal: from its
        # own Caddy's CA, so the gateway does not verify it).
        vm_addr = pick_loopback()
        creds = generate(rig.host, datetime.now(UTC))
        (tmp_path / "vm.crt").write_text(creds.cert_pem)
        (tmp_path / "vm.key").write_text(creds.key_pem)
        vm_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        vm_tls.load_cert_chain(tmp_path / "vm.crt", tmp_path / "vm.key")
        runner = web.AppRunner(web.Application())
        runner.app.router.add_route("*", "/{tail:.*}", new_vm(rig))
        await runner.setup()
        try:
            await web.TCPSite(runner, vm_addr, rig.port, ssl_context=vm_tls).start()
            now = rig.clock()
            rig.source.put(running_at(rig.source.get(NS, NAME), vm_addr, ready_at=now,
                                      changed_at=now))
            await rig.sync()
            resp = await rig.get("/src/app.py", headers={**NAVIGATE, **cookie})
            assert resp.status_code == 200, resp.text
            assert resp.json()["host"] == rig.host_header()
        finally:
            await runner.cleanup()


@pytest.mark.parametrize("tls_mode", ["none", "internal", "acme"])
def test_every_config_shape_validates(tmp_path: Path, tls_mode: str) -> None:
    """Caddy itself accepts the config for each tls mode, gateway and server routes
    alike (acme with an extra CA to verify the servers against)."""
    clock = time.time()
    klass = ClassView.from_body(gateway_class(CLASS, tls_mode=tls_mode, http_port=8080,
                                              https_port=8443))
    assert klass is not None
    stopped = served_view(stopped_workspace(NAME, NS, CLASS, ports=PORTS), {CLASS: klass})
    woken = served_view(running_at(stopped_workspace("b", NS, CLASS), "192.0.2.7",
                                   ready_at=clock, changed_at=clock), {CLASS: klass})
    assert stopped is not None and woken is not None
    settings = CaddySettings(admin_listen="127.0.0.1:2999", app_dial="127.0.0.1:8099",
                             front_key="k", ask_endpoint="http://127.0.0.1:8099/ask",
                             upstream_ca_files=(str(tmp_path / "ca.pem"),),
                             trusted_proxies=("173.245.48.0/20",))
    config = build_config(settings, [(stopped, route_for(stopped, clock, 30)),
                                     (woken, route_for(woken, clock, 30))])
    (tmp_path / "ca.pem").write_text(generate("ca.example.test", datetime.now(UTC)).cert_pem)
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(config))
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "d"),
           "XDG_CONFIG_HOME": str(tmp_path / "c"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([str(CADDY), "validate", "--config", str(path)], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    proxy = json.dumps(config["apps"]["http"]["servers"])
    assert ("insecure_skip_verify" in proxy) == (tls_mode == "internal")
