"""Pure DNS planning: desired records, ownership, plan, records_match."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentspaces.api.hostnames import workspace_host, workspace_label
from agentspaces.api.status import DnsRecordStatus
from agentspaces.clouds.cloudflare import DnsRecord
from agentspaces.reconcile import dns

UID = "5f0c8a52-6f53-4c2a-9d1e-2b7a1c0e9f11"
OTHER_UID = "0b6f7e0e-1111-4222-8333-944455556666"
HOST = workspace_host(workspace_label("demo", "team-a"), "example.com")
WILD = f"*.{HOST}"
MINE = dns.owner_comment(UID, "team-a", "demo")


def want(ipv4: str = "203.0.113.10", ipv6: str | None = None, **kw: object) -> list[DnsRecord]:
    return dns.desired_records(HOST, ipv4=ipv4, ipv6=ipv6, uid=UID, namespace="team-a",
                               name="demo", **kw)  # type: ignore[arg-type]


_ids = itertools.count(1)


def rec(name: str, rtype: str, content: str, comment: str | None = MINE, ttl: int = 60,
        proxied: bool = False) -> DnsRecord:
    return DnsRecord(id=f"id{next(_ids)}", name=name, type=rtype, content=content, ttl=ttl,
                     proxied=proxied, comment=comment)


def by_name(*records: DnsRecord, names: Sequence[str] = (HOST, WILD)) -> dict[str, list[DnsRecord]]:
    listed: dict[str, list[DnsRecord]] = {n: [] for n in names}
    for r in records:
        listed.setdefault(r.name, []).append(r)
    return listed


# --- ownership and names -------------------------------------------------------------------
def test_owner_comment_format() -> None:
    assert f"agentspaces:{UID} team-a/demo" == MINE
    assert dns.comment_owner(MINE) == UID
    long_name = "n" * 63
    fallback = dns.owner_comment(UID, "team-a", long_name)
    assert fallback == f"agentspaces:{UID}" and len(fallback) <= 100
    assert len(dns.owner_comment(UID, "ns", "x" * 40)) <= 100
    assert dns.comment_owner(fallback) == UID
    assert dns.comment_owner("managed by hand") is None
    assert dns.comment_owner(None) is None
    assert dns.comment_owner("agentspaces:") is None
    with pytest.raises(ValueError):
        dns.owner_comment("has space")
    with pytest.raises(ValueError):
        dns.owner_comment("")


def test_ownership_is_by_uid_only() -> None:
    assert dns.is_owned(rec(HOST, "A", "1.1.1.1", comment=f"agentspaces:{UID}"), UID)
    assert not dns.is_owned(rec(HOST, "A", "1.1.1.1", comment=f"agentspaces:{OTHER_UID}"), UID)
    assert not dns.is_owned(rec(HOST, "A", "1.1.1.1", comment=f"agentspaces:{UID}x"), UID)
    assert not dns.is_owned(rec(HOST, "A", "1.1.1.1", comment=None), UID)


def test_txt_registry_names() -> None:
    assert dns.txt_registry_name("A", HOST) == f"a-{HOST}"
    assert dns.txt_registry_name("AAAA", WILD) == f"aaaa-wildcard.{HOST}"
    assert dns.record_names(HOST) == [HOST, WILD]
    assert dns.record_names(HOST, txt_registry=True, ipv6=False) == [
        HOST, WILD, f"a-{HOST}", f"a-wildcard.{HOST}"]
    assert len(dns.record_names(HOST, txt_registry=True)) == 6


# --- desired records -------------------------------------------------------------------------
def test_desired_ipv4_only() -> None:
    records = want(ttl=120)
    assert [(r.name, r.type, r.content, r.ttl, r.proxied, r.comment) for r in records] == [
        (HOST, "A", "203.0.113.10", 120, False, MINE),
        (WILD, "A", "203.0.113.10", 120, False, MINE)]
    assert all(r.id == "" for r in records)


def test_desired_with_ipv6_network_and_proxied() -> None:
    records = want(ipv6="2001:db8:1234:5678::/64", proxied=True, ttl=300)
    assert sorted((r.name, r.type, r.content) for r in records) == sorted([
        (HOST, "A", "203.0.113.10"), (HOST, "AAAA", "2001:db8:1234:5678::1"),
        (WILD, "A", "203.0.113.10"), (WILD, "AAAA", "2001:db8:1234:5678::1")])
    assert {r.ttl for r in records} == {1}  # Cloudflare shows proxied records as TTL 1
    assert want(ipv6="2001:0db8::0001")[1].content == "2001:db8::1"
    with pytest.raises(ValueError):
        want(ipv4="2001:db8::1")


def test_desired_txt_registry() -> None:
    records = want(txt_registry=True, txt_owner_id="cluster-1", ttl=90)
    txt = [r for r in records if r.type == "TXT"]
    assert [r.name for r in txt] == [f"a-{HOST}", f"a-wildcard.{HOST}"]
    assert {r.content for r in txt} == {
        '"heritage=external-dns,external-dns/owner=cluster-1,'
        'external-dns/resource=workspace/team-a/demo"'}
    assert all(r.comment == MINE and not r.proxied and r.ttl == 90 for r in txt)
    default_owner = want(txt_registry=True)[-1].content
    assert "external-dns/owner=agentspaces," in default_owner


# --- plan -------------------------------------------------------------------------------------
def test_fresh_plan_creates_both_names() -> None:
    p = dns.plan(want(), by_name(), UID)
    assert [(r.name, r.type) for r in p.creates] == [(HOST, "A"), (WILD, "A")]
    assert p.updates == () and p.deletes == () and p.conflicts == () and p.writes == 2


def test_ip_change_updates_in_place() -> None:
    old_host, old_wild = rec(HOST, "A", "198.51.100.1"), rec(WILD, "A", "198.51.100.1")
    p = dns.plan(want(), by_name(old_host, old_wild), UID)
    assert p.creates == () and p.deletes == ()
    assert [(u.current.id, u.desired.id, u.desired.content, u.desired.comment)
            for u in p.updates] == [(old_host.id, old_host.id, "203.0.113.10", MINE),
                                    (old_wild.id, old_wild.id, "203.0.113.10", MINE)]


def test_settled_state_plans_nothing() -> None:
    existing = by_name(rec(HOST, "A", "203.0.113.10"), rec(WILD, "A", "203.0.113.10"))
    p = dns.plan(want(), existing, UID)
    assert p.empty and p.writes == 0
    assert {r.id for r in p.kept} == {r.id for rs in existing.values() for r in rs}


def test_ttl_or_proxied_change_is_an_update() -> None:
    existing = by_name(rec(HOST, "A", "203.0.113.10", ttl=300), rec(WILD, "A", "203.0.113.10"))
    p = dns.plan(want(), existing, UID)
    assert [u.current.name for u in p.updates] == [HOST]
    proxied = dns.plan(want(proxied=True), existing, UID)
    assert len(proxied.updates) == 2 and {u.desired.ttl for u in proxied.updates} == {1}


def test_equivalent_content_is_not_a_change() -> None:
    desired = want(ipv6="2001:db8::1")
    existing = by_name(rec(HOST, "A", "203.0.113.10"), rec(WILD, "A", "203.0.113.10"),
                       rec(HOST, "AAAA", "2001:0db8:0000::0001"),
                       rec(WILD, "AAAA", "2001:DB8::1"))
    assert dns.plan(desired, existing, UID).empty
    txt = want(txt_registry=True)
    unquoted = {r.name: [replace(r, id=f"t{i}", content=r.content.strip('"'))]
                for i, r in enumerate(txt)}
    assert dns.plan(txt, unquoted, UID).empty


def test_foreign_record_is_a_conflict_and_untouched() -> None:
    theirs = rec(HOST, "A", "198.51.100.77", comment="hand made")
    p = dns.plan(want(), by_name(theirs), UID)
    assert [(c.name, c.type, c.record.id) for c in p.conflicts] == [(HOST, "A", theirs.id)]
    assert "198.51.100.77" in p.conflicts[0].message and theirs.id in p.conflicts[0].message
    assert [(r.name, r.type) for r in p.creates] == [(WILD, "A")]  # the free name proceeds
    touched = {r.id for r in p.deletes} | {u.current.id for u in p.updates}
    assert theirs.id not in touched


def test_other_workspace_is_foreign() -> None:
    theirs = rec(WILD, "A", "203.0.113.10", comment=dns.owner_comment(OTHER_UID))
    p = dns.plan(want(), by_name(theirs), UID)
    assert [c.record.id for c in p.conflicts] == [theirs.id]
    assert [r.name for r in p.creates] == [HOST]


@pytest.mark.parametrize(("rtype", "content", "conflict"), [
    ("CNAME", "elsewhere.example.net", True),
    ("AAAA", "2001:db8::99", True),  # would answer IPv6 clients in our place
    ("TXT", '"site-verification=abc"', False),
    ("MX", "mail.example.net", False),
])
def test_which_foreign_types_block(rtype: str, content: str, conflict: bool) -> None:
    theirs = rec(HOST, rtype, content, comment=None)
    p = dns.plan(want(), by_name(theirs), UID)
    assert bool(p.conflicts) is conflict
    assert [r.name for r in p.creates] == ([WILD] if conflict else [HOST, WILD])


def test_our_records_at_a_blocked_name_are_kept() -> None:
    ours = rec(HOST, "A", "198.51.100.1")
    theirs = rec(HOST, "CNAME", "elsewhere.example.net", comment=None)
    p = dns.plan(want(), by_name(ours, theirs), UID)
    assert p.conflicts and ours in p.kept
    assert ours.id not in {u.current.id for u in p.updates} | {r.id for r in p.deletes}


def test_txt_twin_of_a_blocked_record_is_held_back() -> None:
    desired = want(txt_registry=True)
    theirs = rec(HOST, "A", "198.51.100.77", comment=None)
    names = [r.name for r in desired]
    p = dns.plan(desired, by_name(theirs, names=names), UID)
    assert sorted(r.name for r in p.creates) == sorted([WILD, f"a-wildcard.{HOST}"])


def test_stale_and_duplicate_records_of_ours_are_deleted() -> None:
    aaaa = rec(HOST, "AAAA", "2001:db8::1")  # the server lost its IPv6
    good = rec(HOST, "A", "203.0.113.10")
    dup_same = rec(HOST, "A", "203.0.113.10")
    dup_other = rec(HOST, "A", "198.51.100.9")
    wild = rec(WILD, "A", "203.0.113.10")
    p = dns.plan(want(), by_name(dup_other, good, aaaa, dup_same, wild), UID)
    assert p.creates == () and p.updates == ()
    assert {r.id for r in p.deletes} == {aaaa.id, dup_same.id, dup_other.id}
    assert {r.id for r in p.kept} == {good.id, wild.id}


def test_mixed_changes() -> None:
    desired = want(ipv4="203.0.113.20", ipv6="2001:db8::2")
    existing = by_name(rec(HOST, "A", "203.0.113.10"), rec(WILD, "A", "203.0.113.20"),
                       rec(WILD, "AAAA", "2001:db8::1"), rec(HOST, "TXT", '"x"', comment=None))
    p = dns.plan(desired, existing, UID)
    assert [(r.name, r.type) for r in p.creates] == [(HOST, "AAAA")]
    assert sorted((u.current.name, u.current.type) for u in p.updates) == [
        (WILD, "AAAA"), (HOST, "A")]
    assert p.deletes == () and p.conflicts == ()


def test_duplicate_desired_records_are_rejected() -> None:
    record = want()[0]
    with pytest.raises(ValueError):
        dns.plan([record, replace(record, content="203.0.113.99")], by_name(), UID)


# --- idempotence, property based ---------------------------------------------------------------
def apply(p: dns.Plan, listed: dict[str, list[DnsRecord]]) -> dict[str, list[DnsRecord]]:
    """What a provider would hold after carrying out the plan."""
    gone = {r.id for r in p.deletes}
    changed = {u.current.id: u.desired for u in p.updates}
    after = {name: [changed.get(r.id, r) for r in records if r.id not in gone]
             for name, records in listed.items()}
    for record in p.creates:
        after.setdefault(record.name, []).append(replace(record, id=f"new{next(_ids)}"))
    return after


ADDRESSES = {"A": ["203.0.113.10", "203.0.113.11", "198.51.100.1"],
             "AAAA": ["2001:db8::1", "2001:db8::2"], "CNAME": ["elsewhere.example.net"],
             "TXT": ['"hello"']}
OWNERS = [MINE, f"agentspaces:{UID}", dns.owner_comment(OTHER_UID), "by hand", None]

existing_record = st.builds(
    lambda name, rtype, index, owner, ttl: rec(
        name, rtype, ADDRESSES[rtype][index % len(ADDRESSES[rtype])], comment=owner, ttl=ttl),
    st.sampled_from([HOST, WILD, f"a-{HOST}"]), st.sampled_from(sorted(ADDRESSES)),
    st.integers(0, 5), st.sampled_from(OWNERS), st.sampled_from([1, 60, 300]))


@settings(max_examples=300, deadline=None)
@given(existing=st.lists(existing_record, max_size=8),
       ipv4=st.sampled_from(ADDRESSES["A"]), ipv6=st.sampled_from([None, *ADDRESSES["AAAA"]]),
       txt=st.booleans(), proxied=st.booleans())
def test_applying_then_replanning_is_empty(existing: list[DnsRecord], ipv4: str,
                                           ipv6: str | None, txt: bool, proxied: bool) -> None:
    desired = want(ipv4=ipv4, ipv6=ipv6, txt_registry=txt, proxied=proxied)
    listed = by_name(*existing, names=[r.name for r in desired])
    first = dns.plan(desired, listed, UID)
    after = apply(first, listed)
    second = dns.plan(desired, after, UID)
    assert second.empty, second
    assert second.conflicts == first.conflicts
    # Never touches what is not ours.
    foreign = {r.id: r for rs in listed.values() for r in rs if not dns.is_owned(r, UID)}
    remaining = {r.id: r for rs in after.values() for r in rs}
    assert all(remaining.get(i) == r for i, r in foreign.items())
    # Without conflicts, the desired names hold exactly the desired records of ours.
    if not first.conflicts:
        names = {r.name for r in desired}
        ours = [r for n, rs in after.items() if n in names for r in rs if dns.is_owned(r, UID)]
        assert dns.records_match(dns.status_records(ours), desired)


# --- records_match --------------------------------------------------------------------------------
def test_records_match() -> None:
    desired = want(ipv6="2001:db8::1")
    status = [DnsRecordStatus(id=f"r{i}", name=r.name, type=r.type, content=r.content)
              for i, r in enumerate(desired)]
    assert dns.records_match(status, desired)
    assert dns.records_match(list(reversed(status)), desired)
    assert not dns.records_match(status, want(ipv4="203.0.113.99", ipv6="2001:db8::1"))
    assert not dns.records_match(status[:3], desired)
    assert not dns.records_match(status, want())  # IPv6 went away
    assert not dns.records_match([status[0].model_copy(update={"id": ""}), *status[1:]],
                                 desired)
    assert not dns.records_match(None, desired)
    assert not dns.records_match([], desired)
    expanded = [s.model_copy(update={"content": "2001:0db8::0001"}) if s.type == "AAAA" else s
                for s in status]
    assert dns.records_match(expanded, desired)


def test_ensure_result_status_shape() -> None:
    records = (rec(WILD, "A", "203.0.113.10"), rec(HOST, "A", "203.0.113.10"))
    result = dns.EnsureResult(zone_id="z1", records=records)
    as_api = result.status().model_dump(mode="json", by_alias=True, exclude_none=True)
    assert as_api == {"zoneId": "z1", "records": [  # sorted by name
        {"id": records[0].id, "name": WILD, "type": "A", "content": "203.0.113.10"},
        {"id": records[1].id, "name": HOST, "type": "A", "content": "203.0.113.10"}]}
    result = dns.EnsureResult(zone_id="z1", records=records[::-1])
    assert [r.name for r in result.status().records] == [WILD, HOST]
    assert result.ready and result.writes == 0
