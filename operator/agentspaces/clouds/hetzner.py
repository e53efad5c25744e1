"""Hetzner Cloud: the server port and its adapter over the `hcloud` library.

The adapter is thin: it maps hcloud objects to `ServerInfo` and hcloud errors to
`CloudError` kinds (clouds/errors.py). hcloud is synchronous, so every call runs in a
worker thread; its own retry loop (which sleeps and also retries POSTs) is turned off
because the reconciler requeues through Kopf with backoff and treats
`uniqueness_error` after a lost response as "adopt ours". Every call first asks the
project's request budget (clouds/budget.py), which learns from the RateLimit headers of
every response the session receives.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from hcloud import APIException, Client
from hcloud.firewalls import (
    BoundFirewall,
    FirewallResource,
    FirewallResourceLabelSelector,
    FirewallRule,
)
from hcloud.images import Image
from hcloud.locations import Location
from hcloud.server_types import ServerType
from hcloud.servers import BoundServer
from requests import Response
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import Timeout as RequestsTimeout

from agentspaces import metrics
from agentspaces.clouds.budget import Budget, hetzner_reading
from agentspaces.clouds.errors import CloudError, ErrorKind
from agentspaces.clouds.hetzner_images import ImageInfo, image_info
from agentspaces.clouds.hetzner_pricing import PriceList, parse_pricing

log = logging.getLogger(__name__)

LABEL_WORKSPACE_UID = "agentspaces.dev/workspace-uid"
LABEL_WORKSPACE = "agentspaces.dev/workspace"
LABEL_NAMESPACE = "agentspaces.dev/namespace"
LABEL_MANAGED_BY = "agentspaces.dev/managed-by"
LABEL_CLASS = "agentspaces.dev/class"
MANAGED_BY = "agentspaces"


@dataclass(frozen=True)
class ServerInfo:
    id: int
    name: str
    status: str
    ipv4: str | None
    ipv6: str | None
    server_type: str
    location: str
    labels: Mapping[str, str] = field(default_factory=dict)
    created: datetime | None = None
    firewalls: tuple[int, ...] = ()
    """Firewalls applied to it (directly or by label selector)."""

    @property
    def workspace_uid(self) -> str | None:
        return self.labels.get(LABEL_WORKSPACE_UID)


@dataclass(frozen=True)
class ServerRequest:
    name: str
    server_type: str
    location: str
    image: str
    """A system image's name, or a snapshot's id in decimal digits."""
    labels: Mapping[str, str]
    user_data: str


@dataclass(frozen=True)
class InboundRule:
    """One inbound firewall rule; `sources` are canonical CIDRs, sorted."""

    protocol: str
    port: str | None
    sources: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class FirewallInfo:
    id: int
    name: str
    labels: Mapping[str, str]
    rules: tuple[InboundRule, ...]
    selectors: tuple[str, ...]
    """Label selectors in its `apply_to`."""
    servers: tuple[int, ...]
    """Servers it is applied to directly (not through a selector)."""


class ServerProvider(Protocol):
    async def get(self, server_id: int) -> ServerInfo | None: ...
    async def find_by_uid(self, uid: str) -> list[ServerInfo]: ...
    async def find_by_name(self, name: str) -> ServerInfo | None: ...
    async def create(self, request: ServerRequest) -> ServerInfo: ...
    async def relabel(self, server_id: int, name: str,
                      labels: Mapping[str, str]) -> ServerInfo: ...
    async def delete(self, server_id: int) -> None: ...
    async def list_managed(self) -> list[ServerInfo]: ...
    async def find_by_selector(self, selector: str) -> list[ServerInfo]: ...
    async def list_firewalls(self, label_selector: str) -> list[FirewallInfo]: ...
    async def find_firewall_by_name(self, name: str) -> FirewallInfo | None: ...
    async def create_firewall(self, name: str, labels: Mapping[str, str],
                              rules: tuple[InboundRule, ...], selector: str) -> FirewallInfo: ...
    async def set_firewall_rules(self, firewall_id: int,
                                 rules: tuple[InboundRule, ...]) -> None: ...
    async def apply_firewall(self, firewall_id: int, selector: str) -> None: ...
    async def detach_firewall(self, firewall: FirewallInfo) -> None: ...
    async def delete_firewall(self, firewall_id: int) -> None: ...
    async def pricing(self) -> PriceList: ...


def class_label(class_name: str) -> str:
    """A class name as a Hetzner label value (≤ 63 chars). A longer name is cut and
    hashed; "__" marks that, as no Kubernetes name contains "_"."""
    if len(class_name) <= 63:
        return class_name
    digest = hashlib.sha256(class_name.encode()).hexdigest()[:12]
    return f"{class_name[:48].rstrip('.-')}__{digest}"


def workspace_labels(uid: str, name: str, namespace: str,
                     class_name: str | None = None) -> dict[str, str]:
    """Owner labels on every server we create (values ≤ 63 chars, as Hetzner requires).
    The class label is what the class's firewall selects servers by."""
    labels = {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_WORKSPACE_UID: uid,
        LABEL_WORKSPACE: name[:63],
        LABEL_NAMESPACE: namespace[:63],
    }
    if class_name:
        labels[LABEL_CLASS] = class_label(class_name)
    return labels


def canonical_cidr(text: str) -> str:
    """The form Hetzner stores (RFC 5952 for IPv6); ValueError for a malformed one."""
    return str(ipaddress.ip_network(text.strip(), strict=False))


PROVIDER = "hetzner"
_TRANSIENT_CODES = frozenset({"server_error", "service_error", "unavailable", "timeout",
                              "conflict", "locked", "maintenance", "bad_gateway"})
_UNAUTHORIZED_CODES = frozenset({"unauthorized", "forbidden", "token_readonly"})


def _classify(exc: Exception, budget: Budget | None = None) -> CloudError:
    """hcloud's exception as a CloudError. hcloud does not expose the response headers;
    the budget, which saw them, says how long a rate limit lasts."""
    if isinstance(exc, APIException):
        code, message = str(exc.code), str(exc.message)
        # hcloud puts the HTTP status in `code` when the body has no error object.
        status = exc.code if isinstance(exc.code, int) else None
        if code in ("rate_limit_exceeded", "429"):
            kind = ErrorKind.RATE_LIMITED
        elif code in _UNAUTHORIZED_CODES or code in ("401", "403"):
            kind = ErrorKind.UNAUTHORIZED
        elif code == "not_found":
            kind = ErrorKind.NOT_FOUND
        elif code in _TRANSIENT_CODES or code.startswith("5"):
            kind = ErrorKind.TRANSIENT
        else:
            kind = ErrorKind.PERMANENT
        retry_after = (budget.retry_after()
                       if budget is not None and kind is ErrorKind.RATE_LIMITED else None)
        return CloudError(kind, PROVIDER, code, message, status=status,
                          retry_after=retry_after)
    if isinstance(exc, RequestsTimeout | RequestsConnectionError):
        return CloudError(ErrorKind.TRANSIENT, PROVIDER, "unreachable", type(exc).__name__)
    return CloudError(ErrorKind.TRANSIENT, PROVIDER, "error", type(exc).__name__)


def _location(server: BoundServer) -> str:
    data = server.data_model
    location = getattr(data, "location", None)
    if location is None:  # older API responses only carry the datacenter
        datacenter = getattr(data, "datacenter", None)
        location = getattr(datacenter, "location", None)
    return str(getattr(location, "name", "") or "")


def _info(server: BoundServer) -> ServerInfo:
    public = server.public_net
    ipv4 = public.ipv4.ip if public and public.ipv4 else None
    ipv6 = None
    if public and public.ipv6 and public.ipv6.ip:
        # Hetzner hands each server a /64; the host itself answers on ::1 of it.
        ipv6 = str(ipaddress.ip_network(public.ipv6.ip, strict=False).network_address + 1)
    return ServerInfo(
        id=int(server.id or 0),
        name=str(server.name),
        status=str(server.status),
        ipv4=ipv4,
        ipv6=ipv6,
        server_type=(server.server_type.name or "") if server.server_type else "",
        location=_location(server),
        labels=dict(server.labels or {}),
        created=server.created,
        firewalls=tuple(int(f.firewall.id or 0)
                        for f in ((public.firewalls if public else None) or [])
                        if f.firewall is not None),
    )


def _firewall_info(firewall: BoundFirewall) -> FirewallInfo:
    rules = tuple(
        InboundRule(protocol=str(r.protocol), port=r.port,
                    sources=tuple(sorted(canonical_cidr(ip) for ip in r.source_ips or [])),
                    description=r.description or "")
        for r in firewall.rules or [] if r.direction == FirewallRule.DIRECTION_IN)
    selectors, servers = [], []
    for applied in firewall.applied_to or []:
        if applied.type == FirewallResource.TYPE_LABEL_SELECTOR and applied.label_selector:
            selectors.append(str(applied.label_selector.selector))
        elif applied.type == FirewallResource.TYPE_SERVER and applied.server is not None:
            servers.append(int(applied.server.id or 0))
    return FirewallInfo(id=int(firewall.id or 0), name=str(firewall.name),
                        labels=dict(firewall.labels or {}), rules=rules,
                        selectors=tuple(selectors), servers=tuple(servers))


def _hcloud_rules(rules: tuple[InboundRule, ...]) -> list[FirewallRule]:
    return [FirewallRule(direction=FirewallRule.DIRECTION_IN, protocol=r.protocol, port=r.port,
                         source_ips=list(r.sources), description=r.description or None)
            for r in rules]


def _image_ref(image: str) -> Image:
    """hcloud sends an Image's id when it has one and its name otherwise; a snapshot has
    no name, so digits mean an id."""
    if image.isascii() and image.isdigit():
        return Image(id=int(image))
    return Image(name=image)


def _selector(selector: str) -> FirewallResource:
    return FirewallResource(type=FirewallResource.TYPE_LABEL_SELECTOR,
                            label_selector=FirewallResourceLabelSelector(selector))


def counted(request: Callable[..., Response], base_path: str,
            budget: Budget | None = None) -> Callable[..., Response]:
    """`request` (a requests Session's) counting every call in the metrics and telling
    `budget` what each response said about it: every request hcloud makes goes through
    it, so this is the one place to count them."""

    def send(method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        started = time.monotonic()
        code: int | None = None
        try:
            response = request(method, url, *args, **kwargs)
            code = response.status_code
            if budget is not None:
                budget.observe(hetzner_reading(response.headers, time.time()), code)
            return response
        finally:
            metrics.cloud_request(PROVIDER, method, url, code, time.monotonic() - started,
                                  base_path)

    return send


class HcloudServers:
    """`ServerProvider` over hcloud-python, one instance per (endpoint, token)."""

    def __init__(self, token: str, endpoint: str, timeout: float = 15.0, *,
                 budget: Budget | None = None) -> None:
        self.budget = budget or Budget.hetzner()
        self._client = Client(token=token, api_endpoint=endpoint, timeout=timeout,
                              application_name="agentspaces")
        base = getattr(self._client, "_client", None)
        if base is not None and hasattr(base, "_retry_max_retries"):
            base._retry_max_retries = 0
        session = getattr(base, "_session", None)
        if session is not None:
            session.request = counted(session.request, urlsplit(endpoint).path, self.budget)

    async def aclose(self) -> None:
        """Close the HTTP sessions hcloud-python keeps (it has no public close)."""
        for base in (getattr(self._client, "_client", None),
                     getattr(self._client, "_client_hetzner", None)):
            session = getattr(base, "_session", None)
            if session is not None:
                session.close()

    async def _call(self, operation: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`fn` in a worker thread, once the budget admits `operation` (a method name,
        its priority in budget.PRIORITIES)."""
        with self.budget.call(f"{PROVIDER}.{operation}"):
            try:
                return await asyncio.to_thread(fn, *args, **kwargs)
            except Exception as exc:  # mapped, never re-raised raw: no token in messages
                raise _classify(exc, self.budget) from None

    async def get(self, server_id: int) -> ServerInfo | None:
        try:
            server = await self._call("get", self._client.servers.get_by_id, server_id)
        except CloudError as err:
            if err.kind is ErrorKind.NOT_FOUND:
                return None
            raise
        return _info(server)

    async def find_by_uid(self, uid: str) -> list[ServerInfo]:
        servers = await self._call("find_by_uid", self._client.servers.get_all,
                                   label_selector=f"{LABEL_WORKSPACE_UID}={uid}")
        return [_info(s) for s in servers]

    async def find_by_name(self, name: str) -> ServerInfo | None:
        server = await self._call("find_by_name", self._client.servers.get_by_name, name)
        return _info(server) if server else None

    async def create(self, request: ServerRequest) -> ServerInfo:
        response = await self._call(
            "create", self._client.servers.create,
            name=request.name,
            server_type=ServerType(name=request.server_type),
            image=_image_ref(request.image),
            location=Location(name=request.location),
            labels=dict(request.labels),
            user_data=request.user_data,
            start_after_create=True,
        )
        return _info(response.server)

    async def relabel(self, server_id: int, name: str,
                      labels: Mapping[str, str]) -> ServerInfo:
        """Rename the server and replace all its labels, in one request (a warm-pool
        server handed to a workspace: it is the pool's or the workspace's, never both)."""
        server = await self._call(
            "relabel", self._client.servers.update,
            BoundServer(self._client.servers, {"id": server_id}, complete=False),
            name=name, labels=dict(labels))
        return _info(server)

    async def delete(self, server_id: int) -> None:
        try:
            await self._call("delete", self._client.servers.delete,
                             BoundServer(self._client.servers, {"id": server_id},
                                         complete=False))
        except CloudError as err:
            if err.kind is not ErrorKind.NOT_FOUND:
                raise

    async def list_managed(self) -> list[ServerInfo]:
        servers = await self._call("list_managed", self._client.servers.get_all,
                                   label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}")
        return [_info(s) for s in servers]

    async def find_by_selector(self, selector: str) -> list[ServerInfo]:
        servers = await self._call("find_by_selector", self._client.servers.get_all,
                                   label_selector=selector)
        return [_info(s) for s in servers]

    # -- firewalls -------------------------------------------------------------------
    def _firewall_ref(self, firewall_id: int) -> BoundFirewall:
        return BoundFirewall(self._client.firewalls, {"id": firewall_id}, complete=False)

    async def list_firewalls(self, label_selector: str) -> list[FirewallInfo]:
        found = await self._call("list_firewalls", self._client.firewalls.get_all,
                                 label_selector=label_selector)
        return [_firewall_info(f) for f in found]

    async def find_firewall_by_name(self, name: str) -> FirewallInfo | None:
        found = await self._call("find_firewall_by_name",
                                 self._client.firewalls.get_by_name, name)
        return _firewall_info(found) if found else None

    async def create_firewall(self, name: str, labels: Mapping[str, str],
                              rules: tuple[InboundRule, ...], selector: str) -> FirewallInfo:
        response = await self._call("create_firewall", self._client.firewalls.create,
                                    name=name, rules=_hcloud_rules(rules),
                                    labels=dict(labels), resources=[_selector(selector)])
        return _firewall_info(response.firewall)

    async def set_firewall_rules(self, firewall_id: int, rules: tuple[InboundRule, ...]) -> None:
        await self._call("set_firewall_rules", self._client.firewalls.set_rules,
                         self._firewall_ref(firewall_id), _hcloud_rules(rules))

    async def apply_firewall(self, firewall_id: int, selector: str) -> None:
        await self._call("apply_firewall", self._client.firewalls.apply_to_resources,
                         self._firewall_ref(firewall_id), [_selector(selector)])

    async def detach_firewall(self, firewall: FirewallInfo) -> None:
        """Remove every application (selectors and servers), so it can be deleted."""
        resources = [_selector(s) for s in firewall.selectors] + [
            FirewallResource(type=FirewallResource.TYPE_SERVER,
                             server=BoundServer(self._client.servers, {"id": sid},
                                                complete=False))
            for sid in firewall.servers]
        if resources:
            await self._call("detach_firewall", self._client.firewalls.remove_from_resources,
                             self._firewall_ref(firewall.id), resources)

    async def delete_firewall(self, firewall_id: int) -> None:
        try:
            await self._call("delete_firewall", self._client.firewalls.delete,
                             self._firewall_ref(firewall_id))
        except CloudError as err:
            if err.kind is not ErrorKind.NOT_FOUND:
                raise

    # -- images (ImageProvider, clouds/hetzner_images.py) -----------------------------
    async def list_snapshots(self, label_selector: str) -> list[ImageInfo]:
        """Every snapshot the selector matches (hcloud reads all pages)."""
        found = await self._call("list_snapshots", self._client.images.get_all,
                                 type=["snapshot"], label_selector=label_selector)
        return [image_info(i) for i in found]

    async def get_image(self, image_id: int) -> ImageInfo | None:
        try:
            image = await self._call("get_image", self._client.images.get_by_id, image_id)
        except CloudError as err:
            if err.kind is ErrorKind.NOT_FOUND:
                return None
            raise
        return image_info(image)

    async def create_snapshot(self, server_id: int, description: str,
                              labels: Mapping[str, str]) -> ImageInfo:
        """Start a snapshot of the server's disk; it is `creating` until its action ends
        (poll get_image). The server should be off, so the disk is consistent."""
        response = await self._call(
            "create_snapshot", self._client.servers.create_image,
            BoundServer(self._client.servers, {"id": server_id}, complete=False),
            description=description, type="snapshot", labels=dict(labels))
        return image_info(response.image)

    async def delete_image(self, image_id: int) -> None:
        try:
            await self._call("delete_image", self._client.images.delete, Image(id=image_id))
        except CloudError as err:
            if err.kind is not ErrorKind.NOT_FOUND:
                raise

    # -- prices ----------------------------------------------------------------------
    async def pricing(self) -> PriceList:
        """GET /pricing (hcloud has no client for it): prices in the project's currency."""
        doc = await self._call("pricing", self._client.request, "GET", "/pricing")
        try:
            return parse_pricing(doc.get("pricing") if isinstance(doc, dict) else None)
        except ValueError as err:
            raise CloudError(ErrorKind.TRANSIENT, PROVIDER, "invalid_pricing", str(err)) \
                from None
