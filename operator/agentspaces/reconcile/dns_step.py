"""DNS for a running workspace, and its removal on stop and delete.

Once status lists exactly the records the current IPs need, this step makes no
Cloudflare call at all; new ports never need DNS (the wildcard covers them).
"""

from __future__ import annotations

from agentspaces.api import conditions as C
from agentspaces.clouds.cloudflare import DnsError, ZoneNotFound
from agentspaces.clouds.hetzner import ServerInfo
from agentspaces.reconcile import dns
from agentspaces.reconcile.scope import Outcome, Scope

PERMANENT_WAIT = 300.0


def urls(scheme: str, host: str, port: int | None) -> dict[str, str]:
    suffix = f":{port}" if port else ""
    return {"workspace": f"{scheme}://{host}{suffix}", "ui": f"{scheme}://{host}{suffix}/",
            "ports": f"{scheme}://{{port}}.{host}{suffix}"}


def workspace_urls(scope: Scope) -> dict[str, str]:
    assert scope.creds is not None
    tls = scope.creds.klass.tls
    if tls.mode == "none":
        return urls("http", scope.host, None if tls.http_port == 80 else tls.http_port)
    return urls("https", scope.host, None if tls.https_port == 443 else tls.https_port)


def _provider(scope: Scope) -> dns.DnsProvider:
    assert scope.creds is not None
    return scope.runtime.dns(scope.creds.dns_token, scope.creds.klass.dns.endpoint)  # type: ignore[no-any-return]


def _failure(scope: Scope, err: DnsError, what: str) -> Outcome:
    if isinstance(err, ZoneNotFound):
        scope.status.condition(C.DNS_READY, False, C.DNS_ZONE_NOT_FOUND, str(err))
        return Outcome.after(PERMANENT_WAIT, "zone not found")
    if err.transient:
        reason = C.RATE_LIMITED if err.retry_after else C.CLOUD_API_ERROR
        scope.status.condition(C.DNS_READY, False, reason, f"{what}: {err}")
        return Outcome.after(err.retry_after or scope.runtime.settings.boot_poll * 2, reason)
    scope.status.condition(C.DNS_READY, False, C.CLOUD_API_ERROR, f"{what}: {err}")
    scope.emit("Warning", C.CLOUD_API_ERROR, f"{what}: {err}")
    return Outcome.after(PERMANENT_WAIT, "dns error")


async def ensure(scope: Scope, server: ServerInfo) -> Outcome | None:
    assert scope.creds is not None and server.ipv4
    klass = scope.creds.klass
    desired = dns.desired_records(
        scope.host, ipv4=server.ipv4, ipv6=server.ipv6, ttl=klass.dns.ttl,
        proxied=klass.dns.proxied, uid=scope.ref.uid, namespace=scope.ref.namespace,
        name=scope.ref.name, txt_registry=klass.dns.txt_registry,
        txt_owner_id=klass.dns.txt_owner_id)
    status = scope.status
    status.set("urls", {**workspace_urls(scope), "state": "live"})
    if status.is_true(C.DNS_READY) and dns.records_match(status.get("dns", "records"), desired):
        return None
    try:
        result = await dns.ensure_records(_provider(scope), klass.dns.zone_name, desired,
                                          scope.ref.uid, zone_id=status.get("dns", "zoneId"))
    except DnsError as err:
        return _failure(scope, err, "DNS records")
    status.set("dns", result.status())
    if not result.ready:
        status.condition(C.DNS_READY, False, C.DNS_NAME_TAKEN, result.conflict_message())
        scope.emit("Warning", C.DNS_NAME_TAKEN, result.conflict_message())
        return Outcome.after(PERMANENT_WAIT, "dns name taken")
    if result.writes:
        scope.emit("Normal", "DNSUpdated", f"{len(result.created)} created, "
                   f"{len(result.updated)} updated for {scope.host}")
    status.condition(C.DNS_READY, True, C.DNS_RECORDS_READY,
                     f"{scope.host} and *.{scope.host} point at {server.ipv4}")
    return None


async def remove(scope: Scope) -> Outcome | None:
    """Delete this workspace's records (only ours); None when none is left."""
    assert scope.creds is not None
    klass = scope.creds.klass
    status = scope.status
    names = dns.record_names(scope.host, txt_registry=klass.dns.txt_registry)
    try:
        result = await dns.remove_records(_provider(scope), klass.dns.zone_name, names,
                                          scope.ref.uid, zone_id=status.get("dns", "zoneId"))
    except DnsError as err:
        return _failure(scope, err, "DNS cleanup")
    if result.deleted:
        scope.emit("Normal", "DNSRemoved", f"removed {len(result.deleted)} records")
    status.set("dns", None)
    status.condition(C.DNS_READY, False, C.DNS_RECORDS_REMOVED, "no records while stopped")
    return None


# --- step contract -------------------------------------------------------------------

async def reconcile(scope: Scope) -> Outcome | None:
    assert scope.server is not None
    return await ensure(scope, scope.server)


async def delete(scope: Scope) -> Outcome | None:
    return await remove(scope)
