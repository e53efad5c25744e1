"""The pure policy of a stopped workspace's names: when they point at the wake gateway,
the records for server and gateway, and the Cloudflare writes of a stop and a wake
(records updated in place; AAAA created or deleted only when one side has no IPv6)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import count

import pytest

from agentspaces.api.enums import StoppedBy
from agentspaces.api.types import WakeGateway
from agentspaces.clouds.cloudflare import DnsRecord
from agentspaces.reconcile import dns

UID = "4f1e2d3c-0000-4000-8000-00000000c0de"
HOST = "demo-team-a-dfqog7hjve5bp.example.com"
SERVER_V4, SERVER_V6 = "203.0.113.10", "2a01:4f8:c0c:1::/64"
GATEWAY = WakeGateway(ipv4="198.51.100.7", ipv6="2001:db8::7")
GATEWAY_V4_ONLY = WakeGateway(ipv4="198.51.100.7")


def records(ipv4: str, ipv6: str | None, *, txt: bool = False) -> list[DnsRecord]:
    return dns.desired_records(HOST, ipv4=ipv4, ipv6=ipv6, uid=UID, namespace="team-a",
                               name="demo", txt_registry=txt)


def held(desired: Sequence[DnsRecord]) -> list[DnsRecord]:
    """The records as Cloudflare would hold them after creating `desired`."""
    ids = count(1)
    return [replace(r, id=f"rec{next(ids)}") for r in desired]


def switch(current: Sequence[DnsRecord], desired: Sequence[DnsRecord]) -> dns.Plan:
    by_name: dict[str, list[DnsRecord]] = {}
    for record in current:
        by_name.setdefault(record.name, []).append(record)
    for record in desired:
        by_name.setdefault(record.name, [])
    return dns.plan(desired, by_name, UID)


def counts(p: dns.Plan) -> tuple[int, int, int]:
    """(updates, creates, deletes)"""
    return len(p.updates), len(p.creates), len(p.deletes)


# --- when the names point at the gateway ---------------------------------------------
@pytest.mark.parametrize("stopped_by", [StoppedBy.INACTIVITY, StoppedBy.LIFETIME])
def test_a_wakeable_stop_points_at_the_gateway(stopped_by: StoppedBy) -> None:
    assert dns.stopped_target(GATEWAY, True, stopped_by) is GATEWAY


@pytest.mark.parametrize(("gateway", "on_request", "stopped_by"), [
    (None, True, StoppedBy.INACTIVITY),        # the class has no gateway
    (GATEWAY, False, StoppedBy.INACTIVITY),    # wake.onRequest: false
    (GATEWAY, True, StoppedBy.USER),           # spec.running false: no request ends it
    (GATEWAY, True, None),
])
def test_otherwise_the_names_are_removed(gateway: WakeGateway | None, on_request: bool,
                                         stopped_by: StoppedBy | None) -> None:
    assert dns.stopped_target(gateway, on_request, stopped_by) is None


# --- desired records -----------------------------------------------------------------
def test_server_and_gateway_records_differ_only_in_their_addresses() -> None:
    server = records(SERVER_V4, SERVER_V6)
    gateway = records(GATEWAY.ipv4, GATEWAY.ipv6)
    assert [(r.name, r.type) for r in server] == [(r.name, r.type) for r in gateway] == [
        (HOST, "A"), (HOST, "AAAA"), (f"*.{HOST}", "A"), (f"*.{HOST}", "AAAA")]
    assert {r.content for r in server} == {SERVER_V4, "2a01:4f8:c0c:1::1"}
    assert {r.content for r in gateway} == {"198.51.100.7", "2001:db8::7"}
    assert {r.comment for r in server} == {r.comment for r in gateway}  # both ours
    assert [(r.name, r.type) for r in records(GATEWAY_V4_ONLY.ipv4, None)] == [
        (HOST, "A"), (f"*.{HOST}", "A")]


# --- writes per stop and per wake ----------------------------------------------------
@pytest.mark.parametrize(("server_v6", "gateway", "stop", "wake"), [
    # server IPv6, gateway           stop (upd, new, del)   wake (upd, new, del)
    (None, GATEWAY_V4_ONLY, (2, 0, 0), (2, 0, 0)),
    (SERVER_V6, GATEWAY, (4, 0, 0), (4, 0, 0)),
    (SERVER_V6, GATEWAY_V4_ONLY, (2, 0, 2), (2, 2, 0)),
    (None, GATEWAY, (2, 2, 0), (2, 0, 2)),
])
def test_writes_per_stop_and_wake(server_v6: str | None, gateway: WakeGateway,
                                  stop: tuple[int, int, int],
                                  wake: tuple[int, int, int]) -> None:
    running = held(records(SERVER_V4, server_v6))
    at_gateway = switch(running, records(gateway.ipv4, gateway.ipv6))
    assert counts(at_gateway) == stop
    # The same records are updated in place: their ids stay.
    assert {u.desired.id for u in at_gateway.updates} <= {r.id for r in running}
    stopped = [*at_gateway.kept, *(u.desired for u in at_gateway.updates),
               *held(at_gateway.creates)]
    assert switch(stopped, records(gateway.ipv4, gateway.ipv6)).empty  # no write at a poll

    new_server = records("203.0.113.99", server_v6)
    back = switch(stopped, new_server)
    assert counts(back) == wake
    assert back.writes == at_gateway.writes


def test_the_txt_registry_records_stay_as_they_are() -> None:
    running = held(records(SERVER_V4, SERVER_V6, txt=True))
    stop = switch(running, records(GATEWAY.ipv4, GATEWAY.ipv6, txt=True))
    assert counts(stop) == (4, 0, 0)
    assert all(u.current.type != "TXT" for u in stop.updates)
    assert sum(r.type == "TXT" for r in stop.kept) == 4
    # Without IPv6 at the gateway the AAAA records go; their TXT twins are not touched
    # (their names are not even listed), so the wake back to IPv6 creates only the AAAA.
    v4 = switch(running, records(GATEWAY.ipv4, None, txt=True))
    assert counts(v4) == (2, 0, 2)
    assert {r.type for r in v4.deletes} == {"AAAA"}
    assert all(r.type != "TXT" for r in v4.deletes)
