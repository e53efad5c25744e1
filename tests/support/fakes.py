"""In-memory fakes of the ports the reconciler talks through, for unit tests of steps.

Each fake keeps the real service's rules that the reconciler depends on and nothing
more: Hetzner server names are unique (a taken name is the adapter's
`uniqueness_error`), ids only grow, a deleted server is gone at once; Cloudflare refuses
an identical record; a Secret or Lease create at a taken name does what the Kubernetes
adapter does. Every call is logged (`calls`), so a test can say what was called and,
as importantly, what was not. Knobs (`lose_next_create_response`, `delete_out_of_band`,
`fail_next`, ...) put the world in the states the branches handle.

`FakeKube` and `FakeAgent` are for the unit tier only: the integration tier keeps the
real apiserver and the real agent.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from agentspaces.agent_client import AgentUnreachable
from agentspaces.clouds.cloudflare import (
    IDENTICAL_RECORD,
    RECORD_NOT_FOUND,
    ZONE_NOT_FOUND,
    DnsRecord,
)
from agentspaces.clouds.errors import CloudError, ErrorKind
from agentspaces.clouds.hetzner import (
    LABEL_MANAGED_BY,
    MANAGED_BY,
    FirewallInfo,
    InboundRule,
    ServerInfo,
    ServerRequest,
)
from agentspaces.clouds.hetzner_images import ImageInfo
from agentspaces.clouds.hetzner_pricing import Money, PriceList
from agentspaces.kube import KubeError, KubePort, LeaseData, Owner, OwnerRef, SecretData
from agentspaces_vm.contracts import (
    Activity,
    AgentStatus,
    BackupJob,
    BackupPlan,
    BootStage,
    DevcontainerReport,
    JobState,
    RestorePlan,
    SaveJob,
    SaveRequest,
    SaveResult,
)

SERVER_WRITES = frozenset({"create", "relabel", "delete", "create_snapshot", "delete_image",
                           "create_firewall", "set_firewall_rules",
                           "apply_firewall", "detach_firewall", "delete_firewall"})
DNS_WRITES = frozenset({"create_record", "update_record", "delete_record"})
AGENT_WRITES = frozenset({"put_agent_bundle", "put_secrets", "put_config", "start",
                          "start_backup"})


@dataclass(frozen=True)
class Call:
    """One call a fake received: the method and the arguments that identify it."""

    method: str
    args: tuple[object, ...] = ()


class CallLog(list[Call]):
    def log(self, method: str, *args: object) -> None:
        self.append(Call(method, args))

    def methods(self) -> list[str]:
        return [c.method for c in self]

    def only(self, methods: Iterable[str]) -> list[Call]:
        wanted = frozenset(methods)
        return [c for c in self if c.method in wanted]


def _epoch() -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC)


# The errors the real adapters raise for the same situations (clouds/errors.py).

def hetzner_error(kind: ErrorKind, code: str, message: str) -> CloudError:
    return CloudError(kind, "hetzner", code, message)


def cloudflare_error(kind: ErrorKind, code: int | str, message: str, status: int = 400,
                     retry_after: float | None = None) -> CloudError:
    return CloudError(kind, "cloudflare", str(code), message, status=status,
                      retry_after=retry_after)


def _uniqueness_error(what: str) -> CloudError:
    return hetzner_error(ErrorKind.PERMANENT, "uniqueness_error", f"{what} is already used")


def _lost_response() -> CloudError:
    return hetzner_error(ErrorKind.TRANSIENT, "unreachable", "ReadTimeout")


def _resource_in_use(what: str) -> CloudError:
    return hetzner_error(ErrorKind.PERMANENT, "resource_in_use", f"{what} is still in use")


def _protected(image_id: int) -> CloudError:
    return hetzner_error(ErrorKind.PERMANENT, "protected", f"image {image_id} is protected")


def _selects(selector: str, labels: Mapping[str, str]) -> bool:
    """Hetzner label selectors as the reconciler writes them: `k=v` and `k`, comma-joined
    (anything else is refused rather than guessed)."""
    for term in selector.split(","):
        key, sep, value = term.strip().partition("=")
        if "!" in key or any(c in key for c in " ()"):
            raise ValueError(f"selector term {term!r} is not modelled by the fake")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def _eur(net: str, gross: str) -> Money:
    return Money(Decimal(net), Decimal(gross))


FAKE_PRICES = PriceList(
    currency="EUR",
    server_types={("cx23", "fsn1"): (_eur("0.0080", "0.00952"), _eur("4.99", "5.9381")),
                  ("cpx32", "fsn1"): (_eur("0.0240", "0.02856"), _eur("14.99", "17.8381"))},
    primary_ipv4={"fsn1": (_eur("0.0010", "0.00119"), _eur("0.50", "0.595"))})
"""What FakeServers.pricing answers (a test may replace `price_list`)."""


class FakeServers:
    """`ServerProvider` (clouds/hetzner.py) over a dict: one Hetzner project."""

    def __init__(self, clock: Callable[[], datetime] = _epoch, first_id: int = 1001) -> None:
        self.clock = clock
        self.servers: dict[int, ServerInfo] = {}
        self.firewalls: dict[int, FirewallInfo] = {}
        self.images: dict[int, ImageInfo] = {}
        """The project's snapshots."""
        self.calls = CallLog()
        self.user_data: dict[int, str] = {}
        """What each server was created with."""
        self.booted: dict[int, str] = {}
        """The image (name or snapshot id) each server was created from."""
        self.closed = False
        self._ids = itertools.count(first_id)
        self._lose_next_create: str | None = None
        self._failures: dict[str, CloudError] = {}
        self.price_list = FAKE_PRICES

    # -- knobs ------------------------------------------------------------------------
    def add_server(self, name: str, labels: Mapping[str, str], status: str = "running"
                   ) -> ServerInfo:
        """A server made outside the operator (or by an earlier operator run)."""
        if any(s.name == name for s in self.servers.values()):
            raise ValueError(f"server name {name} is taken")
        server_id = next(self._ids)
        server = ServerInfo(
            id=server_id, name=name, status=status, ipv4=f"192.0.2.{server_id % 250 + 1}",
            ipv6=f"2001:db8:{server_id:x}::1", server_type="cx23", location="fsn1",
            labels=dict(labels), created=self.clock())
        self.servers[server_id] = server
        return server

    def add_foreign(self, name: str, labels: Mapping[str, str] | None = None) -> ServerInfo:
        """Someone else's server (no uid label of ours, unless `labels` says so)."""
        return self.add_server(name, labels if labels is not None else {"team": "other"})

    def boot(self, server_id: int | None = None) -> None:
        """initializing -> running, for one server or all that are initializing."""
        for sid, server in self.servers.items():
            if server_id in (None, sid) and server.status == "initializing":
                self.servers[sid] = replace(server, status="running")

    def finish_snapshots(self, size_gb: float = 2.5) -> None:
        """Every snapshot still creating becomes available."""
        for image_id, image in self.images.items():
            if image.status == "creating":
                self.images[image_id] = replace(image, status="available", image_size=size_gb)

    def protect_image(self, image_id: int, protected: bool = True) -> None:
        self.images[image_id] = replace(self.images[image_id], protected=protected)

    def delete_out_of_band(self, server_id: int) -> None:
        del self.servers[server_id]

    def lose_next_create_response(self, retried: bool = False) -> None:
        """The next create makes the server, but its caller does not learn so: the call
        fails as transient, or (`retried`, as a client retrying the POST would see) with
        uniqueness_error."""
        self._lose_next_create = "retried" if retried else "lost"

    def fail_next(self, method: str, error: CloudError) -> None:
        """The next call of `method` raises `error` and changes nothing."""
        self._failures[method] = error

    def ids(self) -> list[int]:
        return sorted(self.servers)

    # -- ServerProvider ---------------------------------------------------------------
    def _enter(self, method: str, *args: object) -> None:
        self.calls.log(method, *args)
        failure = self._failures.pop(method, None)
        if failure is not None:
            raise failure

    def _view(self, server: ServerInfo) -> ServerInfo:
        applied = tuple(f.id for f in self.firewalls.values()
                        if server.id in f.servers
                        or any(_selects(s, server.labels) for s in f.selectors))
        return replace(server, firewalls=applied)

    def _select(self, selector: str) -> list[ServerInfo]:
        return [self._view(s) for _, s in sorted(self.servers.items())
                if _selects(selector, s.labels)]

    async def get(self, server_id: int) -> ServerInfo | None:
        self._enter("get", server_id)
        server = self.servers.get(server_id)
        return self._view(server) if server is not None else None

    async def find_by_uid(self, uid: str) -> list[ServerInfo]:
        self._enter("find_by_uid", uid)
        return self._select(f"agentspaces.dev/workspace-uid={uid}")

    async def find_by_name(self, name: str) -> ServerInfo | None:
        self._enter("find_by_name", name)
        return next((self._view(s) for s in self.servers.values() if s.name == name), None)

    async def create(self, request: ServerRequest) -> ServerInfo:
        self._enter("create", request.name)
        if any(s.name == request.name for s in self.servers.values()):
            raise _uniqueness_error(f"server name {request.name}")
        if request.image.isdigit():  # a snapshot: ours and available, as at Hetzner
            image = self.images.get(int(request.image))
            if image is None or not image.available:
                raise hetzner_error(ErrorKind.PERMANENT, "invalid_input",
                                    f"image {request.image} not found")
        server = self.add_server(request.name, request.labels, status="initializing")
        server = replace(server, server_type=request.server_type, location=request.location)
        self.servers[server.id] = server
        self.user_data[server.id] = request.user_data
        self.booted[server.id] = request.image
        lost, self._lose_next_create = self._lose_next_create, None
        if lost == "lost":
            raise _lost_response()
        if lost == "retried":
            raise _uniqueness_error(f"server name {request.name}")
        return self._view(server)

    async def relabel(self, server_id: int, name: str,
                      labels: Mapping[str, str]) -> ServerInfo:
        self._enter("relabel", server_id, name)
        if any(s.name == name and i != server_id for i, s in self.servers.items()):
            raise _uniqueness_error(f"server name {name}")
        if server_id not in self.servers:
            raise hetzner_error(ErrorKind.NOT_FOUND, "not_found", f"server {server_id}")
        server = replace(self.servers[server_id], name=name, labels=dict(labels))
        self.servers[server_id] = server
        return self._view(server)

    async def find_by_selector(self, selector: str) -> list[ServerInfo]:
        self._enter("find_by_selector", selector)
        return self._select(selector)

    async def delete(self, server_id: int) -> None:
        self._enter("delete", server_id)
        self.servers.pop(server_id, None)  # gone already counts as deleted

    async def list_managed(self) -> list[ServerInfo]:
        self._enter("list_managed")
        return self._select(f"{LABEL_MANAGED_BY}={MANAGED_BY}")

    async def list_firewalls(self, label_selector: str) -> list[FirewallInfo]:
        self._enter("list_firewalls", label_selector)
        return [f for _, f in sorted(self.firewalls.items())
                if _selects(label_selector, f.labels)]

    async def find_firewall_by_name(self, name: str) -> FirewallInfo | None:
        self._enter("find_firewall_by_name", name)
        return next((f for f in self.firewalls.values() if f.name == name), None)

    async def create_firewall(self, name: str, labels: Mapping[str, str],
                              rules: tuple[InboundRule, ...], selector: str) -> FirewallInfo:
        self._enter("create_firewall", name)
        if any(f.name == name for f in self.firewalls.values()):
            raise _uniqueness_error(f"firewall name {name}")
        firewall = FirewallInfo(id=next(self._ids), name=name, labels=dict(labels),
                                rules=rules, selectors=(selector,), servers=())
        self.firewalls[firewall.id] = firewall
        return firewall

    async def set_firewall_rules(self, firewall_id: int,
                                 rules: tuple[InboundRule, ...]) -> None:
        self._enter("set_firewall_rules", firewall_id)
        self.firewalls[firewall_id] = replace(self.firewalls[firewall_id], rules=rules)

    async def apply_firewall(self, firewall_id: int, selector: str) -> None:
        self._enter("apply_firewall", firewall_id, selector)
        current = self.firewalls[firewall_id]
        if selector not in current.selectors:
            self.firewalls[firewall_id] = replace(current,
                                                  selectors=(*current.selectors, selector))

    async def detach_firewall(self, firewall: FirewallInfo) -> None:
        self._enter("detach_firewall", firewall.id)
        current = self.firewalls.get(firewall.id)
        if current is not None:
            self.firewalls[firewall.id] = replace(current, selectors=(), servers=())

    async def delete_firewall(self, firewall_id: int) -> None:
        self._enter("delete_firewall", firewall_id)
        current = self.firewalls.get(firewall_id)
        if current is None:
            return
        if current.selectors or current.servers:
            raise _resource_in_use(f"firewall {firewall_id}")
        del self.firewalls[firewall_id]

    # -- ImageProvider (clouds/hetzner_images.py) -------------------------------------
    async def list_snapshots(self, label_selector: str) -> list[ImageInfo]:
        self._enter("list_snapshots", label_selector)
        return [i for _, i in sorted(self.images.items())
                if _selects(label_selector, i.labels)]

    async def get_image(self, image_id: int) -> ImageInfo | None:
        self._enter("get_image", image_id)
        return self.images.get(image_id)

    async def create_snapshot(self, server_id: int, description: str,
                              labels: Mapping[str, str]) -> ImageInfo:
        self._enter("create_snapshot", server_id, description)
        if server_id not in self.servers:
            raise hetzner_error(ErrorKind.NOT_FOUND, "not_found",
                                f"server with ID '{server_id}' not found")
        image = ImageInfo(id=next(self._ids), description=description, status="creating",
                          labels=dict(labels), image_size=None, disk_size=40.0,
                          created=self.clock(), created_from=server_id, protected=False)
        self.images[image.id] = image
        return image

    async def delete_image(self, image_id: int) -> None:
        self._enter("delete_image", image_id)
        image = self.images.get(image_id)
        if image is not None and image.protected:
            raise _protected(image_id)
        self.images.pop(image_id, None)  # gone already counts as deleted

    async def pricing(self) -> PriceList:
        self._enter("pricing")
        return self.price_list

    async def aclose(self) -> None:
        self.closed = True


class FakeDns:
    """`DnsProvider` (clouds/cloudflare.py) over dicts: zones and their records."""

    def __init__(self) -> None:
        self.zones: dict[str, str] = {}
        """zone name -> zone id"""
        self.records: dict[str, dict[str, DnsRecord]] = {}
        """zone id -> record id -> record"""
        self.calls = CallLog()
        self.closed = False
        self._ids = itertools.count(1)
        self._failures: dict[str, CloudError] = {}

    # -- knobs ------------------------------------------------------------------------
    def add_zone(self, name: str) -> str:
        zone_id = hashlib.sha256(name.encode()).hexdigest()[:32]
        self.zones[name] = zone_id
        self.records.setdefault(zone_id, {})
        return zone_id

    def add_record(self, zone_name: str, record: DnsRecord) -> DnsRecord:
        """A record written outside the operator (e.g. someone else's at our name)."""
        return self._store(self.zones[zone_name], record)

    def in_zone(self, zone_name: str) -> list[DnsRecord]:
        return sorted(self.records[self.zones[zone_name]].values(),
                      key=lambda r: (r.name, r.type, r.content))

    def fail_next(self, method: str, error: CloudError) -> None:
        self._failures[method] = error

    # -- DnsProvider ------------------------------------------------------------------
    def _enter(self, method: str, *args: object) -> None:
        self.calls.log(method, *args)
        failure = self._failures.pop(method, None)
        if failure is not None:
            raise failure

    def _zone(self, zone_id: str) -> dict[str, DnsRecord]:
        if zone_id not in self.records:
            raise cloudflare_error(ErrorKind.PERMANENT, 7003, f"zone {zone_id}: could not route")
        return self.records[zone_id]

    def _store(self, zone_id: str, record: DnsRecord, record_id: str | None = None
               ) -> DnsRecord:
        stored = replace(record, id=record_id or f"{next(self._ids):032x}",
                         name=record.name.lower().rstrip("."), type=record.type.upper())
        self._zone(zone_id)[stored.id] = stored
        return stored

    async def zone_id(self, zone_name: str) -> str:
        self._enter("zone_id", zone_name)
        name = zone_name.lower().rstrip(".")
        if name not in self.zones:
            raise CloudError(ErrorKind.NOT_FOUND, "cloudflare", ZONE_NOT_FOUND,
                             f"Cloudflare zone {name} not found")
        return self.zones[name]

    async def list_records(self, zone_id: str, name: str) -> list[DnsRecord]:
        self._enter("list_records", name)
        wanted = name.lower().rstrip(".")
        return [r for r in self._zone(zone_id).values() if r.name == wanted]

    async def create_record(self, zone_id: str, record: DnsRecord) -> DnsRecord:
        self._enter("create_record", record.type, record.name)
        name = record.name.lower().rstrip(".")
        if any((r.name, r.type, r.content) == (name, record.type.upper(), record.content)
               for r in self._zone(zone_id).values()):
            raise cloudflare_error(ErrorKind.PERMANENT, IDENTICAL_RECORD,
                                   f"identical record {record.type} {name}")
        return self._store(zone_id, record)

    async def update_record(self, zone_id: str, record_id: str,
                            record: DnsRecord) -> DnsRecord:
        self._enter("update_record", record.type, record.name)
        if record_id not in self._zone(zone_id):
            raise cloudflare_error(ErrorKind.PERMANENT, RECORD_NOT_FOUND,
                                   f"record {record_id} not found", status=404)
        return self._store(zone_id, record, record_id)

    async def delete_record(self, zone_id: str, record_id: str) -> None:
        gone = self._zone(zone_id).get(record_id)
        self._enter("delete_record", *((gone.type, gone.name) if gone else (record_id,)))
        self._zone(zone_id).pop(record_id, None)  # already gone counts as deleted

    async def aclose(self) -> None:
        self.closed = True


class FakeKube:
    """`KubePort` (kube.py) over dicts: Workspaces, WorkspaceClasses, Secrets, Leases."""

    def __init__(self) -> None:
        self.workspaces: dict[tuple[str, str], dict[str, Any]] = {}
        self.classes: dict[str, dict[str, Any]] = {}
        self.namespaced_classes: dict[tuple[str, str], dict[str, Any]] = {}
        """(namespace, name) -> a NamespacedWorkspaceClass."""
        self.secrets: dict[tuple[str, str], SecretData] = {}
        self.leases: dict[tuple[str, str], LeaseData] = {}
        self.quotas: dict[tuple[str, str], dict[str, Any]] = {}
        """(namespace, name) -> a WorkspaceQuota."""
        self.namespaces: dict[str, dict[str, str]] = {}
        """Namespace name -> its labels; one not here does not exist."""
        self.images: dict[str, dict[str, Any]] = {}
        """Name -> a WorkspaceImage."""
        self.calls = CallLog()
        self._versions = itertools.count(1)

    def _version(self) -> str:
        return str(next(self._versions))

    async def aclose(self) -> None:
        self.calls.log("aclose")

    # -- knobs ------------------------------------------------------------------------
    def add_secret(self, namespace: str, name: str, data: Mapping[str, str], *,
                   labels: Mapping[str, str] | None = None, owner: Owner | None = None
                   ) -> SecretData:
        owners = (OwnerRef(kind=owner.kind, name=owner.name, uid=owner.uid),) if owner else ()
        secret = SecretData(data=dict(data), resource_version=self._version(),
                            owner_uids=tuple(o.uid for o in owners), labels=dict(labels or {}),
                            owners=owners, uid=f"secret-{namespace}-{name}")
        self.secrets[(namespace, name)] = secret
        return secret

    # -- KubePort ---------------------------------------------------------------------
    async def get_workspace(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        self.calls.log("get_workspace", namespace, name)
        return self.workspaces.get((namespace, name))

    async def patch_workspace_status(self, namespace: str, name: str,
                                     patch: Mapping[str, Any]) -> str | None:
        self.calls.log("patch_workspace_status", namespace, name)
        body = self.workspaces.get((namespace, name))
        if body is None:  # gone: nothing left to describe
            return None
        body["status"] = apply_merge_patch(body.get("status"), patch)
        version = self._version()
        body.setdefault("metadata", {})["resourceVersion"] = version
        return version

    async def get_workspace_class(self, name: str) -> Mapping[str, Any] | None:
        self.calls.log("get_workspace_class", name)
        return self.classes.get(name)

    async def list_workspaces(self, namespace: str) -> list[Mapping[str, Any]]:
        self.calls.log("list_workspaces", namespace)
        return [w for (ns, _), w in self.workspaces.items() if ns == namespace]

    async def set_secret_finalizers(self, namespace: str, name: str, current: SecretData,
                                    finalizers: Sequence[str]) -> None:
        self.calls.log("set_secret_finalizers", namespace, name, tuple(finalizers))
        stored = self.secrets.get((namespace, name))
        if stored is None:
            return
        if stored.resource_version != current.resource_version:
            raise KubeError(422, "the resourceVersion test failed")
        self.secrets[(namespace, name)] = replace(stored, finalizers=tuple(finalizers),
                                                  resource_version=self._version())

    async def list_workspace_quotas(self, namespace: str) -> list[Mapping[str, Any]]:
        self.calls.log("list_workspace_quotas", namespace)
        return [q for (ns, _), q in self.quotas.items() if ns == namespace]

    async def patch_workspace_quota_status(self, namespace: str, name: str,
                                           patch: Mapping[str, Any]) -> None:
        self.calls.log("patch_workspace_quota_status", namespace, name)
        body = self.quotas.get((namespace, name))
        if body is not None:
            body["status"] = apply_merge_patch(body.get("status"), patch)

    async def get_workspace_image(self, name: str) -> Mapping[str, Any] | None:
        self.calls.log("get_workspace_image", name)
        return self.images.get(name)

    async def patch_workspace_class_status(self, name: str,
                                           patch: Mapping[str, Any]) -> None:
        self.calls.log("patch_workspace_class_status", name)
        body = self.classes.get(name)
        if body is not None:
            body["status"] = apply_merge_patch(body.get("status"), patch)

    async def patch_workspace_image_status(self, name: str,
                                           patch: Mapping[str, Any]) -> None:
        self.calls.log("patch_workspace_image_status", name)
        body = self.images.get(name)
        if body is not None:
            body["status"] = apply_merge_patch(body.get("status"), patch)

    async def get_namespaced_workspace_class(self, namespace: str, name: str
                                             ) -> Mapping[str, Any] | None:
        self.calls.log("get_namespaced_workspace_class", namespace, name)
        return self.namespaced_classes.get((namespace, name))

    async def namespace_labels(self, name: str) -> Mapping[str, str] | None:
        self.calls.log("namespace_labels", name)
        return self.namespaces.get(name)

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        self.calls.log("read_secret", namespace, name)
        return self.secrets.get((namespace, name))

    async def create_secret(self, namespace: str, name: str, data: Mapping[str, str],
                            owner: Owner | None, labels: Mapping[str, str],
                            annotations: Mapping[str, str] | None = None,
                            finalizers: Sequence[str] = ()) -> SecretData:
        self.calls.log("create_secret", namespace, name)
        existing = self.secrets.get((namespace, name))
        if existing is not None:
            return existing  # the adapter reads the existing one back on 409
        secret = self.add_secret(namespace, name, data, labels=labels, owner=owner)
        secret = replace(secret, annotations=dict(annotations or {}),
                         finalizers=tuple(finalizers))
        self.secrets[(namespace, name)] = secret
        return secret

    async def replace_secret_data(self, namespace: str, name: str,
                                  data: Mapping[str, str]) -> None:
        self.calls.log("replace_secret_data", namespace, name)
        current = self.secrets.get((namespace, name))
        if current is None:
            raise KubeError(404, "Not Found")
        # A merge patch of .data: keys not named stay.
        self.secrets[(namespace, name)] = replace(
            current, data={**current.data, **data}, resource_version=self._version())

    async def release_secret(self, namespace: str, name: str, owner_uid: str,
                             labels: Mapping[str, str] | None = None,
                             annotations: Mapping[str, str] | None = None) -> None:
        self.calls.log("release_secret", namespace, name)
        current = self.secrets.get((namespace, name))
        if current is None:
            return
        owners = tuple(o for o in current.owners if o.uid != owner_uid)
        self.secrets[(namespace, name)] = replace(
            current, owners=owners, owner_uids=tuple(o.uid for o in owners),
            labels={**current.labels, **(labels or {})},
            annotations={**current.annotations, **(annotations or {})},
            resource_version=self._version())

    async def delete_secret(self, namespace: str, name: str, uid: str | None = None
                            ) -> None:
        self.calls.log("delete_secret", namespace, name)
        current = self.secrets.get((namespace, name))
        if current is not None and (uid is None or current.uid == uid):
            del self.secrets[(namespace, name)]

    async def read_lease(self, namespace: str, name: str) -> LeaseData | None:
        self.calls.log("read_lease", namespace, name)
        return self.leases.get((namespace, name))

    async def create_lease(self, namespace: str, name: str, holder: str,
                           labels: Mapping[str, str], annotations: Mapping[str, str]
                           ) -> LeaseData | None:
        self.calls.log("create_lease", namespace, name)
        if (namespace, name) in self.leases:
            return None
        lease = LeaseData(name=name, holder=holder, labels=dict(labels),
                          annotations=dict(annotations), resource_version=self._version())
        self.leases[(namespace, name)] = lease
        return lease

    async def replace_lease(self, namespace: str, current: LeaseData, holder: str,
                            labels: Mapping[str, str], annotations: Mapping[str, str]
                            ) -> bool:
        self.calls.log("replace_lease", namespace, current.name)
        stored = self.leases.get((namespace, current.name))
        if stored is None or stored.resource_version != current.resource_version:
            return False
        self.leases[(namespace, current.name)] = LeaseData(
            name=current.name, holder=holder, labels=dict(labels),
            annotations=dict(annotations), resource_version=self._version())
        return True

    async def delete_lease(self, namespace: str, current: LeaseData) -> None:
        self.calls.log("delete_lease", namespace, current.name)
        stored = self.leases.get((namespace, current.name))
        if stored is not None and stored.resource_version == current.resource_version:
            del self.leases[(namespace, current.name)]


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: `target` with the merge patch applied (None deletes a key)."""
    if not isinstance(patch, Mapping):
        return patch
    merged = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = apply_merge_patch(merged.get(key), value)
    return merged


@dataclass
class FakeAgent:
    """`AgentPort` (agent_client.py): one VM's agent, its status document held typed.

    The agent accepts what it is sent (secrets, config, start) and reports it back;
    `state` is what GET /v1/status answers, and a test moves it (`ready`, `booting`).
    """

    state: AgentStatus = field(default_factory=lambda: AgentStatus(
        version="test", boot_stage=BootStage.WAITING_FOR_START, share_links=True))
    reachable: bool = True
    calls: CallLog = field(default_factory=CallLog)
    connections: list[str] = field(default_factory=list)
    """Agent URLs the runtime opened a client for."""
    ca_bundle: str | None = None
    """The CA bundle the last put_config delivered."""
    registry_config: str | None = None
    """The registry credentials the last put_secrets delivered."""
    claude_credential: dict[str, Any] = field(default_factory=dict)
    """Claude Code's credential the last put_secrets delivered (by protocol field)."""
    web_keys: dict[str, str | None] = field(default_factory=dict)
    """shareLinkKey and sessionKey as the last put_secrets delivered them."""
    link_ports: tuple[int, ...] = ()
    """The link ports the last put_config delivered."""
    closed: int = 0
    save: SaveJob = field(default_factory=SaveJob)
    """The pre-stop save job (GET /v1/save); `start_save` begins one, `finish_save` ends it."""
    save_requests: list[SaveRequest] = field(default_factory=list)
    save_refusal: Exception | None = None
    """Raised by start_save (e.g. AgentError(404, ...) from an agent without saves)."""

    def _enter(self, method: str, *args: object) -> None:
        self.calls.log(method, *args)
        if not self.reachable:
            raise AgentUnreachable("connection refused")

    def set_stage(self, stage: BootStage) -> None:
        self.state = replace(self.state, boot_stage=stage)

    def report_ready(self, since: datetime, agent_state: str = "idle") -> None:
        """Booted: the devcontainer runs and the activity tracker reports `agent_state`."""
        self.state = replace(
            self.state, boot_stage=BootStage.READY,
            devcontainer=DevcontainerReport(state="running", policy="generated"),
            activity=Activity(agent_state=agent_state, agent_state_since=since,
                              last_activity_time=since))

    async def status(self) -> dict[str, Any]:
        self._enter("status")
        return self.state.to_json()

    async def agent_status(self) -> AgentStatus:
        self._enter("agent_status")
        return self.state

    async def put_agent_bundle(self, bundle: bytes) -> dict[str, Any]:
        self._enter("put_agent_bundle")
        self.set_stage(BootStage.WAITING_FOR_START)
        return {"ok": True}

    async def put_secrets(self, *, version: str, basic_auth_username: str,
                          basic_auth_scrypt_hash: str, anthropic_api_key: str | None = None,
                          repository_token: str | None = None,
                          registry_config: str | None = None,
                          claude_oauth_token: str | None = None,
                          gateway: Mapping[str, Any] | None = None,
                          share_link_key: str | None = None,
                          session_key: str | None = None) -> dict[str, Any]:
        self._enter("put_secrets", version)
        self.web_keys = {"shareLinkKey": share_link_key, "sessionKey": session_key}
        self.registry_config = registry_config
        self.claude_credential = {"anthropicApiKey": anthropic_api_key,
                                  "claudeOauthToken": claude_oauth_token,
                                  "gateway": None if gateway is None else dict(gateway)}
        self.state = replace(self.state, secrets_version=version)
        return {"version": version}

    async def put_config(self, public_ports: Iterable[int],
                         ca_bundle: str | None = None,
                         link_ports: Iterable[int] = ()) -> dict[str, Any]:
        ports = tuple(sorted(public_ports))
        self._enter("put_config", ports)
        self.ca_bundle = ca_bundle
        self.link_ports = tuple(sorted(link_ports))
        self.state = replace(self.state, ports=ports)
        return {"ports": list(ports)}

    async def start(self, restore_plan: RestorePlan | None) -> dict[str, Any]:
        self._enter("start", restore_plan is not None)
        self.set_stage(BootStage.RESTORING if restore_plan else BootStage.CLONING)
        return {"bootStage": self.state.boot_stage.value}

    async def start_backup(self, plan: BackupPlan) -> str:
        self._enter("start_backup")
        raise NotImplementedError("backups are not modelled by FakeAgent")

    async def backup_status(self) -> BackupJob:
        self._enter("backup_status")
        raise NotImplementedError("backups are not modelled by FakeAgent")

    async def start_save(self, request: SaveRequest) -> str:
        self._enter("start_save", request.mode.value)
        if self.save_refusal is not None:
            raise self.save_refusal
        self.save_requests.append(request)
        self.save = SaveJob(state=JobState.RUNNING, save_id=request.save_id)
        return request.save_id

    async def save_status(self) -> SaveJob:
        self._enter("save_status")
        return self.save

    def finish_save(self, result: SaveResult) -> None:
        self.save = SaveJob(state=JobState.SUCCEEDED, save_id=self.save.save_id,
                            result=result)

    async def aclose(self) -> None:
        self.closed += 1


if TYPE_CHECKING:  # mypy checks that each fake is what it stands in for
    from agentspaces.runtime import AgentAdapter, DnsAdapter, ServerAdapter

    _server_port: ServerAdapter = FakeServers()
    _dns_port: DnsAdapter = FakeDns()
    _kube_port: KubePort = FakeKube()
    _agent_port: AgentAdapter = FakeAgent()
