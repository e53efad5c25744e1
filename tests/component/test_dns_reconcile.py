"""The Cloudflare adapter and the DNS reconciler against the emulator, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from agentspaces.api.hostnames import workspace_host, workspace_label
from agentspaces.clouds.budget import Budget, BudgetExhausted
from agentspaces.clouds.cloudflare import ZONE_NOT_FOUND, CloudflareDns, DnsProvider, DnsRecord
from agentspaces.clouds.errors import CloudError, ErrorKind
from agentspaces.reconcile import dns
from agentspaces.sandbox.cloudflare import CloudflareEmulator, running
from tests.support.clock import FakeClock

TOKEN = "reconcile-test-token-5e1f"
UID = "9d7c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
ZONE = "example.com"
HOST = workspace_host(workspace_label("demo", "team-a"), ZONE)
WILD = f"*.{HOST}"
IPV4 = "203.0.113.10"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(5000.0)


@pytest.fixture
def emulator(clock: FakeClock) -> Iterator[CloudflareEmulator]:
    with running(zones=(ZONE, "other.org"), tokens={TOKEN: None, "scoped": {"other.org"}},
                 clock=clock) as emu:
        yield emu


@pytest.fixture
async def provider(emulator: CloudflareEmulator, clock: FakeClock
                   ) -> AsyncIterator[CloudflareDns]:
    # The request budget runs on the emulator's clock, so a test's wait is the same to both.
    async with CloudflareDns(emulator.url, TOKEN, timeout=5,
                             budget=Budget.cloudflare(clock)) as adapter:
        yield adapter


def desired(ipv4: str = IPV4, ipv6: str | None = None, **kw: object) -> list[DnsRecord]:
    return dns.desired_records(HOST, ipv4=ipv4, ipv6=ipv6, uid=UID, namespace="team-a",
                               name="demo", **kw)  # type: ignore[arg-type]


def held(emulator: CloudflareEmulator) -> list[tuple[str, str, str]]:
    return sorted((r["name"], r["type"], r["content"]) for r in emulator.records(ZONE))


# --- adapter -------------------------------------------------------------------------------
async def test_adapter_is_a_dns_provider(provider: CloudflareDns) -> None:
    assert isinstance(provider, DnsProvider)
    assert TOKEN not in repr(provider)


async def test_zone_lookup_is_cached(provider: CloudflareDns,
                                     emulator: CloudflareEmulator) -> None:
    assert await provider.zone_id(ZONE) == emulator.zone_id(ZONE)
    assert await provider.zone_id("Example.COM.") == emulator.zone_id(ZONE)
    assert emulator.calls["GET /zones"] == 1
    with pytest.raises(CloudError, match="Zone:Zone:Read") as caught:
        await provider.zone_id("missing.net")
    assert (caught.value.kind, caught.value.code) == (ErrorKind.NOT_FOUND, ZONE_NOT_FOUND)


async def test_zone_outside_token_scope_is_not_found(emulator: CloudflareEmulator) -> None:
    async with CloudflareDns(emulator.url, "scoped") as scoped:
        with pytest.raises(CloudError) as caught:
            await scoped.zone_id(ZONE)
        assert caught.value.code == ZONE_NOT_FOUND
        assert await scoped.zone_id("other.org") == emulator.zone_id("other.org")


async def test_record_round_trip(provider: CloudflareDns, emulator: CloudflareEmulator) -> None:
    zid = await provider.zone_id(ZONE)
    created = await provider.create_record(zid, DnsRecord(
        id="", name=HOST, type="A", content=IPV4, ttl=120, comment="note"))
    assert (created.name, created.type, created.content, created.ttl, created.comment) == (
        HOST, "A", IPV4, 120, "note")
    assert await provider.list_records(zid, HOST) == [created]
    assert await provider.list_records(zid, WILD) == []
    updated = await provider.update_record(zid, created.id, DnsRecord(
        id=created.id, name=HOST, type="A", content="203.0.113.11", ttl=120))
    assert updated.id == created.id and updated.content == "203.0.113.11"
    assert updated.comment == "note"  # PATCH leaves the comment alone
    await provider.delete_record(zid, created.id)
    await provider.delete_record(zid, created.id)  # already gone: fine
    assert emulator.records(ZONE) == []
    assert emulator.log[-1][2] == 404


async def test_list_follows_pages(emulator: CloudflareEmulator) -> None:
    for i in range(5):
        emulator.seed_record(ZONE, "A", HOST, f"198.51.100.{i + 1}")
    emulator.seed_record(ZONE, "A", WILD, "198.51.100.99")
    async with CloudflareDns(emulator.url, TOKEN, per_page=2) as adapter:
        records = await adapter.list_records(emulator.zone_id(ZONE), HOST)
    assert sorted(r.content for r in records) == [f"198.51.100.{i + 1}" for i in range(5)]
    assert emulator.calls["GET /zones/{id}/dns_records"] == 3


async def test_permanent_errors_carry_status_and_code(provider: CloudflareDns) -> None:
    zid = await provider.zone_id(ZONE)
    with pytest.raises(CloudError) as caught:
        await provider.create_record(zid, DnsRecord(id="", name=HOST, type="A",
                                                    content="not-an-ip"))
    err = caught.value
    assert (err.kind, err.provider, err.status) == (ErrorKind.PERMANENT, "cloudflare", 400)
    assert err.code == "9005" and "valid IPv4" in str(err)


async def test_bad_token_never_shows_in_errors(emulator: CloudflareEmulator) -> None:
    secret = "leaky-token-value-123"
    async with CloudflareDns(emulator.url, secret) as adapter:
        with pytest.raises(CloudError) as caught:
            await adapter.list_records(emulator.zone_id(ZONE), HOST)
    err = caught.value
    assert (err.status, err.code, err.kind) == (403, "9109", ErrorKind.UNAUTHORIZED)
    assert secret not in str(err) and secret not in repr(err) and secret not in err.message


async def test_rate_limit_surfaces_without_retrying(provider: CloudflareDns,
                                                    emulator: CloudflareEmulator) -> None:
    zid = await provider.zone_id(ZONE)
    emulator.inject(429, times=1, retry_after=42)
    with pytest.raises(CloudError) as caught:
        await provider.list_records(zid, HOST)
    assert caught.value.kind is ErrorKind.RATE_LIMITED and caught.value.retry_after == 42
    assert caught.value.code == "971"
    assert emulator.calls["GET /zones/{id}/dns_records"] == 1


async def test_server_errors_surface_after_one_attempt(
        provider: CloudflareDns, emulator: CloudflareEmulator) -> None:
    # No retry inside the adapter: each call is one request, the reconciler requeues.
    zid = await provider.zone_id(ZONE)
    emulator.inject(503, times=2, endpoint="GET")
    for expected_calls in (1, 2):
        with pytest.raises(CloudError) as caught:
            await provider.list_records(zid, HOST)
        assert caught.value.kind is ErrorKind.TRANSIENT and caught.value.status == 503
        assert emulator.calls["GET /zones/{id}/dns_records"] == expected_calls
    assert await provider.list_records(zid, HOST) == []  # the requeued call
    emulator.inject(502, times=1, endpoint="GET")  # HTML body from the edge
    with pytest.raises(CloudError, match="HTTP 502") as caught:
        await provider.list_records(zid, HOST)
    assert (caught.value.kind, caught.value.code) == (ErrorKind.TRANSIENT, "http_502")
    assert emulator.calls["GET /zones/{id}/dns_records"] == 4


async def test_create_is_never_retried(provider: CloudflareDns,
                                       emulator: CloudflareEmulator) -> None:
    zid = await provider.zone_id(ZONE)
    emulator.inject(503, times=1, endpoint="POST")
    with pytest.raises(CloudError) as caught:
        await provider.create_record(zid, DnsRecord(id="", name=HOST, type="A", content=IPV4))
    assert caught.value.kind is ErrorKind.TRANSIENT
    assert emulator.calls["POST /zones/{id}/dns_records"] == 1
    assert emulator.records(ZONE) == []


async def test_timeouts_are_transient(emulator: CloudflareEmulator) -> None:
    emulator.inject(None, times=1, delay=0.6, endpoint="GET")
    async with CloudflareDns(emulator.url, TOKEN, timeout=0.2) as adapter:
        with pytest.raises(CloudError, match="timed out") as caught:
            await adapter.list_records(emulator.zone_id(ZONE), HOST)
    assert (caught.value.kind, caught.value.code) == (ErrorKind.TRANSIENT, "timeout")
    assert emulator.calls["GET /zones/{id}/dns_records"] == 1


# --- ensure / remove ---------------------------------------------------------------------------
async def test_create_and_delete_call_budget(emulator: CloudflareEmulator) -> None:
    async with CloudflareDns(emulator.url, TOKEN) as adapter:
        result = await dns.ensure_records(adapter, ZONE, desired(), UID)
    assert result.ready and len(result.created) == 2 and result.writes == 2
    assert held(emulator) == [(WILD, "A", IPV4), (HOST, "A", IPV4)]
    assert dns.records_match(result.status().records, desired())
    assert result.status().zone_id == emulator.zone_id(ZONE)
    async with CloudflareDns(emulator.url, TOKEN) as adapter:  # a later, fresh adapter
        removed = await dns.remove_records(adapter, ZONE, dns.record_names(HOST), UID,
                                           zone_id=result.zone_id)
    assert {r.id for r in removed.deleted} == {r.id for r in result.records}
    assert emulator.records(ZONE) == []
    assert emulator.calls == {"GET /zones": 1, "GET /zones/{id}/dns_records": 4,
                              "POST /zones/{id}/dns_records": 2,
                              "DELETE /zones/{id}/dns_records/{id}": 2}
    assert emulator.writes == 4


async def test_second_ensure_writes_nothing(provider: CloudflareDns,
                                            emulator: CloudflareEmulator) -> None:
    first = await dns.ensure_records(provider, ZONE, desired(ipv6="2001:db8::/64"), UID)
    assert len(first.created) == 4
    emulator.reset_counts()
    second = await dns.ensure_records(provider, ZONE, desired(ipv6="2001:db8::/64"), UID)
    assert second.writes == 0 and emulator.writes == 0
    assert emulator.calls == {"GET /zones/{id}/dns_records": 2}  # zone id cached
    assert {r.id for r in second.records} == {r.id for r in first.records}
    assert dns.records_match(second.status().records, desired(ipv6="2001:db8::/64"))


async def test_ip_change_updates_in_place(provider: CloudflareDns,
                                          emulator: CloudflareEmulator) -> None:
    first = await dns.ensure_records(provider, ZONE, desired(ipv6="2001:db8::1"), UID)
    emulator.reset_counts()
    moved = desired(ipv4="203.0.113.77")  # new address, and no IPv6 any more
    second = await dns.ensure_records(provider, ZONE, moved, UID)
    assert len(second.updated) == 2 and len(second.deleted) == 2 and second.created == ()
    assert emulator.calls["POST /zones/{id}/dns_records"] == 0
    assert held(emulator) == [(WILD, "A", "203.0.113.77"), (HOST, "A", "203.0.113.77")]
    a_ids = {r.id for r in first.records if r.type == "A"}
    assert {r.id for r in second.records} == a_ids
    assert all(r["comment"] == dns.owner_comment(UID, "team-a", "demo")
               for r in emulator.records(ZONE))


async def test_foreign_record_is_reported_and_left_alone(
        provider: CloudflareDns, emulator: CloudflareEmulator) -> None:
    theirs = emulator.seed_record(ZONE, "A", HOST, "198.51.100.50", comment="hand made")
    result = await dns.ensure_records(provider, ZONE, desired(), UID)
    assert not result.ready
    assert [(c.name, c.type, c.record.id) for c in result.conflicts] == [
        (HOST, "A", theirs["id"])]
    assert theirs["id"] in result.conflict_message() and HOST in result.conflict_message()
    assert [(r.name, r.type) for r in result.records] == [(WILD, "A")]
    again = await dns.ensure_records(provider, ZONE, desired(ipv4="203.0.113.99"), UID)
    assert len(again.updated) == 1 and again.created == () and again.deleted == ()
    removed = await dns.remove_records(provider, ZONE, dns.record_names(HOST), UID)
    assert [r.name for r in removed.deleted] == [WILD]
    assert [r.id for r in removed.foreign] == [theirs["id"]]
    assert emulator.records(ZONE) == [theirs]


async def test_foreign_cname_blocks_the_name(provider: CloudflareDns,
                                             emulator: CloudflareEmulator) -> None:
    emulator.seed_record(ZONE, "CNAME", WILD, "elsewhere.example.net")
    result = await dns.ensure_records(provider, ZONE, desired(), UID)
    assert [(c.name, c.type) for c in result.conflicts] == [(WILD, "CNAME")]
    assert held(emulator) == [(WILD, "CNAME", "elsewhere.example.net"), (HOST, "A", IPV4)]


async def test_other_workspaces_are_untouched(provider: CloudflareDns,
                                              emulator: CloudflareEmulator) -> None:
    other_host = workspace_host(workspace_label("other", "team-b"), ZONE)
    other = dns.desired_records(other_host, ipv4="198.51.100.1", uid="other-uid")
    await dns.ensure_records(provider, ZONE, other, "other-uid")
    await dns.ensure_records(provider, ZONE, desired(), UID)
    await dns.remove_records(provider, ZONE, dns.record_names(HOST), UID)
    assert held(emulator) == sorted((r.name, "A", "198.51.100.1") for r in other)


async def test_txt_registry(provider: CloudflareDns, emulator: CloudflareEmulator) -> None:
    records = desired(ipv6="2001:db8::1", txt_registry=True, txt_owner_id="cluster-1")
    result = await dns.ensure_records(provider, ZONE, records, UID)
    assert len(result.created) == 8
    txt = [r for r in emulator.records(ZONE) if r["type"] == "TXT"]
    assert sorted(r["name"] for r in txt) == sorted([
        f"a-{HOST}", f"aaaa-{HOST}", f"a-wildcard.{HOST}", f"aaaa-wildcard.{HOST}"])
    assert all("external-dns/owner=cluster-1" in r["content"] for r in txt)
    emulator.reset_counts()
    assert (await dns.ensure_records(provider, ZONE, records, UID)).writes == 0
    assert emulator.calls == {"GET /zones/{id}/dns_records": 6}
    await dns.remove_records(provider, ZONE, dns.record_names(HOST, txt_registry=True), UID)
    assert emulator.records(ZONE) == []


async def test_converges_through_rate_limits_and_lost_replies(
        provider: CloudflareDns, emulator: CloudflareEmulator, clock: FakeClock) -> None:
    # Creates are carried out but their replies are lost (a 502 after the write), and
    # for a while every call is rate limited.
    emulator.inject(502, times=2, endpoint="POST", after_apply=True)
    emulator.inject(429, times=None, duration=120, retry_after=60, endpoint="GET")
    result = None
    attempts = 0
    while result is None and attempts < 10:  # bounded, like Kopf requeues
        attempts += 1
        try:
            result = await dns.ensure_records(provider, ZONE, desired(), UID)
        except CloudError as err:
            assert err.transient, err
            if err.kind is ErrorKind.RATE_LIMITED:
                assert err.retry_after is not None
                clock.now += err.retry_after  # the operator would requeue after this delay
    assert result is not None and result.ready, f"no convergence after {attempts} attempts"
    assert attempts == 5  # 2 rate limited, 2 lost replies, then settled
    assert held(emulator) == [(WILD, "A", IPV4), (HOST, "A", IPV4)]  # no duplicates
    assert emulator.calls["POST /zones/{id}/dns_records"] == 2
    assert dns.records_match(result.status().records, desired())


async def test_converges_through_server_errors(provider: CloudflareDns,
                                               emulator: CloudflareEmulator) -> None:
    emulator.inject(503, times=4)
    result = None
    attempts = 0
    while result is None and attempts < 10:  # bounded, like Kopf requeues
        attempts += 1
        try:
            result = await dns.ensure_records(provider, ZONE, desired(), UID)
        except CloudError as err:
            assert err.kind is ErrorKind.TRANSIENT
    assert result is not None and result.ready
    assert attempts == 5  # each 503 costs one requeue, not a sleep in the adapter
    assert held(emulator) == [(WILD, "A", IPV4), (HOST, "A", IPV4)]


class RacingProvider:
    """Delegates to the adapter; before the first create, an identical record appears,
    as when an earlier create's reply was lost after our listing."""

    def __init__(self, inner: CloudflareDns, emulator: CloudflareEmulator) -> None:
        self.inner = inner
        self.emulator = emulator
        self.raced = False

    async def zone_id(self, zone_name: str) -> str:
        return await self.inner.zone_id(zone_name)

    async def list_records(self, zone_id: str, name: str) -> list[DnsRecord]:
        return await self.inner.list_records(zone_id, name)

    async def create_record(self, zone_id: str, record: DnsRecord) -> DnsRecord:
        if not self.raced:
            self.raced = True
            self.emulator.seed_record(ZONE, record.type, record.name, record.content,
                                      ttl=record.ttl, comment=record.comment)
        return await self.inner.create_record(zone_id, record)

    async def update_record(self, zone_id: str, record_id: str,
                            record: DnsRecord) -> DnsRecord:
        return await self.inner.update_record(zone_id, record_id, record)

    async def delete_record(self, zone_id: str, record_id: str) -> None:
        await self.inner.delete_record(zone_id, record_id)


async def test_identical_record_race_is_resolved_by_relisting(
        provider: CloudflareDns, emulator: CloudflareEmulator) -> None:
    racing = RacingProvider(provider, emulator)
    result = await dns.ensure_records(racing, ZONE, desired(), UID)
    assert racing.raced and result.ready
    assert held(emulator) == [(WILD, "A", IPV4), (HOST, "A", IPV4)]
    assert {r.id for r in result.records} == {r["id"] for r in emulator.records(ZONE)}


async def test_real_rate_limit_budget(emulator: CloudflareEmulator, clock: FakeClock) -> None:
    emulator.rate_limit = 5
    # No reserve: every call may spend the budget to its last request.
    budget = Budget("cloudflare", limit=1200, period=300.0, continuous=False,
                    reserve_fraction=0.0, reserve_floor=0, clock=clock)
    async with CloudflareDns(emulator.url, TOKEN, budget=budget) as adapter:
        await dns.ensure_records(adapter, ZONE, desired(), UID)  # 1 + 2 + 2 calls
        with pytest.raises(CloudError) as caught:
            await dns.ensure_records(adapter, ZONE, desired(), UID)
        # The headers said the window was spent: the budget held the call back.
        assert isinstance(caught.value, BudgetExhausted)
        assert caught.value.kind is ErrorKind.RATE_LIMITED
        assert caught.value.retry_after == 300
        assert 429 not in [r.status for r in emulator.requests]
        clock.now += caught.value.retry_after
        assert (await dns.ensure_records(adapter, ZONE, desired(), UID)).writes == 0
