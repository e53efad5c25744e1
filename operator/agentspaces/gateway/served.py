"""Which workspaces the gateway serves, and where their names go at a given time (pure).

A workspace is served when its class names a `wakeGateway` and its `spec.wake.onRequest`
is not false. Its names (the host and every `<port>.<host>`) are routed:

- to the gateway app while it is not Ready and its records point at the gateway
  (`status.dns.target: Gateway`), or while it is starting (a waking page may be open);
- to its new server once it is Ready: with the records still at the gateway, for as
  long as that lasts; with the records back at the server, until `changedAt` (or the
  moment it became Ready, if later) plus the class's DNS TTL and a margin, so a browser
  or resolver still holding the gateway's address never sees an error;
- nowhere after that (and never for a workspace that is not served): Caddy answers 404.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from agentspaces.api import model as m
from agentspaces.api.hostnames import is_label, workspace_host

log = logging.getLogger(__name__)

WAKE_ANNOTATION = "agentspaces.dev/wake"  # reconcile.lifecycle.WAKE_ANNOTATION
WOKEN_BY_ANNOTATION = "agentspaces.dev/woken-by"
STARTING_PHASES = frozenset({"Pending", "Creating", "Starting"})
AUTOMATIC_STOPS = frozenset({"inactivity", "lifetime"})  # what the wake annotation undoes
TARGET_GATEWAY = "Gateway"
TARGET_SERVER = "Server"


@dataclass(frozen=True)
class ClassView:
    """The parts of a WorkspaceClass the gateway needs."""

    name: str
    base_domain: str
    ttl: int
    tls_mode: str  # acme | internal | none
    http_port: int
    https_port: int
    has_gateway: bool

    @property
    def tls(self) -> bool:
        return self.tls_mode != "none"

    @property
    def listen_port(self) -> int:
        """The port the workspace's URLs name (and the gateway must listen on)."""
        return self.https_port if self.tls else self.http_port

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ClassView | None:
        """None for a class the apiserver should never have admitted (logged)."""
        name = str((body.get("metadata") or {}).get("name", ""))
        try:
            spec = m.WorkspaceClassSpecModel.parse(body.get("spec"))
        except ValueError as err:
            log.warning("class %s ignored: %s", name, err)
            return None
        return cls(name=name, base_domain=spec.dns.base_domain or spec.dns.zone_name,
                   ttl=spec.dns.ttl, tls_mode=spec.tls.mode, http_port=spec.tls.http_port,
                   https_port=spec.tls.https_port, has_gateway=spec.wake_gateway is not None)


@dataclass(frozen=True)
class ConditionView:
    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class Served:
    """One served workspace as the gateway sees it."""

    namespace: str
    name: str
    uid: str
    host: str
    klass: ClassView
    visibility: Mapping[int, str] = field(default_factory=dict)  # declared ports only
    spec_running: bool = True
    phase: str | None = None
    conditions: tuple[ConditionView, ...] = ()
    ready_since: float | None = None  # set while Ready is True
    stopped_by: str | None = None
    dns_target: str | None = None
    dns_changed_at: float | None = None
    server_ipv4: str | None = None
    wake_pending: bool = False  # a wake annotation the operator has not acted on yet

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ready(self) -> bool:
        return self.ready_since is not None

    def port_visibility(self, port: int) -> str:
        """private unless spec.access.ports says otherwise (as on the VM)."""
        return self.visibility.get(port, "private")

    @property
    def wakeable(self) -> bool:
        """The wake annotation would start it: stopped by inactivity or lifetime, not by
        its owner (spec.running: false needs the owner)."""
        return self.spec_running and self.stopped_by in AUTOMATIC_STOPS

    @property
    def starting(self) -> bool:
        return self.phase in STARTING_PHASES or self.wake_pending


def parse_time(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _conditions(raw: object) -> tuple[ConditionView, ...]:
    out = []
    for c in raw if isinstance(raw, list) else []:
        if isinstance(c, dict) and c.get("type"):
            out.append(ConditionView(type=str(c["type"]), status=str(c.get("status", "")),
                                     reason=str(c.get("reason") or ""),
                                     message=str(c.get("message") or "")))
    return tuple(out)


def served_view(body: Mapping[str, Any], classes: Mapping[str, ClassView]) -> Served | None:
    """The workspace as served, or None when the gateway has nothing to do with it."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    if meta.get("deletionTimestamp"):
        return None
    if spec.get("classKind", m.CLASS_KIND) != m.CLASS_KIND:
        return None  # a tenant's own class: never the shared gateway's (no wakeGateway)
    klass = classes.get(str(spec.get("className", "")))
    if klass is None or not klass.has_gateway:
        return None
    try:
        wake = m.WakeSpec.parse(spec.get("wake"))
        access = m.AccessSpec.parse(spec.get("access"))
    except ValueError as err:
        log.warning("workspace %s/%s ignored: %s", meta.get("namespace"), meta.get("name"), err)
        return None
    label = status.get("hostname")
    if not wake.on_request or not is_label(label):
        return None  # not served, or never had a name
    conditions = _conditions(status.get("conditions"))
    ready = next((c for c in conditions if c.type == "Ready"), None)
    ready_since = None
    if ready is not None and ready.status == "True":
        raw_ready = next(c for c in status.get("conditions") or [] if c.get("type") == "Ready")
        ready_since = parse_time(raw_ready.get("lastTransitionTime")) or 0.0
    dns = status.get("dns") or {}
    annotations = meta.get("annotations") or {}
    wake_value = annotations.get(WAKE_ANNOTATION)
    return Served(
        namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")), host=workspace_host(label, klass.base_domain).lower(),
        klass=klass, visibility={p.port: p.visibility for p in access.ports},
        spec_running=spec.get("running", True) is not False,
        phase=status.get("phase"), conditions=conditions, ready_since=ready_since,
        stopped_by=status.get("stoppedBy"), dns_target=dns.get("target"),
        dns_changed_at=parse_time(dns.get("changedAt")),
        server_ipv4=(status.get("server") or {}).get("ipv4") or None,
        wake_pending=bool(wake_value) and wake_value != status.get("wakeHandled"))


class RouteKind(StrEnum):
    GATEWAY = "gateway"  # the gateway app: sign-in, waking page, wake
    SERVER = "server"  # reverse proxy to the workspace's new server


@dataclass(frozen=True)
class Route:
    kind: RouteKind
    until: float | None = None  # when this route is due to change on its own


def route_for(ws: Served, now: float, margin: float) -> Route | None:
    """Where `ws`'s names go at `now` (None: no route; Caddy answers 404)."""
    target = ws.dns_target
    if ws.ready and ws.server_ipv4:
        if target == TARGET_GATEWAY:
            return Route(RouteKind.SERVER)  # the records still lead here
        if target == TARGET_SERVER and ws.dns_changed_at is not None:
            until = max(ws.dns_changed_at, ws.ready_since or 0.0) + ws.klass.ttl + margin
            return Route(RouteKind.SERVER, until) if now < until else None
        return None
    if target == TARGET_GATEWAY or ws.starting:
        return Route(RouteKind.GATEWAY)
    if target is None and ws.phase == "Stopped":
        return Route(RouteKind.GATEWAY)  # an operator that does not report the target yet
    return None
