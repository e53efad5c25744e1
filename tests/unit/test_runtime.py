"""The runtime: adapter caches, the injected clocks, and closing every client on shutdown."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest
import requests

from agentspaces import handlers
from agentspaces.clouds.budget import BudgetExhausted, Priority
from agentspaces.clouds.hetzner import HcloudServers, ServerInfo
from agentspaces.pki import generate
from agentspaces.runtime import Runtime, ServerInventory
from agentspaces.settings import OperatorSettings

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(namespace="ops", poll_interval=30, inventory_interval=600,
                            boot_poll=5, agent_concurrency=4, unreachable_after=3,
                            backup_part_mib=16, backup_url_ttl=3600, agent_timeout=5)
HOST = "demo-default-1a2b3c.example.com"


def _server(server_id: int) -> ServerInfo:
    return ServerInfo(id=server_id, name=f"s{server_id}", status="running",
                      ipv4="192.0.2.1", ipv6=None, server_type="cx23", location="fsn1")


class ListingProvider:
    """Only what the inventory calls: list_managed, counted."""

    def __init__(self) -> None:
        self.listings = 0
        self.servers = [_server(1)]

    async def list_managed(self) -> list[ServerInfo]:
        self.listings += 1
        return list(self.servers)


class Closing:
    """A client that records being closed (or fails to close)."""

    def __init__(self, name: str, closed: list[str], fail: bool = False) -> None:
        self.name, self.closed, self.fail = name, closed, fail

    async def aclose(self) -> None:
        if self.fail:
            raise OSError("socket already gone")
        self.closed.append(self.name)

    def close(self) -> None:
        self.closed.append(self.name)


class Clock:
    def __init__(self) -> None:
        self.wall = NOW
        self.mono = 0.0  # a fresh boot: the monotonic clock starts near zero

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds


async def test_inventory_serves_its_last_listing_while_the_budget_holds_listings_back(
) -> None:
    clock, provider = Clock(), ListingProvider()
    inventory = ServerInventory(provider, interval=600,  # type: ignore[arg-type]
                                clock=clock.now, monotonic=clock.monotonic)
    await inventory.snapshot()
    refused = BudgetExhausted("hetzner", "hetzner.list_managed", Priority.LOW, 3.0, 4, 60, 6)

    async def spent() -> list[ServerInfo]:
        raise refused

    provider.list_managed = spent  # type: ignore[method-assign]
    clock.advance(601)
    fetched, servers = await inventory.snapshot()
    assert (fetched, list(servers)) == (None, [1])  # the old listing, undated
    fresh = ServerInventory(provider, interval=600,  # type: ignore[arg-type]
                            clock=clock.now, monotonic=clock.monotonic)
    with pytest.raises(BudgetExhausted):  # nothing to fall back on
        await fresh.snapshot()


async def test_inventory_lists_on_first_use_then_once_per_interval_on_the_injected_clocks(
) -> None:
    clock, provider = Clock(), ListingProvider()
    inventory = ServerInventory(provider, interval=600,  # type: ignore[arg-type]
                                clock=clock.now, monotonic=clock.monotonic)
    fetched, servers = await inventory.snapshot()
    assert (fetched, list(servers), provider.listings) == (NOW, [1], 1)

    clock.advance(599)
    provider.servers = [_server(2)]
    fetched, servers = await inventory.snapshot()
    assert (fetched, list(servers), provider.listings) == (NOW, [1], 1)  # cached

    clock.advance(1)
    fetched, servers = await inventory.snapshot()
    assert (fetched, list(servers), provider.listings) == (NOW + timedelta(seconds=600), [2], 2)


async def test_a_listing_is_dated_by_its_start_and_a_confirmed_server_joins_it() -> None:
    clock, provider = Clock(), ListingProvider()
    inventory = ServerInventory(provider, interval=600,  # type: ignore[arg-type]
                                clock=clock.now, monotonic=clock.monotonic)
    listed = provider.list_managed

    async def slow_listing() -> list[ServerInfo]:
        servers = await listed()
        clock.advance(3)  # pages still being read while a server is created
        return servers

    provider.list_managed = slow_listing  # type: ignore[method-assign]
    fetched, servers = await inventory.snapshot()
    assert (fetched, sorted(servers)) == (NOW, [1])  # when it began, not when it ended
    inventory.confirm(_server(7))
    _, servers = await inventory.snapshot()
    assert sorted(servers) == [1, 7]
    clock.advance(600)
    _, servers = await inventory.snapshot()
    assert sorted(servers) == [1]  # the next listing is the truth again


async def test_a_noted_change_is_served_until_the_next_listing_a_new_server_is_not(
) -> None:
    clock, provider = Clock(), ListingProvider()
    inventory = ServerInventory(provider, interval=600,  # type: ignore[arg-type]
                                clock=clock.now, monotonic=clock.monotonic)
    await inventory.snapshot()
    renamed = replace(_server(1), name="claimed")
    inventory.note(renamed)
    inventory.note(_server(7))  # never listed: no entry made up for it
    _, servers = await inventory.snapshot()
    assert (servers[1].name, sorted(servers), provider.listings) == ("claimed", [1], 1)
    clock.advance(600)
    _, servers = await inventory.snapshot()
    assert servers[1].name == _server(1).name  # the listing is the truth again


async def test_runtime_hands_its_clocks_to_the_inventories_it_builds() -> None:
    clock, provider = Clock(), ListingProvider()
    runtime = Runtime(SETTINGS, kube=None,  # type: ignore[arg-type]
                      clock=clock.now, monotonic=clock.monotonic,
                      server_factory=lambda token, endpoint: provider)  # type: ignore[arg-type,return-value]
    inventory = runtime.inventory("token", "https://hetzner.example/v1")
    assert inventory is runtime.inventory("token", "https://hetzner.example/v1")
    assert inventory.provider is runtime.servers("token", "https://hetzner.example/v1")
    clock.advance(42)
    assert (await inventory.snapshot())[0] == NOW + timedelta(seconds=42)
    assert runtime.clock() == NOW + timedelta(seconds=42)


async def test_aclose_closes_every_real_client_the_runtime_created(
        monkeypatch: pytest.MonkeyPatch) -> None:
    closed_sessions: list[requests.Session] = []
    real_close = requests.Session.close

    def record_close(session: requests.Session) -> None:
        closed_sessions.append(session)
        real_close(session)

    monkeypatch.setattr(requests.Session, "close", record_close)
    runtime = Runtime(SETTINGS, kube=None)  # type: ignore[arg-type]
    servers = runtime.servers("token", "https://hetzner.example/v1")
    assert isinstance(servers, HcloudServers)
    dns: Any = runtime.dns("token", "https://cloudflare.example/client/v4")
    dns_http = dns._http()  # the httpx client is opened on first use
    store: Any = runtime.store("https://r2.example", "backups", "auto", "path", "a", "s")
    s3_closed: list[bool] = []
    real_s3_close = store._s3.close
    monkeypatch.setattr(store._s3, "close", lambda: (s3_closed.append(True), real_s3_close()))
    one, two = generate(HOST, NOW), generate(HOST, NOW)
    forgotten: Any = runtime.agent_client("uid-1", "https://192.0.2.1:9443", one.token,
                                          one.cert_pem)
    runtime.forget("uid-1")  # queued for closing, not yet closed
    current: Any = runtime.agent_client("uid-2", "https://192.0.2.2:9443", two.token,
                                        two.cert_pem)
    hcloud = servers._client
    sessions = [hcloud._client._session, hcloud._client_hetzner._session]

    await runtime.aclose()

    assert all(any(s is c for c in closed_sessions) for s in sessions)
    assert dns_http.is_closed
    assert s3_closed == [True]
    assert forgotten._client.is_closed and current._client.is_closed
    # Nothing stays cached: a late caller gets a fresh adapter, not a closed one.
    fresh: Any = runtime.agent_client("uid-2", "https://192.0.2.2:9443", two.token,
                                      two.cert_pem)
    assert fresh is not current and not fresh._client.is_closed
    await runtime.aclose()
    assert fresh._client.is_closed


async def test_a_client_that_fails_to_close_does_not_keep_the_others_open(
        caplog: pytest.LogCaptureFixture) -> None:
    closed: list[str] = []
    runtime = Runtime(
        SETTINGS, kube=None,  # type: ignore[arg-type]
        server_factory=lambda token, endpoint: Closing("servers", closed, fail=True),  # type: ignore[arg-type,return-value]
        dns_factory=lambda token, endpoint: Closing("dns", closed),  # type: ignore[arg-type,return-value]
        store_factory=lambda *_: Closing("store", closed),  # type: ignore[arg-type,return-value]
        agent_factory=lambda *_: Closing("agent", closed))  # type: ignore[arg-type,return-value]
    runtime.servers("t", "e")
    runtime.dns("t", "e")
    runtime.store("e", "b", "r", "path", "a", "s")
    runtime.agent_client("uid", "https://192.0.2.1:9443", "t", "pem")
    with caplog.at_level(logging.WARNING, logger="agentspaces.runtime"):
        await runtime.aclose()
    assert sorted(closed) == ["agent", "dns", "store"]
    assert "OSError" in caplog.text and "socket already gone" not in caplog.text


async def test_startup_puts_one_runtime_in_the_memo_and_cleanup_closes_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    kube_closed: list[str] = []
    monkeypatch.setattr(handlers, "KubernetesApi", lambda: Closing("kube", kube_closed))
    memo = kopf.Memo()
    await handlers.configure(settings=kopf.OperatorSettings(), memo=memo,
                             logger=logging.getLogger("test"))
    runtime = handlers.runtime_of(memo)
    # Settings are read once per process: the runtime uses the values the timer did.
    assert runtime.settings is handlers.SETTINGS

    closed: list[str] = []
    runtime._dns_factory = lambda token, endpoint: Closing("dns", closed)  # type: ignore[assignment,return-value]
    runtime.dns("t", "e")
    await handlers.close_clients(memo=memo)
    assert closed == ["dns"]
    assert kube_closed == ["kube"]  # the Kubernetes client's pool too
    await handlers.close_clients(memo=kopf.Memo())  # startup never ran: nothing to close


def test_cleanup_is_registered_with_kopf_and_handlers_need_the_memo() -> None:
    registered = {(h.fn, h.activity.value)
                  for h in kopf.get_default_registry()._activities.get_all_handlers()}
    assert (handlers.close_clients, "cleanup") in registered
    assert (handlers.configure, "startup") in registered
    with pytest.raises(RuntimeError, match="operator not started"):
        handlers.runtime_of(kopf.Memo())


async def test_kubernetes_client_closes_its_connection_pools() -> None:
    from kubernetes import client

    from agentspaces.kube import KubernetesApi

    api_client = client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))
    kube = KubernetesApi(api_client)
    pools = api_client.rest_client.pool_manager
    pools.connection_from_url("http://127.0.0.1:9/api")  # as a first request would
    assert len(pools.pools) == 1
    await kube.aclose()
    assert len(pools.pools) == 0
