"""What may wake a workspace, how often, and which names may get a certificate (pure,
apart from the injected clocks).

Only a browser navigation wakes: a GET for a document (`Sec-Fetch-Mode: navigate`, or no
Sec-Fetch headers and `Accept: text/html`), not a prefetch or prerender, not a known
bot. Background polling from an old tab (fetch/XHR), HEAD, POST and WebSocket upgrades
never do; they get 503 with Retry-After. On top of that, one wake patch per workspace
per `WORKSPACE_WAKE_SECONDS`, and a client address may ask for only a few wakes per
window (IPv6 per /64, as for password checks).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from agentspaces_vm.webauth import client_key

WORKSPACE_WAKE_SECONDS = 30.0
CLIENT_WAKES_PER_WINDOW = 5
CLIENT_WAKE_WINDOW_SECONDS = 600.0
# Link previews, crawlers, monitors and HTTP libraries that may send Accept: text/html.
BOT_USER_AGENT = re.compile(
    r"bot\b|bot/|crawl|spider|slurp|preview|facebookexternalhit|embedly|whatsapp|"
    r"telegram|slack|discord|skype|linkedin|pinterest|vkshare|"
    r"pingdom|uptime|monitor|curl/|wget/|python-|go-http|okhttp|java/|axios|node-fetch",
    re.IGNORECASE)


class WakeOn(StrEnum):
    NAVIGATION = "navigation"  # a signed-in browser navigation wakes it
    NEVER = "never"  # the gateway only signs in and shows the state


@dataclass(frozen=True)
class RequestTraits:
    method: str
    fetch_mode: str | None = None
    fetch_dest: str | None = None
    accept: str = ""
    upgrade: str | None = None
    purpose: str | None = None  # Sec-Purpose or Purpose (prefetch, prerender)
    user_agent: str = ""

    @classmethod
    def from_headers(cls, method: str, headers: Mapping[str, str]) -> RequestTraits:
        return cls(method=method, fetch_mode=headers.get("Sec-Fetch-Mode"),
                   fetch_dest=headers.get("Sec-Fetch-Dest"), accept=headers.get("Accept", ""),
                   upgrade=headers.get("Upgrade"),
                   purpose=headers.get("Sec-Purpose") or headers.get("Purpose")
                   or headers.get("X-Moz") or headers.get("X-Purpose"),
                   user_agent=headers.get("User-Agent", ""))


def is_navigation(req: RequestTraits) -> bool:
    """A person opening the page in a browser (the only request that may wake)."""
    if req.method.upper() != "GET" or req.upgrade or req.purpose:
        return False
    if BOT_USER_AGENT.search(req.user_agent) or not req.user_agent:
        return False
    mode = (req.fetch_mode or "").lower()
    if mode:
        return mode == "navigate" and (req.fetch_dest or "document").lower() == "document"
    return "text/html" in req.accept.lower()


class Throttle:
    """At most `limit` events per key per `window` seconds; bounded memory."""

    def __init__(self, clock: Callable[[], float], limit: int, window: float,
                 max_keys: int = 10_000) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window
        self._max = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str) -> int | None:
        """None (and the event counted) when allowed, else seconds to wait."""
        now = self._clock()
        times = self._events.setdefault(key, deque())
        self._events.move_to_end(key)
        while times and times[0] <= now - self._window:
            times.popleft()
        if len(times) >= self._limit:
            return max(1, math.ceil(times[0] + self._window - now))
        times.append(now)
        while len(self._events) > self._max:
            self._events.popitem(last=False)
        return None


class WakeLimiter:
    """One wake patch per workspace per WORKSPACE_WAKE_SECONDS; a few per client."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._workspaces = Throttle(monotonic, 1, WORKSPACE_WAKE_SECONDS)
        self._clients = Throttle(monotonic, CLIENT_WAKES_PER_WINDOW, CLIENT_WAKE_WINDOW_SECONDS)

    def client_retry_after(self, client: str) -> int | None:
        return self._clients.retry_after(client_key(client))

    def workspace_allowed(self, workspace: str) -> bool:
        return self._workspaces.retry_after(workspace) is None


class AskPolicy:
    """Caddy's on-demand TLS question for the gateway: a certificate only for a served
    host and its port hosts. Ports the workspace declares (spec.access.ports) always
    qualify; other port hosts only up to a small budget per workspace, so nobody can make
    the gateway ask a CA for thousands of names (CAs limit certificates per domain)."""

    def __init__(self, extra_ports_per_host: int = 16) -> None:
        self._budget = extra_ports_per_host
        self._extra: dict[str, set[int]] = {}

    def allowed(self, domain: str, hosts: Mapping[str, frozenset[int]]) -> bool:
        """`hosts`: every served host and the ports it declares."""
        name = domain.strip().lower().rstrip(".")
        if name in hosts:
            return True
        label, _, host = name.partition(".")
        port = port_label(label)
        if port is None or host not in hosts:
            return False
        if port in hosts[host]:
            return True
        extra = self._extra.setdefault(host, set())
        if port in extra:
            return True
        if len(extra) >= self._budget:
            return False
        extra.add(port)
        return True

    def forget(self, served_hosts: frozenset[str]) -> None:
        for host in set(self._extra) - served_hosts:
            del self._extra[host]


def port_label(label: str) -> int | None:
    """The port a `<port>.<host>` label names (digits, no leading zero, 1-65535)."""
    if not label.isdigit() or len(label) > 5 or label.startswith("0"):
        return None
    port = int(label)
    return port if 1 <= port <= 65535 else None
