"""The HTTP app behind the gateway's Caddy (loopback only).

Requests Caddy forwards carry the gateway's per-process key; they are answered for the
workspace their Host names:

- the page's script and stylesheet, to anyone;
- a public port: 503 "stopped", never a wake;
- a share link (`?agentspaces-share=` or its cookie) on a `link` port: its holder is let
  in for that port only; a bad link in the URL is 403 with no detail;
- otherwise the workspace's password, exactly as its VM asks for it (webauth: the
  login page for browsers, basic auth for scripts, the same session cookie signed
  with the Secret's `sessionKey`, so it stays valid on the woken VM);
- signed in: `/.agentspaces/gateway/status` is the state as JSON; a browser navigation
  gets the waking page and, when allowed, wakes the workspace (annotations
  `agentspaces.dev/wake` and `agentspaces.dev/woken-by`); anything else is 503 with
  Retry-After and never wakes.

Requests without the key are Caddy's own: `GET /ask?domain=` (on-demand TLS) and
`/healthz`.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

from agentspaces.gateway import pages
from agentspaces.gateway.access import Access, AccessCache, fallback_session_key
from agentspaces.gateway.caddy_config import CLIENT_HEADER, FRONT_KEY_HEADER, SCHEME_HEADER
from agentspaces.gateway.pages import Outcome
from agentspaces.gateway.policy import (
    AskPolicy,
    RequestTraits,
    WakeLimiter,
    WakeOn,
    is_navigation,
)
from agentspaces.gateway.registry import Registry
from agentspaces.gateway.served import (
    WAKE_ANNOTATION,
    WOKEN_BY_ANNOTATION,
    RouteKind,
    Served,
)
from agentspaces_vm import share_links
from agentspaces_vm.webauth import (
    LOGIN_PATH,
    MAX_LOGIN_BODY,
    Answer,
    AttemptLimiter,
    WebAuth,
    WebRequest,
    origin_allowed,
    session_cookies,
)

log = logging.getLogger(__name__)

Patch = Callable[[str, str, Mapping[str, str]], Awaitable[None]]
"""(namespace, name, annotations) -> None: the wake patch."""


@dataclass(frozen=True)
class Password:
    username: str


@dataclass(frozen=True)
class ShareHolder:
    port: int
    may_wake: bool


Who = Password | ShareHolder


@dataclass
class GatewayApp:
    registry: Registry
    access: AccessCache
    patch: Patch
    front_key: str
    wall: Callable[[], float]
    monotonic: Callable[[], float]
    wake_on: WakeOn = WakeOn.NAVIGATION
    ask: AskPolicy = field(default_factory=AskPolicy)
    healthy: Callable[[], bool] = lambda: True
    wakes: int = 0  # wake patches sent (a figure for tests and logs)
    _auth: dict[tuple[str, bytes | None], WebAuth] = field(default_factory=dict)
    _fallback_keys: dict[str, bytes] = field(default_factory=dict)
    _pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="gateway-auth"))
    _limiter: AttemptLimiter | None = None
    _wake_limiter: WakeLimiter | None = None

    def __post_init__(self) -> None:
        # One password-attempt limit per client across every workspace.
        self._limiter = AttemptLimiter(self.monotonic)
        self._wake_limiter = WakeLimiter(self.monotonic)

    def make(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _cleanup(self, _app: web.Application) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- dispatch ---------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not hmac.compare_digest(request.headers.get(FRONT_KEY_HEADER, "").encode(),
                                   self.front_key.encode()):
            return self._internal(request)
        answer, cookie = await self._public(request)
        if answer.status >= 400 or request.path.startswith(LOGIN_PATH):
            log.info("%s %s %s -> %d", request.method, request.headers.get("Host", ""),
                     request.path[:200], answer.status)
        response = web.Response(status=answer.status, body=answer.body)
        for name, value in answer.headers:
            response.headers.add(name, value)
        if cookie:
            response.headers.add("Set-Cookie", cookie)
        return response

    def _internal(self, request: web.Request) -> web.Response:
        if request.method == "GET" and request.path == "/ask":
            domains = request.query.getall("domain", [])
            allowed = len(domains) == 1 and self.ask.allowed(
                domains[0], self.registry.certificate_hosts())
            return web.json_response({"allowed": allowed}, status=200 if allowed else 403)
        if request.method == "GET" and request.path == "/healthz":
            ok = self.healthy()
            return web.Response(status=200 if ok else 503, text="ok\n" if ok else "syncing\n")
        return web.Response(status=404, text="not found\n")

    async def _public(self, request: web.Request) -> tuple[Answer, str | None]:
        host_header = request.headers.get("Host", "")
        found = self.registry.find(urlsplit(f"//{host_header}").hostname or "")
        if found is None:
            return pages.unknown_host(), None
        ws, port = found
        asset = pages.asset(request.path)
        if asset is not None:
            return asset, None
        visibility = "private" if port is None else ws.port_visibility(port)
        if visibility == "public":
            return pages.stopped_public(), None
        req = self._web_request(request)
        try:
            access = await self.access.get(ws.namespace, ws.name)
        except Exception as err:  # the apiserver unreachable, or a Secret not ours to read
            log.warning("reading %s's access Secret failed: %s", ws.key, err)
            return pages.unavailable(), None
        if request.path == LOGIN_PATH:
            body = await request.content.read(MAX_LOGIN_BODY + 1)
            return await self._run(self._webauth(ws, access).login, req, body[:MAX_LOGIN_BODY],
                                   access.account()), None
        who: Who | None = None
        tokens = request.query.getall(share_links.QUERY_PARAM, [])
        if tokens:
            # As on the VM: a link is exchanged for a cookie and the same URL without
            # it; a bad one (tampered, expired, revoked, another port) is a bare 403.
            grant = (self._verify(ws, access, port, visibility, tokens[0])
                     if len(tokens) == 1 and request.method == "GET" else None)
            if grant is None:
                return pages.forbidden(), None
            return _redeemed(request), self._share_cookie(req, tokens[0], grant.expires)
        if visibility == "link":
            for candidate in session_cookies(req.cookie, _share_cookie_name(req))[:4]:
                grant = self._verify(ws, access, port, visibility, candidate)
                if grant is not None:
                    who = ShareHolder(grant.port, grant.may_wake)
                    break
        if who is None:
            answer = await self._run(self._webauth(ws, access).check, req, access.account())
            if answer.status != 204:
                return answer, None
            who = Password(access.username or "")
        elif not origin_allowed(req):
            return pages.forbidden(), None
        password = isinstance(who, Password)
        if request.path == pages.STATE_PATH:
            route = self.registry.loaded_route(ws.host)
            ready = route is not None and route.kind is RouteKind.SERVER
            return pages.state_answer(pages.state(ws, ready=ready, messages=password)), None
        traits = RequestTraits.from_headers(request.method, request.headers)
        if not is_navigation(traits):
            return pages.not_now(ws), None
        outcome, retry = await self._wake(ws, who, req.client)
        return pages.waking_page(ws, outcome, messages=password, retry=retry), None

    # -- pieces -----------------------------------------------------------------------

    @staticmethod
    def _web_request(request: web.Request) -> WebRequest:
        h = request.headers
        return WebRequest(
            method=request.method, uri=request.path_qs, host=h.get("Host", ""),
            scheme=h.get(SCHEME_HEADER) or "http",
            client=h.get(CLIENT_HEADER) or request.remote or "",
            origin=h.get("Origin"), fetch_site=h.get("Sec-Fetch-Site"),
            fetch_mode=h.get("Sec-Fetch-Mode"), upgrade=h.get("Upgrade"),
            accept=h.get("Accept", ""), authorization=h.get("Authorization"),
            cookie=h.get("Cookie"))

    async def _run(self, fn: Callable[..., Answer], *args: object) -> Answer:
        """webauth hashes passwords (scrypt): off the event loop, two at a time."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _webauth(self, ws: Served, access: Access) -> WebAuth:
        key = access.session_key
        if key is None:
            key = self._fallback_keys.setdefault(ws.key, fallback_session_key())
        cache_key = (ws.key, access.session_key)
        auth = self._auth.get(cache_key)
        if auth is None:
            for stale in [k for k in self._auth if k[0] == ws.key]:
                del self._auth[stale]  # the session key was rotated
            auth = self._auth[cache_key] = WebAuth(key, wall_clock=self.wall,
                                                   monotonic=self.monotonic,
                                                   limiter=self._limiter)
        return auth

    def _verify(self, ws: Served, access: Access, port: int | None, visibility: str,
                token: str) -> share_links.ShareGrant | None:
        """Only a `link` port accepts links; the token names its workspace and port."""
        if port is None or visibility != "link" or access.share_link_key is None:
            return None
        return share_links.verify(access.share_link_key, token, ws.host, port, self.wall())

    def _share_cookie(self, req: WebRequest, token: str, expires: int) -> str:
        """The link's token as a host-only cookie named as the VM names it, so the
        page's polls and, after the wake, the VM accept it. Lax: links are opened from
        elsewhere (a chat, a mail)."""
        age = max(1, expires - int(self.wall()))
        secure = "; Secure" if req.scheme == "https" else ""
        return (f"{_share_cookie_name(req)}={token}; Path=/; Max-Age={age}; HttpOnly; "
                f"SameSite=Lax{secure}")

    async def _wake(self, ws: Served, who: Who, client: str) -> tuple[Outcome, int | None]:
        assert self._wake_limiter is not None
        if ws.starting or ws.ready:
            return Outcome.WAKING, None
        if not ws.spec_running:
            return Outcome.OWNER_STOPPED, None
        if self.wake_on is WakeOn.NEVER:
            return Outcome.WAKE_DISABLED, None
        if isinstance(who, ShareHolder) and not who.may_wake:
            return Outcome.LINK_CANNOT_WAKE, None
        if not ws.wakeable:
            return Outcome.WAKING, None  # e.g. stopping: the page shows what happens
        retry = self._wake_limiter.client_retry_after(client)
        if retry is not None:
            return Outcome.TOO_MANY, retry
        if not self._wake_limiter.workspace_allowed(ws.key):
            return Outcome.WAKING, None  # asked for moments ago
        address = _address(client)
        woken_by = (f"gateway: {who.username} from {address}" if isinstance(who, Password)
                    else f"gateway: share link for port {who.port} from {address}")
        try:
            await self.patch(ws.namespace, ws.name, {
                WAKE_ANNOTATION: f"gateway-{int(self.wall())}", WOKEN_BY_ANNOTATION: woken_by})
        except Exception as err:  # the page still shows the state; a reload asks again
            log.warning("waking %s failed: %s", ws.key, err)
            return Outcome.WAKING, None
        self.wakes += 1
        log.info("waking %s (%s)", ws.key, woken_by)
        return Outcome.WAKING, None


def _share_cookie_name(req: WebRequest) -> str:
    return ("__Host-" if req.scheme == "https" else "") + share_links.COOKIE


def _redeemed(request: web.Request) -> Answer:
    """303 to the same path and query without the link's token."""
    kept = [(k, v) for k, v in request.query.items() if k != share_links.QUERY_PARAM]
    target = request.rel_url.with_query(kept) if kept else request.rel_url.with_query(None)
    location = str(target)
    if not location.startswith("/") or location.startswith("//"):
        location = "/"
    return Answer(303, (("Location", location), ("Referrer-Policy", "no-referrer"),
                        ("Cache-Control", "no-store")))


def _address(client: str) -> str:
    try:
        return str(ipaddress.ip_address(client.strip()))
    except ValueError:
        return "unknown address"
