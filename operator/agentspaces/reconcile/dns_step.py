"""DNS for a running workspace, and its removal on stop and delete.

Once status lists exactly the records the current IPs need, this step makes no
Cloudflare call at all; new ports never need DNS (the wildcard covers them).
"""

from __future__ import annotations

from agentspaces.api.enums import ConditionType as T
from agentspaces.api.enums import Reason, UrlState
from agentspaces.api.status import UrlsStatus
from agentspaces.clouds.cloudflare import DnsProvider
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


async def reconcile(scope: Scope) -> Outcome | None:
    """The workspace's names point at `scope.server` (set by the server step)."""
    server = scope.server
    assert server is not None and server.ipv4, "the server step runs first"
    klass = scope.klass
    desired = dns.desired_records(
        scope.host, ipv4=server.ipv4, ipv6=server.ipv6, ttl=klass.dns.ttl,
        proxied=klass.dns.proxied, uid=scope.ref.uid, namespace=scope.ref.namespace,
        name=scope.ref.name, txt_registry=klass.dns.txt_registry,
        txt_owner_id=klass.dns.txt_owner_id)
    status = scope.status
    status.urls = workspace_urls(scope)
    recorded = status.dns.records if status.dns is not None else None
    if status.is_true(T.DNS_READY) and dns.records_match(recorded, desired):
        return None
    try:
        result = await dns.ensure_records(_provider(scope), klass.dns.zone_name, desired,
                                          scope.ref.uid, zone_id=_zone_id(scope))
    except CloudError as err:
        return cloud_failure(scope, T.DNS_READY, err, "DNS records")
    status.dns = result.status()
    if not result.ready:
        status.condition(T.DNS_READY, False, Reason.DNS_NAME_TAKEN, result.conflict_message())
        scope.emit("Warning", Reason.DNS_NAME_TAKEN, result.conflict_message())
        return Outcome.after(Wait.PERMANENT, "dns name taken")
    if result.writes:
        scope.emit("Normal", "DNSUpdated", f"{len(result.created)} created, "
                   f"{len(result.updated)} updated for {scope.host}")
    status.condition(T.DNS_READY, True, Reason.DNS_RECORDS_READY,
                     f"{scope.host} and *.{scope.host} point at {server.ipv4}")
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
