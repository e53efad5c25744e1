"""A stopped workspace's names at the class's wake gateway, through `workspace.reconcile`
against the in-memory fakes: an idle or lifetime stop points the same records at the
gateway (updated in place, AAAA created or deleted only when one side lacks IPv6), polls
while stopped make no cloud call, a wake points them at the new server, changes of
wake.onRequest or of the gateway while stopped converge, and a delete removes them all."""

from __future__ import annotations

from typing import Any

import pytest

from agentspaces.api.enums import ConditionStatus, Phase, Reason
from agentspaces.api.enums import ConditionType as T
from agentspaces.clouds.cloudflare import DnsRecord
from agentspaces.reconcile import server_step, workspace
from agentspaces.reconcile.outcome import Outcome
from tests.support.fakes import DNS_WRITES
from tests.support.scope_builder import SETTINGS, ZONE, ScopeBuilder, quick_user_data

GATEWAY = {"ipv4": "198.51.100.7", "ipv6": "2001:db8::7"}
GATEWAY_ADDRESSES = {"198.51.100.7", "2001:db8::7"}


def records(b: ScopeBuilder) -> dict[tuple[str, str], tuple[str, str]]:
    """(type, name) -> (id, content) of every record in the zone."""
    return {(r.type, r.name): (r.id, r.content) for r in b.dns.in_zone(ZONE)}


def writes(b: ScopeBuilder) -> list[str]:
    return sorted(m for m in b.dns.calls.methods() if m in DNS_WRITES)


def condition(b: ScopeBuilder, type_: T) -> dict[str, Any]:
    return next(c for c in b.status["conditions"] if c["type"] == type_)


async def _pass(b: ScopeBuilder) -> Outcome:
    outcome = await b.reconcile()
    b.clock.advance(SETTINGS.boot_poll)
    return outcome


async def run(b: ScopeBuilder) -> None:
    """From stopped (or new) to Running on a fresh server."""
    await _pass(b)
    b.servers.boot()
    await _pass(b)
    b.agent.report_ready(b.clock())
    await _pass(b)
    assert b.status["phase"] == Phase.RUNNING


async def lifetime_stop(b: ScopeBuilder) -> None:
    """Running, then stopped by its 1m lifetime (an automatic stop a wake may end)."""
    b.with_spec(lifetime={"max": "1m"})
    await run(b)
    b.clock.advance(120)
    await _pass(b)  # the server's delete is sent
    b.clear_calls()
    await _pass(b)  # gone: the names move
    assert b.status["phase"] == Phase.STOPPED and b.status["stoppedBy"] == "lifetime"


def wake(b: ScopeBuilder, value: str, woken_by: str | None = None) -> None:
    annotations = b.body["metadata"].setdefault("annotations", {})
    annotations["agentspaces.dev/wake"] = value
    if woken_by is not None:
        annotations["agentspaces.dev/woken-by"] = woken_by


@pytest.fixture(autouse=True)
def quick_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_step, "render_user_data", quick_user_data)


def builder(gateway: dict[str, str] | None = GATEWAY) -> ScopeBuilder:
    b = ScopeBuilder()
    if gateway is not None:
        b.with_class(wakeGateway=gateway)
    return b


async def test_a_lifetime_stop_points_the_same_records_at_the_gateway() -> None:
    b = builder()
    b.with_spec(lifetime={"max": "1m"})
    await run(b)
    running = records(b)
    assert len(running) == 4
    b.clock.advance(120)
    await _pass(b)
    b.clear_calls()
    await _pass(b)

    at_gateway = records(b)
    assert writes(b) == ["update_record"] * 4  # in place: no create, no delete
    assert {k: v[0] for k, v in at_gateway.items()} == {k: v[0] for k, v in running.items()}
    assert {v[1] for v in at_gateway.values()} == GATEWAY_ADDRESSES
    dns = b.status["dns"]
    assert dns["target"] == "Gateway" and dns["changedAt"]
    assert b.status["urls"]["state"] == "gateway"
    ready = condition(b, T.DNS_READY)
    assert (ready["status"], ready["reason"]) == (ConditionStatus.TRUE, Reason.DNS_AT_GATEWAY)
    assert "198.51.100.7" in ready["message"] and "2001:db8::7" in ready["message"]
    assert "DNSUpdated" in b.reasons() and "DNSRemoved" not in b.reasons()


async def test_polls_while_at_the_gateway_make_no_cloud_call() -> None:
    b = builder()
    await lifetime_stop(b)
    for _ in range(3):
        b.clear_calls()
        outcome = await _pass(b)
        assert outcome == Outcome.done()
        assert (b.dns.calls, b.servers.calls, b.agent.calls) == ([], [], [])
        assert b.events == []
    visit = b.visit()
    await workspace.reconcile(visit)
    assert visit.status.patch() == {}  # nor a status write


async def test_a_wake_points_them_at_the_new_server_and_names_who_woke_it() -> None:
    b = builder()
    await lifetime_stop(b)
    stopped_ids = {k: v[0] for k, v in records(b).items()}
    switched = b.status["dns"]["changedAt"]
    b.with_spec(lifetime={"max": "30m"})
    wake(b, "gateway-1767261600", "gateway: alice from 192.0.2.44\n")
    b.clear_calls()
    await run(b)

    assert writes(b) == ["update_record"] * 4
    now = records(b)
    assert {k: v[0] for k, v in now.items()} == stopped_ids
    server = b.status["server"]
    assert {v[1] for v in now.values()} == {server["ipv4"], server["ipv6"]}
    assert b.status["dns"]["target"] == "Server"
    assert b.status["dns"]["changedAt"] > switched
    assert b.status["urls"]["state"] == "live"
    woken = [e for e in b.events if e.reason == "Woken"]
    assert len(woken) == 1 and woken[0].message.endswith("(gateway: alice from 192.0.2.44)")


async def test_an_ipv4_only_gateway_deletes_the_aaaa_records_and_a_wake_recreates_them(
        ) -> None:
    b = builder({"ipv4": "198.51.100.7"})
    await lifetime_stop(b)
    assert writes(b) == ["delete_record"] * 2 + ["update_record"] * 2
    assert {(t, c) for (t, _), (_, c) in records(b).items()} == {("A", "198.51.100.7")}
    b.with_spec(lifetime={"max": "30m"})
    wake(b, "2")
    b.clear_calls()
    await run(b)
    assert writes(b) == ["create_record"] * 2 + ["update_record"] * 2
    assert len(records(b)) == 4


@pytest.mark.parametrize("case", ["no gateway", "onRequest false"])
async def test_without_a_gateway_or_with_on_request_false_the_records_go(case: str) -> None:
    b = builder(None if case == "no gateway" else GATEWAY)
    if case == "onRequest false":
        b.with_spec(wake={"onRequest": False})
    await lifetime_stop(b)
    assert writes(b) == ["delete_record"] * 4
    assert b.dns.in_zone(ZONE) == [] and "dns" not in b.status
    assert b.status["urls"]["state"] == "stopped"
    b.clear_calls()
    await _pass(b)  # the settled stop: not even a Kubernetes read
    assert (b.dns.calls, b.servers.calls, b.kube.calls) == ([], [], [])


async def test_turning_on_request_on_and_off_while_stopped_converges() -> None:
    b = builder()
    b.with_spec(wake={"onRequest": False})
    await lifetime_stop(b)
    assert b.dns.in_zone(ZONE) == []

    b.with_spec(wake={"onRequest": True})
    b.clear_calls()
    await _pass(b)
    assert writes(b) == ["create_record"] * 4
    assert {v[1] for v in records(b).values()} == GATEWAY_ADDRESSES
    assert b.status["dns"]["target"] == "Gateway" and b.status["urls"]["state"] == "gateway"

    b.with_spec(wake={"onRequest": False})
    b.clear_calls()
    await _pass(b)
    assert writes(b) == ["delete_record"] * 4
    assert b.dns.in_zone(ZONE) == [] and b.status["urls"]["state"] == "stopped"
    assert b.status["phase"] == Phase.STOPPED and "Stopped" not in b.reasons()


async def test_a_new_gateway_address_while_stopped_is_followed() -> None:
    b = builder()
    await lifetime_stop(b)
    b.with_class(wakeGateway={"ipv4": "198.51.100.8"})
    b.clear_calls()
    await _pass(b)
    assert writes(b) == ["delete_record"] * 2 + ["update_record"] * 2
    assert {v[1] for v in records(b).values()} == {"198.51.100.8"}
    b.clear_calls()
    await _pass(b)
    assert b.dns.calls == []


async def test_a_stop_by_the_user_removes_the_gateway_records() -> None:
    b = builder()
    await lifetime_stop(b)
    b.with_spec(running=False)
    b.clear_calls()
    await _pass(b)
    assert writes(b) == ["delete_record"] * 4 and b.dns.in_zone(ZONE) == []
    assert b.status["stoppedBy"] == "user" and b.status["urls"]["state"] == "stopped"


async def test_a_delete_removes_every_record() -> None:
    b = builder()
    b.with_class(dns={**b.class_spec["dns"], "txtRegistry": {"enabled": True}})
    await lifetime_stop(b)
    assert len(b.dns.in_zone(ZONE)) == 8  # 4 address records and their TXT twins
    outcome = None
    for _ in range(3):
        visit = b.visit()
        outcome = await workspace.finalize(visit)
        b.save(visit)
        if outcome == Outcome.done():
            break
    assert outcome == Outcome.done()
    assert b.dns.in_zone(ZONE) == []


async def test_someone_elses_record_at_our_name_means_no_gateway_records() -> None:
    b = builder()
    b.with_spec(lifetime={"max": "1m"})
    await run(b)
    host = b.status["urls"]["workspace"].removeprefix("https://")
    theirs = b.dns.add_record(ZONE, DnsRecord(id="", name=f"*.{host}", type="CNAME",
                                              content="elsewhere.example.net"))
    b.clock.advance(120)
    await _pass(b)
    await _pass(b)
    assert b.status["phase"] == Phase.STOPPED
    assert b.dns.in_zone(ZONE) == [theirs]  # ours removed, theirs untouched
    ready = condition(b, T.DNS_READY)
    assert ready["reason"] == Reason.DNS_NAME_TAKEN and "wake gateway" in ready["message"]
    assert b.status["urls"]["state"] == "stopped"
    b.clear_calls()
    await _pass(b)
    assert b.dns.calls == [] and b.events == []
