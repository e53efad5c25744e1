"""DNS for a workspace: its names point at its server while it runs; stopped, at the
class's wake gateway when a request may wake it, else nowhere.

Once status lists exactly the records the current target needs, this step makes no
Cloudflare call at all; new ports never need DNS (the wildcard covers them). Switching
between server and gateway updates the same records in place (docs/dns.md, "Names while
stopped"); a delete removes them all.
"""

from __future__ import annotations

from agentspaces.api.enums import ConditionType as T
from agentspaces.api.enums import DnsTarget, Reason, StoppedBy, UrlState
from agentspaces.api.status import UrlsStatus, WorkspaceStatus
from agentspaces.api.types import WakeGateway
from agentspaces.clouds.cloudflare import DnsProvider, DnsRecord
from agentspaces.clouds.errors import CloudError
from agentspaces.reconcile import dns
from agentspaces.reconcile.outcome import Outcome, Wait, cloud_failure
from agentspaces.reconcile.scope import Scope


def urls(scheme: str, host: str, port: int | None) -> UrlsStatus:
    """Where a live workspace answers (`ports` is a pattern: {port} is the port)."""
    suffix = f":{port}" if port else ""
    return UrlsStatus(workspace=f"{scheme}://{host}{suffix}", ui=f"{scheme}://{host}{suffix}/",
                      ports=f"{scheme}://{{port}}.{host}{suffix}", state=UrlState.LIVE)


def workspace_urls(scope: Scope) -> UrlsStatus:
    tls = scope.klass.tls
    if tls.mode == "none":
        return urls("http", scope.host, None if tls.http_port == 80 else tls.http_port)
    return urls("https", scope.host, None if tls.https_port == 443 else tls.https_port)


def _provider(scope: Scope) -> DnsProvider:
    return scope.runtime.dns(scope.creds.dns_token, scope.klass.dns.endpoint)


def _zone_id(scope: Scope) -> str | None:
    return scope.status.dns.zone_id if scope.status.dns is not None else None


def _desired(scope: Scope, ipv4: str, ipv6: str | None) -> list[DnsRecord]:
    klass = scope.klass
    return dns.desired_records(
        scope.host, ipv4=ipv4, ipv6=ipv6, ttl=klass.dns.ttl, proxied=klass.dns.proxied,
        uid=scope.ref.uid, namespace=scope.ref.namespace, name=scope.ref.name,
        txt_registry=klass.dns.txt_registry, txt_owner_id=klass.dns.txt_owner_id)


def _record(scope: Scope, result: dns.EnsureResult, target: DnsTarget) -> None:
    """status.dns after an ensure run. changedAt moves when the target does (the first
    records at a new server are no switch: nothing pointed elsewhere before)."""
    status = scope.status
    before = status.dns
    previous = before.target if before is not None else None
    changed_at = before.changed_at if before is not None else None
    if previous != target and (previous is not None or target is DnsTarget.GATEWAY):
        changed_at = scope.now()
    status.dns = result.status()
    status.dns.target = target
    status.dns.changed_at = changed_at


def _written(result: dns.EnsureResult) -> str:
    return (f"{len(result.updated)} updated, {len(result.created)} created, "
            f"{len(result.deleted)} deleted")


async def reconcile(scope: Scope) -> Outcome | None:
    """The workspace's names point at `scope.server` (set by the server step)."""
    server = scope.server
    assert server is not None and server.ipv4, "the server step runs first"
    klass = scope.klass
    desired = _desired(scope, server.ipv4, server.ipv6)
    status = scope.status
    status.urls = workspace_urls(scope)
    recorded = status.dns.records if status.dns is not None else None
    if status.is_true(T.DNS_READY) and dns.records_match(recorded, desired):
        assert status.dns is not None
        status.dns.target = DnsTarget.SERVER  # records made before targets were recorded
        return None
    try:
        result = await dns.ensure_records(_provider(scope), klass.dns.zone_name, desired,
                                          scope.ref.uid, zone_id=_zone_id(scope))
    except CloudError as err:
        return cloud_failure(scope, T.DNS_READY, err, "DNS records")
    _record(scope, result, DnsTarget.SERVER)
    if not result.ready:
        status.condition(T.DNS_READY, False, Reason.DNS_NAME_TAKEN, result.conflict_message())
        scope.emit("Warning", Reason.DNS_NAME_TAKEN, result.conflict_message())
        return Outcome.after(Wait.PERMANENT, "dns name taken")
    if result.writes:
        scope.emit("Normal", "DNSUpdated", f"{_written(result)} for {scope.host}")
    status.condition(T.DNS_READY, True, Reason.DNS_RECORDS_READY,
                     f"{scope.host} and *.{scope.host} point at the server {server.ipv4}")
    return None


def _gateway(scope: Scope, stopped_by: StoppedBy | None) -> WakeGateway | None:
    return dns.stopped_target(scope.klass.wake_gateway, scope.spec.wake_on_request,
                              stopped_by)


def at_gateway(status: WorkspaceStatus) -> bool:
    return status.dns is not None and status.dns.target is DnsTarget.GATEWAY


def stopped_settled(scope: Scope, stopped_by: StoppedBy | None) -> bool:
    """A stopped workspace's names are where they belong, as far as status shows: none
    left, or exactly the records the class's wake gateway needs (no Cloudflare call)."""
    status = scope.status
    gateway = _gateway(scope, stopped_by)
    if gateway is None:
        return status.dns is None
    return (at_gateway(status) and status.is_true(T.DNS_READY) and status.dns is not None
            and dns.records_match(status.dns.records,
                                  _desired(scope, gateway.ipv4, gateway.ipv6)))


async def stop(scope: Scope, stopped_by: StoppedBy | None) -> Outcome | None:
    """On a stop (the server is gone): point the names at the wake gateway when a request
    may wake the workspace, else remove them. None when done."""
    gateway = _gateway(scope, stopped_by)
    if gateway is None:
        return await delete(scope)
    if stopped_settled(scope, stopped_by):
        return None
    klass = scope.klass
    status = scope.status
    try:
        result = await dns.ensure_records(_provider(scope), klass.dns.zone_name,
                                          _desired(scope, gateway.ipv4, gateway.ipv6),
                                          scope.ref.uid, zone_id=_zone_id(scope))
    except CloudError as err:
        return cloud_failure(scope, T.DNS_READY, err, "DNS records for the wake gateway")
    if not result.ready:
        # Someone else's record sits at one of our names: leave nothing of ours pointing
        # anywhere (a stale address could be handed to another customer), as without a
        # gateway. The next start reports the conflict as usual.
        message = (f"{result.conflict_message()}; the names cannot point at the wake "
                   "gateway, so this workspace's records are removed")
        scope.emit("Warning", Reason.DNS_NAME_TAKEN, message)
        outcome = await delete(scope)
        if outcome is None:
            status.condition(T.DNS_READY, False, Reason.DNS_NAME_TAKEN, message)
        return outcome
    _record(scope, result, DnsTarget.GATEWAY)
    where = gateway.ipv4 + (f" and {gateway.ipv6}" if gateway.ipv6 else "")
    if result.writes:
        scope.emit("Normal", "DNSUpdated", f"{_written(result)} for {scope.host}: the names "
                   f"point at the wake gateway {where}")
    status.condition(T.DNS_READY, True, Reason.DNS_AT_GATEWAY,
                     f"{scope.host} and *.{scope.host} point at the wake gateway {where}; "
                     "opening the URL wakes the workspace")
    status.urls = workspace_urls(scope)
    status.urls.state = UrlState.GATEWAY
    return None


async def delete(scope: Scope) -> Outcome | None:
    """Delete this workspace's records (only ours); None when none is left."""
    klass = scope.klass
    status = scope.status
    names = dns.record_names(scope.host, txt_registry=klass.dns.txt_registry)
    try:
        result = await dns.remove_records(_provider(scope), klass.dns.zone_name, names,
                                          scope.ref.uid, zone_id=_zone_id(scope))
    except CloudError as err:
        return cloud_failure(scope, T.DNS_READY, err, "DNS cleanup")
    if result.deleted:
        scope.emit("Normal", "DNSRemoved", f"removed {len(result.deleted)} records")
    status.dns = None
    status.condition(T.DNS_READY, False, Reason.DNS_RECORDS_REMOVED, "no records while stopped")
    return None
