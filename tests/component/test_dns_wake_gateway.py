"""Cloudflare requests of a stop and a wake with a wake gateway, counted by the emulator
over real HTTP: `workspace.reconcile` (fake servers and agent, the real CloudflareDns
adapter) stops a workspace by its lifetime, polls it while stopped, and wakes it, for a
server and a gateway with and without IPv6. The figures are the ones docs/dns.md lists."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from agentspaces.api.enums import Phase
from agentspaces.clouds.cloudflare import CloudflareDns
from agentspaces.reconcile import server_step
from agentspaces.sandbox.cloudflare import CloudflareEmulator, running
from tests.support.scope_builder import (
    DNS_TOKEN,
    SETTINGS,
    ZONE,
    ScopeBuilder,
    quick_user_data,
)

LIST = "GET /zones/{id}/dns_records"
PATCH = "PATCH /zones/{id}/dns_records/{id}"
POST = "POST /zones/{id}/dns_records"
DELETE = "DELETE /zones/{id}/dns_records/{id}"


@pytest.fixture
def emulator() -> Iterator[CloudflareEmulator]:
    with running(zones=(ZONE,), tokens={DNS_TOKEN: None}) as emu:
        yield emu


@pytest.fixture(autouse=True)
def quick_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_step, "render_user_data", quick_user_data)


async def _pass(b: ScopeBuilder) -> None:
    await b.reconcile()
    b.clock.advance(SETTINGS.boot_poll)


async def _run(b: ScopeBuilder, server_ipv6: bool) -> None:
    await _pass(b)  # the server is created
    if not server_ipv6:
        for sid, server in b.servers.servers.items():
            b.servers.servers[sid] = replace(server, ipv6=None)
    b.servers.boot()
    await _pass(b)
    b.agent.report_ready(b.clock())
    await _pass(b)
    assert b.status["phase"] == Phase.RUNNING


def _held(emulator: CloudflareEmulator) -> set[tuple[str, str]]:
    return {(r["type"], r["content"]) for r in emulator.records(ZONE)}


@pytest.mark.parametrize(("server_ipv6", "gateway_ipv6", "stop", "wake"), [
    (False, False, {LIST: 2, PATCH: 2}, {LIST: 2, PATCH: 2}),
    (True, True, {LIST: 2, PATCH: 4}, {LIST: 2, PATCH: 4}),
    (True, False, {LIST: 2, PATCH: 2, DELETE: 2}, {LIST: 2, PATCH: 2, POST: 2}),
    (False, True, {LIST: 2, PATCH: 2, POST: 2}, {LIST: 2, PATCH: 2, DELETE: 2}),
], ids=["ipv4 only", "dual stack", "gateway without ipv6", "server without ipv6"])
async def test_requests_per_stop_and_wake(emulator: CloudflareEmulator, server_ipv6: bool,
                                          gateway_ipv6: bool, stop: dict[str, int],
                                          wake: dict[str, int]) -> None:
    b = ScopeBuilder()
    gateway = {"ipv4": "198.51.100.7", **({"ipv6": "2001:db8::7"} if gateway_ipv6 else {})}
    b.with_class(wakeGateway=gateway,
                 dns={**b.class_spec["dns"], "endpoint": emulator.url})
    b.with_spec(lifetime={"max": "1m"})
    async with CloudflareDns(emulator.url, DNS_TOKEN) as adapter:
        b.dns = adapter  # type: ignore[assignment]  # the builder's factory hands it out
        await _run(b, server_ipv6)
        ids = sorted(r["id"] for r in emulator.records(ZONE))

        b.clock.advance(120)  # past the lifetime: the server's delete is sent
        await _pass(b)
        emulator.reset_counts()
        await _pass(b)  # the server is gone: the names move to the gateway
        assert b.status["phase"] == Phase.STOPPED
        assert dict(emulator.calls) == stop
        assert _held(emulator) == {("A", "198.51.100.7"),
                                   *({("AAAA", "2001:db8::7")} if gateway_ipv6 else set())}
        assert b.status["urls"]["state"] == "gateway"

        emulator.reset_counts()
        for _ in range(3):
            await _pass(b)
        assert emulator.total_calls == 0  # stopped at the gateway: polls cost nothing

        b.with_spec(lifetime={"max": "30m"})
        b.body["metadata"]["annotations"] = {"agentspaces.dev/wake": "gateway-1"}
        emulator.reset_counts()
        await _run(b, server_ipv6)
        assert dict(emulator.calls) == wake
        server = b.status["server"]
        assert _held(emulator) == {("A", server["ipv4"]),
                                   *({("AAAA", server["ipv6"])} if server_ipv6 else set())}
        if server_ipv6 == gateway_ipv6:  # the very records of the first run
            assert sorted(r["id"] for r in emulator.records(ZONE)) == ids
