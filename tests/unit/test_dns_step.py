"""The DNS step against the in-memory Cloudflare fake: records for the server's
addresses, no call once status matches, updates when an address moves, someone else's
record at our name refused and untouched, and only our records removed on stop."""

from __future__ import annotations

from dataclasses import replace

from agentspaces.api.enums import ConditionStatus, ConditionType, Reason
from agentspaces.clouds.cloudflare import DnsRecord
from agentspaces.clouds.errors import ErrorKind
from agentspaces.reconcile import dns_step
from agentspaces.reconcile.outcome import Wait
from agentspaces.reconcile.scope import Scope
from tests.support.fakes import cloudflare_error
from tests.support.scope_builder import ZONE, ScopeBuilder

FALSE, TRUE = ConditionStatus.FALSE, ConditionStatus.TRUE


def dns_ready(scope: Scope) -> tuple[ConditionStatus, str | None]:
    found = next(c for c in scope.status.conditions if c.type == ConditionType.DNS_READY)
    return found.status, found.reason


def with_server(b: ScopeBuilder) -> Scope:
    """A scope whose server step found our running server."""
    scope = b.scope()
    existing = list(b.servers.servers.values())
    scope.server = existing[0] if existing else b.add_our_server()
    return scope


def names(records: list[DnsRecord]) -> list[tuple[str, str]]:
    return sorted((r.type, r.name) for r in records)


async def test_records_for_the_server_are_created_with_our_owner_comment(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    scope = with_server(b)
    assert await dns_step.reconcile(scope) is None

    host = scope.host
    expected = [("A", host), ("A", f"*.{host}"), ("AAAA", host), ("AAAA", f"*.{host}")]
    assert names(b.dns.in_zone(ZONE)) == sorted(expected)
    assert all(r.comment and b.uid in r.comment for r in b.dns.in_zone(ZONE))
    assert b.dns.calls.methods() == ["zone_id", "list_records", "list_records",
                                     *["create_record"] * 4]
    assert dns_ready(scope) == (TRUE, Reason.DNS_RECORDS_READY)
    assert scope.status.dns is not None and len(scope.status.dns.records) == 4
    assert scope.status.urls is not None and scope.status.urls.workspace == f"https://{host}"


async def test_records_matching_status_cost_no_call(scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    first = with_server(b)
    await dns_step.reconcile(first)
    b.save(first)
    b.clear_calls()

    again = with_server(b)
    assert await dns_step.reconcile(again) is None
    assert b.dns.calls == []


async def test_a_moved_address_updates_our_records_in_place(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    first = with_server(b)
    await dns_step.reconcile(first)
    b.save(first)
    b.clear_calls()

    moved = b.scope()
    assert first.server is not None
    moved.server = replace(first.server, ipv4="198.51.100.20")
    assert await dns_step.reconcile(moved) is None
    # The zone id comes from status; only the two A records change.
    assert b.dns.calls.methods() == ["list_records", "list_records",
                                     "update_record", "update_record"]
    assert sorted(r.content for r in b.dns.in_zone(ZONE) if r.type == "A") == \
        ["198.51.100.20"] * 2


async def test_someone_elses_record_at_our_name_is_refused_and_left_alone(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    scope = with_server(b)
    theirs = b.dns.add_record(ZONE, DnsRecord(id="", name=scope.host, type="A",
                                              content="203.0.113.9", comment="billing app"))
    outcome = await dns_step.reconcile(scope)

    assert theirs in b.dns.in_zone(ZONE)  # unchanged
    assert not b.dns.calls.only(["update_record", "delete_record"])
    assert dns_ready(scope) == (FALSE, Reason.DNS_NAME_TAKEN)
    assert outcome is not None and outcome.requeue == Wait.PERMANENT
    assert Reason.DNS_NAME_TAKEN in b.reasons()


async def test_a_zone_the_token_cannot_see_is_reported(scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    del b.dns.zones[ZONE]
    scope = with_server(b)
    outcome = await dns_step.reconcile(scope)

    assert b.dns.calls.methods() == ["zone_id"]
    assert dns_ready(scope) == (FALSE, Reason.DNS_ZONE_NOT_FOUND)
    assert outcome is not None and outcome.requeue == Wait.PERMANENT


async def test_a_rate_limit_waits_as_long_as_cloudflare_said(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    b.dns.fail_next("list_records", cloudflare_error(ErrorKind.RATE_LIMITED, 10000,
                                                     "slow down", 429, retry_after=42))
    scope = with_server(b)
    outcome = await dns_step.reconcile(scope)

    assert b.dns.in_zone(ZONE) == []
    assert dns_ready(scope) == (FALSE, Reason.RATE_LIMITED)
    assert outcome is not None and outcome.requeue == 42


async def test_delete_removes_only_our_records(scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    first = with_server(b)
    await dns_step.reconcile(first)
    b.save(first)
    theirs = b.dns.add_record(ZONE, DnsRecord(id="", name=first.host, type="TXT",
                                              content="site-verification=abc"))
    b.clear_calls()

    stopping = b.scope()
    assert await dns_step.delete(stopping) is None
    assert b.dns.in_zone(ZONE) == [theirs]
    assert len(b.dns.calls.only(["delete_record"])) == 4
    assert stopping.status.dns is None
    assert dns_ready(stopping) == (FALSE, Reason.DNS_RECORDS_REMOVED)
