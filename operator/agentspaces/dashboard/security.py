"""Sessions and CSRF. A session is a random id in an HttpOnly, SameSite=Strict cookie
(Secure unless the app listens on loopback); what it holds (the CSRF token, a user's
bearer token) stays in this process's memory, never in the cookie. Every state-changing
request is a POST that carries the session's CSRF token and comes from our own origin."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass, field

COOKIE = "agentspaces_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
IDLE_SECONDS = 8 * 3600
MAX_SESSIONS = 10000


@dataclass
class Session:
    id: str
    csrf: str
    token: str | None = None  # token mode: the user's bearer token
    user: str = ""
    last_seen: float = field(default_factory=time.monotonic)


class Sessions:
    """In memory, bounded, expiring after IDLE_SECONDS without a request."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS, limit: int = MAX_SESSIONS) -> None:
        self._by_id: dict[str, Session] = {}
        self.idle_seconds = idle_seconds
        self.limit = limit

    def get(self, session_id: str | None) -> Session | None:
        session = self._by_id.get(session_id or "")
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_seen > self.idle_seconds:
            del self._by_id[session.id]
            return None
        session.last_seen = now
        return session

    def new(self) -> Session:
        self._expire()
        if len(self._by_id) >= self.limit:  # drop the longest unused
            oldest = min(self._by_id.values(), key=lambda s: s.last_seen)
            del self._by_id[oldest.id]
        session = Session(id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32))
        self._by_id[session.id] = session
        return session

    def rotate(self, session: Session) -> Session:
        """A new id and CSRF token at sign-in, so an id planted before is worth nothing."""
        self.drop(session)
        return self.new()

    def drop(self, session: Session) -> None:
        self._by_id.pop(session.id, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for stale in [s for s in self._by_id.values()
                      if now - s.last_seen > self.idle_seconds]:
            del self._by_id[stale.id]

    def __len__(self) -> int:
        return len(self._by_id)


def csrf_ok(session: Session | None, supplied: str | None) -> bool:
    return (session is not None and bool(supplied)
            and hmac.compare_digest(session.csrf.encode(), str(supplied).encode()))


def origin_ok(origin: str | None, referer: str | None, own: str) -> bool:
    """The request comes from our pages: Origin (or, without it, Referer) is ours."""
    if origin:
        return origin == own
    if referer:
        return referer == own or referer.startswith(own + "/")
    return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cookie_options(secure: bool) -> dict[str, object]:
    return {"httponly": True, "samesite": "Strict", "secure": secure, "path": "/"}
