"""The wake gateway's pure parts: which workspaces it serves and where their names go
over time, which requests may wake, the rate limits, the on-demand TLS question, the
access Secret cache, and the waking page's escaping."""

from __future__ import annotations

import asyncio
import copy
import hashlib
from typing import Any

import pytest

from agentspaces.gateway import pages
from agentspaces.gateway.access import AccessCache
from agentspaces.gateway.policy import (
    AskPolicy,
    RequestTraits,
    Throttle,
    WakeLimiter,
    is_navigation,
    port_label,
)
from agentspaces.gateway.served import ClassView, RouteKind, route_for, served_view
from agentspaces_vm import share_links
from agentspaces_vm.password_hash import parse_scrypt_hash
from tests.support.clock import FakeClock
from tests.support.gateway import (
    access_secret,
    gateway_class,
    host_of,
    running_at,
    starting,
    stopped_workspace,
)

CLASSES = {"gw": ClassView.from_body(gateway_class("gw", ttl=60)),
           "plain": ClassView.from_body(gateway_class("plain", wake_gateway=False))}
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36"
T0 = 1_700_000_000.0


def view(body: dict[str, Any]) -> Any:
    return served_view(body, {k: v for k, v in CLASSES.items() if v is not None})


# -- served -----------------------------------------------------------------------------


def test_served_only_with_a_gateway_class_and_on_request() -> None:
    ws = view(stopped_workspace("demo", "team", "gw"))
    assert ws is not None and ws.host == host_of("demo", "team") and ws.wakeable
    assert view(stopped_workspace("demo", "team", "plain")) is None
    assert view(stopped_workspace("demo", "team", "missing")) is None
    assert view(stopped_workspace("demo", "team", "gw", on_request=False)) is None
    deleting = stopped_workspace("demo", "team", "gw")
    deleting["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert view(deleting) is None
    unnamed = stopped_workspace("demo", "team", "gw")
    del unnamed["status"]["hostname"]
    assert view(unnamed) is None


def test_user_stop_is_not_wakeable_and_pending_wake_counts_as_starting() -> None:
    assert not view(stopped_workspace("a", "t", "gw", running=False)).wakeable
    body = stopped_workspace("a", "t", "gw")
    body["metadata"]["annotations"]["agentspaces.dev/wake"] = "gateway-1"
    assert view(body).starting
    body["status"]["wakeHandled"] = "gateway-1"
    assert not view(body).starting


def test_port_visibility_defaults_to_private() -> None:
    ws = view(stopped_workspace("a", "t", "gw", ports=[{"port": 3000, "visibility": "link"}]))
    assert ws.port_visibility(3000) == "link" and ws.port_visibility(3001) == "private"


def test_routes_over_a_stop_and_a_wake() -> None:
    stopped = stopped_workspace("a", "t", "gw", changed_at=T0 - 600)
    assert route_for(view(stopped), T0, 30).kind is RouteKind.GATEWAY
    wake = starting(stopped, "creating the server")
    assert route_for(view(wake), T0, 30).kind is RouteKind.GATEWAY
    # The records back at the server while it boots: the waking page stays reachable.
    booting = copy.deepcopy(wake)
    booting["status"]["dns"] = {"target": "Server", "changedAt": "2023-11-14T22:13:20Z"}
    assert route_for(view(booting), T0 + 3600, 30).kind is RouteKind.GATEWAY
    # Ready, records still at the gateway: proxied for as long as that lasts.
    at_gateway = running_at(stopped, "192.0.2.7", ready_at=T0, changed_at=T0 - 600,
                            target="Gateway")
    route = route_for(view(at_gateway), T0 + 86400, 30)
    assert route.kind is RouteKind.SERVER and route.until is None
    # Records at the server: until the later of changedAt and Ready, plus TTL + margin.
    ready = running_at(stopped, "192.0.2.7", ready_at=T0, changed_at=T0 - 20)
    assert route_for(view(ready), T0 + 89, 30) == route_for(view(ready), T0, 30)
    assert route_for(view(ready), T0, 30).until == T0 + 90
    assert route_for(view(ready), T0 + 90, 30) is None
    later = running_at(stopped, "192.0.2.7", ready_at=T0 - 500, changed_at=T0)
    assert route_for(view(later), T0 + 89, 30) is not None
    assert route_for(view(later), T0 + 91, 30) is None


def test_no_route_for_running_or_failed_workspaces_and_old_operators() -> None:
    body = stopped_workspace("a", "t", "gw")
    body["status"].update(phase="Failed")
    body["status"]["dns"] = {"target": "Server"}
    assert route_for(view(body), T0, 30) is None
    del body["status"]["dns"]  # an operator that does not report the target
    assert route_for(view(body), T0, 30) is None
    body["status"]["phase"] = "Stopped"
    assert route_for(view(body), T0, 30).kind is RouteKind.GATEWAY


# -- navigation, limits, ask -------------------------------------------------------------


def traits(**kw: Any) -> RequestTraits:
    base: dict[str, Any] = {"method": "GET", "fetch_mode": "navigate", "fetch_dest": "document",
                            "accept": "text/html", "user_agent": CHROME}
    return RequestTraits(**{**base, **kw})


@pytest.mark.parametrize(("kw", "wakes"), [
    ({}, True),
    ({"fetch_mode": None, "fetch_dest": None}, True),  # an older browser: Accept decides
    ({"fetch_mode": None, "fetch_dest": None, "accept": "*/*"}, False),
    ({"fetch_mode": "cors", "fetch_dest": "empty"}, False),  # fetch() from an old tab
    ({"fetch_mode": "no-cors", "fetch_dest": "script"}, False),
    ({"fetch_dest": "iframe"}, False),
    ({"method": "HEAD"}, False),
    ({"method": "POST"}, False),
    ({"upgrade": "websocket"}, False),
    ({"purpose": "prefetch"}, False),
    ({"purpose": "prefetch;prerender"}, False),
    ({"user_agent": "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"}, False),
    ({"user_agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"}, False),
    ({"user_agent": "facebookexternalhit/1.1"}, False),
    ({"user_agent": "curl/8.5.0"}, False),
    ({"user_agent": "python-httpx/0.28"}, False),
    ({"user_agent": ""}, False),
])
def test_only_a_browser_navigation_wakes(kw: dict[str, Any], wakes: bool) -> None:
    assert is_navigation(traits(**kw)) is wakes


def test_headers_map_to_traits() -> None:
    t = RequestTraits.from_headers("GET", {"Sec-Purpose": "prefetch", "User-Agent": CHROME})
    assert t.purpose == "prefetch" and not is_navigation(t)
    assert RequestTraits.from_headers("GET", {"Purpose": "prefetch"}).purpose == "prefetch"


def test_throttle_window_and_memory_bound() -> None:
    clock = FakeClock(0)
    throttle = Throttle(clock, 2, 10, max_keys=3)
    assert throttle.retry_after("a") is None and throttle.retry_after("a") is None
    assert throttle.retry_after("a") == 10
    clock.now = 10.5
    assert throttle.retry_after("a") is None
    for key in "bcde":
        throttle.retry_after(key)
    assert len(throttle._events) == 3


def test_wake_limiter_one_per_workspace_and_a_few_per_client() -> None:
    clock = FakeClock(0)
    limiter = WakeLimiter(clock)
    assert limiter.workspace_allowed("t/a") and not limiter.workspace_allowed("t/a")
    assert limiter.workspace_allowed("t/b")
    clock.now = 31
    assert limiter.workspace_allowed("t/a")
    assert [limiter.client_retry_after("2001:db8::1") for _ in range(5)] == [None] * 5
    # The same /64 is the same client.
    assert limiter.client_retry_after("2001:db8::ffff") is not None
    assert limiter.client_retry_after("192.0.2.1") is None


def test_ask_allows_served_hosts_their_ports_and_a_bounded_number_of_others() -> None:
    ask = AskPolicy(extra_ports_per_host=2)
    hosts = {"a.ws.example.test": frozenset({3000})}
    assert ask.allowed("A.WS.example.test.", hosts)
    assert ask.allowed("3000.a.ws.example.test", hosts)
    assert ask.allowed("5173.a.ws.example.test", hosts)
    assert ask.allowed("8080.a.ws.example.test", hosts)
    assert not ask.allowed("8081.a.ws.example.test", hosts)  # over the budget
    assert ask.allowed("5173.a.ws.example.test", hosts)  # already counted
    assert ask.allowed("3000.a.ws.example.test", hosts)
    for name in ("b.ws.example.test", "x.a.ws.example.test", "03000.a.ws.example.test",
                 "65536.a.ws.example.test", "1.3000.a.ws.example.test", "ws.example.test"):
        assert not ask.allowed(name, hosts), name
    ask.forget(frozenset())
    assert ask.allowed("8081.a.ws.example.test", hosts)


@pytest.mark.parametrize(("label", "port"), [("1", 1), ("65535", 65535), ("0", None),
                                             ("65536", None), ("080", None), ("x1", None),
                                             ("", None), ("123456", None)])
def test_port_label(label: str, port: int | None) -> None:
    assert port_label(label) == port


# -- the access cache --------------------------------------------------------------------


async def test_access_cache_reuses_shares_and_forgets_reads() -> None:
    clock = FakeClock(0)
    data = access_secret("pw-one", share_links.new_key(), share_links.new_key())
    reads = []

    async def read(namespace: str, name: str) -> dict[str, str] | None:
        reads.append((namespace, name))
        await asyncio.sleep(0.01)
        return dict(data) if name == "demo-access" else None

    cache = AccessCache(read, clock, max_age=3)
    got = await asyncio.gather(*(cache.get("team", "demo") for _ in range(5)))
    assert reads == [("team", "demo-access")]  # one read for five concurrent requests
    assert got[0].account() is not None and got[0].share_link_key is not None
    assert "redacted" in repr(got[0]) and data["sessionKey"] not in repr(got[0])
    await cache.get("team", "demo")
    assert len(reads) == 1
    clock.now = 3.5
    await cache.get("team", "demo")
    assert len(reads) == 2
    cache.invalidate("team", "demo")
    await cache.get("team", "demo")
    assert len(reads) == 3
    missing = await cache.get("team", "other")
    assert missing.account() is None and missing.session_key is None


async def test_an_edited_password_works_before_the_operator_rehashes_it() -> None:
    data = access_secret("old-password", share_links.new_key(), share_links.new_key())
    data["password"] = "new-password"  # edited by the user; scryptHash still the old one

    async def read(namespace: str, name: str) -> dict[str, str]:
        return dict(data)

    access = await AccessCache(read, FakeClock(0)).get("team", "demo")
    assert access.scrypt_hash is not None
    verifier = parse_scrypt_hash(access.scrypt_hash)
    assert verifier.verify(b"new-password") and not verifier.verify(b"old-password")
    assert data["passwordSha256"] != hashlib.sha256(b"new-password").hexdigest()


# -- pages --------------------------------------------------------------------------------


def test_waking_page_escapes_and_hides_messages_from_link_holders() -> None:
    body = starting(stopped_workspace("demo", "team", "gw"), "<script>alert(1)</script>")
    ws = view(body)
    page = pages.waking_page(ws, pages.Outcome.WAKING, messages=True)
    text = page.body.decode()
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    headers = dict(page.headers)
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "<script>" not in text and "style=" not in text
    link_page = pages.waking_page(ws, pages.Outcome.LINK_CANNOT_WAKE, messages=False)
    assert "alert" not in link_page.body.decode()
    state = pages.state(ws, ready=False, messages=False)
    assert state["conditions"][0] == {"type": "Ready", "status": "False"}
    limited = pages.waking_page(ws, pages.Outcome.TOO_MANY, messages=True, retry=42)
    assert limited.status == 429 and ("Retry-After", "42") in limited.headers


def test_assets_are_the_packaged_files() -> None:
    script = pages.asset("/.agentspaces/gateway/waking.js")
    assert script is not None and b"textContent" in script.body and b"innerHTML" not in \
        script.body
    assert pages.asset("/.agentspaces/gateway/other.js") is None
