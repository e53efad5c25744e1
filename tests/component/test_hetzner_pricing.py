"""The operator's Hetzner adapter reads the price list (GET /pricing) from the emulator
through hcloud, and the runtime's cache asks once for many lookups."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from agentspaces.clouds.errors import CloudError
from agentspaces.clouds.hetzner import HcloudServers
from agentspaces.clouds.hetzner_pricing import CachedPrices
from agentspaces.sandbox import hetzner_catalog
from agentspaces.sandbox.hetzner import HetznerEmulator

TOKEN = "pricing-test-token"


@pytest.fixture
def emulator() -> Iterator[HetznerEmulator]:
    emu = HetznerEmulator(TOKEN)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


async def test_the_price_list_of_a_server_type_at_its_location(
        emulator: HetznerEmulator) -> None:
    servers = HcloudServers(TOKEN, emulator.url)
    try:
        prices = await servers.pricing()
    finally:
        await servers.aclose()
    assert prices.currency == "EUR"
    cpx22 = hetzner_catalog.find_server_type("cpx22")
    assert cpx22 is not None
    listed = {p["location"]: p for p in hetzner_catalog.server_type_dict(cpx22)["prices"]}
    for location in ("fsn1", "ash"):
        price = prices.server("cpx22", location, ipv4=False)
        assert price is not None
        assert price.hourly.net == Decimal(listed[location]["price_hourly"]["net"])
        assert price.hourly.gross == Decimal(listed[location]["price_hourly"]["gross"])
        assert price.monthly.net == Decimal(listed[location]["price_monthly"]["net"])
    plain = prices.server("cpx22", "fsn1", ipv4=False)
    with_ip = prices.server("cpx22", "fsn1", ipv4=True)
    ipv4 = next(p for entry in hetzner_catalog.pricing_dict()["primary_ips"]
                if entry["type"] == "ipv4" for p in entry["prices"] if p["location"] == "fsn1")
    assert plain is not None and with_ip is not None
    assert with_ip.monthly.net == plain.monthly.net + Decimal(ipv4["price_monthly"]["net"])
    assert with_ip.hourly.gross == plain.hourly.gross + Decimal(ipv4["price_hourly"]["gross"])


async def test_the_cache_makes_one_call_for_many_lookups(emulator: HetznerEmulator) -> None:
    servers = HcloudServers(TOKEN, emulator.url)
    cache = CachedPrices(servers.pricing)
    emulator.reset_calls()
    try:
        for _ in range(5):
            assert await cache.get() is not None
    finally:
        await servers.aclose()
    assert sum(emulator.calls.values()) == 1, dict(emulator.calls)


async def test_a_refused_token_is_a_cloud_error(emulator: HetznerEmulator) -> None:
    servers = HcloudServers("not-the-token", emulator.url)
    try:
        with pytest.raises(CloudError) as caught:
            await servers.pricing()
    finally:
        await servers.aclose()
    assert caught.value.code in ("unauthorized", "401")
