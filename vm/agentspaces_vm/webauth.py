"""Who may use a private route: Caddy asks the agent (forward-auth) before every request.

Browsers and scripts share every private host (the IDE and each private port), so:

- Origin policy. A WebSocket upgrade or a state-changing method must come from the
  page's own origin: an `Origin` other than `scheme://host[:port]` of the request, or a
  `Sec-Fetch-Site` other than same-origin/none, is refused with 403. Every workspace
  shares one registrable domain, so SameSite alone would let another workspace's
  public page in.
- Browser sessions. A login page sets a host-only `SameSite=Strict; HttpOnly` cookie
  (`__Host-` and `Secure` over HTTPS) holding an HMAC-signed expiry bound to the host
  and to the password hash, so it dies on expiry and on password rotation. Browsers
  that navigate without credentials get the login page, never a basic-auth challenge
  (which the browser would replay as an ambient credential).
  The key is the workspace's delivered session key when there is one (the wake gateway
  holds the same key, so a user it signed in stays signed in here), else the agent's own.
- Share links, on ports with visibility link only (share_links.py). A GET with
  `?agentspaces-share=<token>` that verifies for this workspace host and this port is
  redirected (303) to the same URL without the token, with a host-only `HttpOnly;
  SameSite=Lax` cookie holding it until it expires; later requests with a cookie that
  still verifies pass. A token anywhere else (another port, the IDE, a bad, expired or
  revoked one) gets a bare 403, and the token never reaches the program. The password
  works on those ports as well.
- Basic auth for scripts (`curl -u`), checked against the delivered scrypt hash.
  Verified headers are cached under an HMAC of the header (never the raw value), an
  unknown username fails without hashing, and password checks are limited per client
  address, counted before hashing so concurrent guesses cannot run ahead of the limit.
  Sessions and cached credentials are checked first: someone else's failures never
  lock out a valid user.

Everything here is pure apart from the injected clocks; server.py maps HTTP onto it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import ipaddress
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote_plus

from agentspaces_vm import share_links
from agentspaces_vm.password_hash import PasswordHashError, ScryptHash, parse_scrypt_hash

LOGIN_PATH = "/.agentspaces/login"
COOKIE = "agentspaces-session"
SECURE_COOKIE = "__Host-" + COOKIE
SESSION_SECONDS = 12 * 3600
SHARE_COOKIE = share_links.COOKIE
SECURE_SHARE_COOKIE = "__Host-" + SHARE_COOKIE
REALM = "agentspaces"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_ORIGIN_FETCH_SITES = frozenset({"same-origin", "none"})
MAX_LOGIN_BODY = 4096
FAILED_CHECKS_PER_WINDOW = 10  # password checks a client may fail per window
CHECK_WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class WebRequest:
    """The parts of the user's request that decide access (as Caddy forwarded them)."""

    method: str
    uri: str
    host: str
    scheme: str
    client: str
    origin: str | None = None
    fetch_site: str | None = None
    fetch_mode: str | None = None
    upgrade: str | None = None
    accept: str = ""
    authorization: str | None = None
    cookie: str | None = None


@dataclass(frozen=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True)
class Account:
    username: str
    password_hash: str  # the delivered `$scrypt$...` string
    session_key: bytes | None = field(default=None, repr=False)
    """The workspace's session key (delivered); None: the agent's own signs sessions."""
    share_key: bytes | None = field(default=None, repr=False)
    """The workspace's share-link key (delivered); None: no link is accepted."""


@dataclass(frozen=True)
class LinkPort:
    """The request is for a port with visibility link: links signed for this workspace
    host (not the port host) and this port open it."""

    workspace_host: str
    port: int


def share_token(uri: str) -> str | None:
    """The share-link token in the request's query; None when there is none, "" when it
    is there more than once (never valid)."""
    found = [unquote_plus(value) for name, _, value in
             (part.partition("=") for part in uri.partition("?")[2].split("&"))
             if unquote_plus(name) == share_links.QUERY_PARAM]
    if not found:
        return None
    return found[0] if len(found) == 1 else ""


def without_share_token(uri: str) -> str:
    """`uri` without the share-link parameter (the other parameters kept as sent); "/"
    for anything but a local path, so the redirect can never leave the host."""
    path, _, query = uri.partition("?")
    kept = [part for part in query.split("&") if part and
            unquote_plus(part.partition("=")[0]) != share_links.QUERY_PARAM]
    if (not path.startswith("/") or path.startswith(("//", "/\\")) or not uri.isprintable()
            or len(uri) > 8192):
        return "/"
    return path + ("?" + "&".join(kept) if kept else "")


def origin_allowed(req: WebRequest) -> bool:
    """False for a cross-origin WebSocket upgrade or state-changing request."""
    if not req.upgrade and req.method.upper() in SAFE_METHODS:
        return True
    site = (req.fetch_site or "").strip().lower()
    if site and site not in SAME_ORIGIN_FETCH_SITES:
        return False
    if req.origin is None:
        return True  # not a browser (browsers send Origin on every such request)
    return req.origin.strip().lower() == f"{req.scheme}://{req.host}".lower()


def client_key(address: str) -> str:
    """IPv6 clients are limited per /64 (one host usually holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)


class AttemptLimiter:
    """At most `limit` unconfirmed password checks per client per `window` seconds.

    An attempt is counted when it starts (before any hashing) and taken back when it
    succeeds, so a burst of concurrent guesses is cut off at the limit. The table is
    bounded: the least recently seen clients are forgotten first.
    """

    def __init__(self, clock: Callable[[], float], limit: int = FAILED_CHECKS_PER_WINDOW,
                 window: float = CHECK_WINDOW_SECONDS, max_clients: int = 10_000) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window
        self._max = max_clients
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def begin(self, client: str) -> int | None:
        """None (attempt recorded, go ahead) or the seconds until `client` may retry."""
        with self._lock:
            now = self._clock()
            times = self._attempts.setdefault(client, deque())
            self._attempts.move_to_end(client)
            while times and times[0] <= now - self._window:
                times.popleft()
            if len(times) >= self._limit:
                return max(1, math.ceil(times[0] + self._window - now))
            times.append(now)
            while len(self._attempts) > self._max:
                self._attempts.popitem(last=False)
            return None

    def succeeded(self, client: str) -> None:
        with self._lock:
            times = self._attempts.get(client)
            if times:
                times.pop()


class SessionSigner:
    """Session tokens: `expiry.nonce.mac`, the MAC over host, expiry, nonce and the
    password hash under a per-agent key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, host: str, expiry: int, nonce: str, password_hash: str) -> str:
        msg = "\n".join((host.lower(), str(expiry), nonce, password_hash)).encode()
        return base64.urlsafe_b64encode(hmac.new(self._key, msg, hashlib.sha256).digest()
                                        ).rstrip(b"=").decode()

    def issue(self, host: str, password_hash: str, now: float) -> str:
        expiry = int(now) + SESSION_SECONDS
        nonce = base64.urlsafe_b64encode(os.urandom(12)).decode()
        return f"{expiry}.{nonce}.{self._mac(host, expiry, nonce, password_hash)}"

    def valid(self, token: str, host: str, password_hash: str, now: float) -> bool:
        expiry_text, _, rest = token.partition(".")
        nonce, _, mac = rest.partition(".")
        if not expiry_text.isdigit() or not nonce or not mac or len(expiry_text) > 12:
            return False
        expiry = int(expiry_text)
        if not now < expiry <= now + SESSION_SECONDS + 60:
            return False
        return hmac.compare_digest(mac, self._mac(host, expiry, nonce, password_hash))


class CredentialCache:
    """Authorization headers that verified recently, keyed by an HMAC of the header and
    the password hash (a rotated password misses the cache)."""

    def __init__(self, clock: Callable[[], float], ttl: float = 900.0, size: int = 64) -> None:
        self._clock = clock
        self._ttl = ttl
        self._size = size
        self._key = os.urandom(32)
        self._entries: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def _id(self, header: str, password_hash: str) -> bytes:
        return hmac.new(self._key, f"{password_hash}\n{header}".encode(), hashlib.sha256).digest()

    def hit(self, header: str, password_hash: str) -> bool:
        key = self._id(header, password_hash)
        with self._lock:
            expires = self._entries.get(key)
            if expires is None or expires <= self._clock():
                self._entries.pop(key, None)
                return False
            return True

    def add(self, header: str, password_hash: str) -> None:
        with self._lock:
            self._entries[self._id(header, password_hash)] = self._clock() + self._ttl
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, sep, password = text.partition(":")
    return (username, password) if sep else None


def session_cookies(cookie_header: str | None, name: str) -> list[str]:
    """Every value of cookie `name` (a same-site page may toss in extra ones)."""
    found = []
    for part in (cookie_header or "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            found.append(value.strip().strip('"'))
    return found


def safe_next(target: str | None) -> str:
    """A local path to return to after login; anything else becomes "/"."""
    if (not target or not target.startswith("/") or target.startswith(("//", "/\\"))
            or target.startswith(LOGIN_PATH) or not target.isprintable() or len(target) > 2048):
        return "/"
    return target


def _text(status: int, message: str, *extra: tuple[str, str]) -> Answer:
    return Answer(status, (("Content-Type", "text/plain; charset=utf-8"), *extra),
                  (message + "\n").encode())


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in - {host}</title>
<style>body{{font-family:system-ui,sans-serif;display:grid;place-items:center;
min-height:90vh;margin:0}}form{{display:grid;gap:.6em;min-width:18em}}
input,button{{font:inherit;padding:.4em}}.error{{color:#b00}}</style></head>
<body><form method="post" action="{action}">
<h1>{host}</h1>
<p class="error">{error}</p>
<label>Password <input type="password" name="password" autocomplete="current-password"
 autofocus required></label>
<input type="hidden" name="next" value="{next}">
<button type="submit">Sign in</button>
<p><small>The password is in the Secret <code>&lt;workspace&gt;-access</code>.</small></p>
</form></body></html>
"""
_PAGE_HEADERS = (
    ("Content-Type", "text/html; charset=utf-8"),
    ("Content-Security-Policy",
     "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
     "frame-ancestors 'none'; base-uri 'none'"),
    ("X-Frame-Options", "DENY"),
    # Not no-referrer: under it browsers send `Origin: null` with the form's POST, which
    # origin_allowed refuses; same-origin still sends nothing to other sites.
    ("Referrer-Policy", "same-origin"),
)


def login_page(host: str, next_path: str, error: str = "", status: int = 200,
               *extra: tuple[str, str]) -> Answer:
    body = _PAGE.format(host=html.escape(host), action=LOGIN_PATH,
                        next=html.escape(safe_next(next_path)), error=html.escape(error))
    return Answer(status, (*_PAGE_HEADERS, *extra), body.encode())


class WebAuth:
    """The forward-auth decision and the login form (one per agent)."""

    def __init__(self, session_key: bytes, *, wall_clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 limiter: AttemptLimiter | None = None,
                 hash_slots: int = 1, hash_wait: float = 30.0) -> None:
        self._sessions = SessionSigner(session_key)
        # Caddy sends this with every auth call; derived, so it needs no file of its own.
        self.front_key = hmac.new(session_key, b"caddy front key", hashlib.sha256).hexdigest()
        self._wall = wall_clock
        self._limiter = limiter or AttemptLimiter(monotonic)
        self._cache = CredentialCache(monotonic)
        # One scrypt at a time: a flood queues here instead of taking every core.
        self._hashing = threading.BoundedSemaphore(hash_slots)
        self._hash_wait = hash_wait
        self._parsed: tuple[str, ScryptHash] | None = None

    def _verifier(self, account: Account) -> ScryptHash | None:
        cached = self._parsed
        if cached is not None and cached[0] == account.password_hash:
            return cached[1]
        try:
            parsed = parse_scrypt_hash(account.password_hash)
        except PasswordHashError:
            return None
        self._parsed = (account.password_hash, parsed)
        return parsed

    @staticmethod
    def cookie_name(req: WebRequest) -> str:
        return SECURE_COOKIE if req.scheme == "https" else COOKIE

    @staticmethod
    def share_cookie_name(req: WebRequest) -> str:
        return SECURE_SHARE_COOKIE if req.scheme == "https" else SHARE_COOKIE

    def _signer(self, account: Account) -> SessionSigner:
        return (SessionSigner(account.session_key) if account.session_key
                else self._sessions)

    def _has_session(self, req: WebRequest, account: Account) -> bool:
        now = self._wall()
        signer = self._signer(account)
        return any(signer.valid(token, req.host, account.password_hash, now)
                   for token in session_cookies(req.cookie, self.cookie_name(req))[:4])

    def _has_share(self, req: WebRequest, account: Account, link: LinkPort | None) -> bool:
        if link is None or account.share_key is None:
            return False
        now = self._wall()
        return any(share_links.verify(account.share_key, token, link.workspace_host,
                                      link.port, now) is not None
                   for token in session_cookies(req.cookie, self.share_cookie_name(req))[:4])

    def _redeem(self, req: WebRequest, account: Account, link: LinkPort | None,
                token: str) -> Answer:
        """A share link followed: the cookie and the same URL without the token, or a
        403 that does not say why."""
        grant = None
        if link is not None and account.share_key is not None and req.method.upper() == "GET":
            grant = share_links.verify(account.share_key, token, link.workspace_host,
                                       link.port, self._wall())
        if grant is None:
            return _text(403, "forbidden")
        secure = "; Secure" if req.scheme == "https" else ""
        max_age = max(1, grant.expires - int(self._wall()))
        cookie = (f"{self.share_cookie_name(req)}={token}; Path=/; Max-Age={max_age}; "
                  f"HttpOnly; SameSite=Lax{secure}")
        return Answer(303, (("Location", without_share_token(req.uri)),
                            ("Set-Cookie", cookie), ("Referrer-Policy", "no-referrer")))

    def _check_password(self, client: str, account: Account, username: str,
                        password: str) -> tuple[bool, int | None]:
        """(verified, None), or (False, retry-after seconds) when the client is limited."""
        key = client_key(client)
        retry = self._limiter.begin(key)
        if retry is not None:
            return False, retry
        verifier = self._verifier(account)
        ok = False
        # An unknown user costs no hashing at all.
        if (hmac.compare_digest(username.encode(), account.username.encode()) and verifier
                and self._hashing.acquire(timeout=self._hash_wait)):
            try:
                ok = verifier.verify(password.encode("utf-8"))
            finally:
                self._hashing.release()
        if ok:
            self._limiter.succeeded(key)
        return ok, None

    def _unauthorized(self, req: WebRequest) -> Answer:
        """Navigations get the login page; other browser requests (fetch, WebSocket) a
        bare 401; only non-browsers a Basic challenge, which a browser would answer with
        a prompt and then replay as an ambient credential."""
        mode = (req.fetch_mode or "").lower()
        html_ok = "text/html" in req.accept.lower()
        if req.method.upper() == "GET" and (mode == "navigate" or (html_ok and not mode)):
            return login_page(req.host, req.uri, status=401)
        if mode or req.fetch_site or html_ok:
            return _text(401, "sign in first")
        return _text(401, "unauthorized",
                     ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'))

    def check(self, req: WebRequest, account: Account | None,
              link: LinkPort | None = None) -> Answer:
        """204 to let the request through; anything else goes back to the client.
        `link` is set when the request is for a port with visibility link."""
        if not origin_allowed(req):
            return _text(403, "cross-origin request refused")
        if account is None:
            return _text(503, "workspace is starting", ("Retry-After", "10"))
        token = share_token(req.uri)
        if token is not None:  # answered here whatever else the request carries
            return self._redeem(req, account, link, token)
        if self._has_session(req, account) or self._has_share(req, account, link):
            return Answer(204)
        if req.authorization is None:
            return self._unauthorized(req)
        if self._cache.hit(req.authorization, account.password_hash):
            return Answer(204)
        creds = _basic_credentials(req.authorization)
        ok, retry = self._check_password(req.client, account, *(creds or ("", "")))
        if ok:
            self._cache.add(req.authorization, account.password_hash)
            return Answer(204)
        if retry is not None:
            return _text(429, "too many failed attempts", ("Retry-After", str(retry)))
        return self._unauthorized(req)

    def login(self, req: WebRequest, body: bytes, account: Account | None) -> Answer:
        """GET shows the form; POST checks the password and sets the session cookie."""
        if not origin_allowed(req):
            return _text(403, "cross-origin request refused")
        query = parse_qs(req.uri.partition("?")[2])
        if req.method.upper() != "POST":
            return login_page(req.host, (query.get("next") or ["/"])[0])
        if account is None:
            return _text(503, "workspace is starting", ("Retry-After", "10"))
        try:
            form = parse_qs(body.decode("utf-8"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            form = {}
        target = safe_next((form.get("next") or ["/"])[0])
        password = (form.get("password") or [""])[0]
        ok, retry = self._check_password(req.client, account, account.username, password)
        if retry is not None:
            return login_page(req.host, target, "Too many failed attempts; try again later.",
                              429, ("Retry-After", str(retry)))
        if not ok:
            return login_page(req.host, target, "Wrong password.", 401)
        token = self._signer(account).issue(req.host, account.password_hash, self._wall())
        secure = "; Secure" if req.scheme == "https" else ""
        cookie = (f"{self.cookie_name(req)}={token}; Path=/; Max-Age={SESSION_SECONDS}; "
                  f"HttpOnly; SameSite=Strict{secure}")
        return Answer(303, (("Location", target), ("Set-Cookie", cookie)), b"")
