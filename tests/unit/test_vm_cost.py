"""The servers' cost in status.vmCost (reconcile/vm_cost.py): billed hours from the
recorded times, folded runs, idempotence across polls and restarts, one price fetch per
project; and token usage reaching status through the reconcile."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from agentspaces.api.status import ServerStatus, VmCostStatus, WorkspaceStatus
from agentspaces.clouds.errors import CloudError, ErrorKind
from agentspaces.clouds.hetzner_pricing import (
    CachedPrices,
    Money,
    PriceList,
    ServerPrice,
    parse_pricing,
)
from agentspaces.reconcile import vm_cost, workspace
from agentspaces.sandbox import hetzner_catalog
from agentspaces_vm.contracts import TokenCounts, UsageReport
from tests.support.clock import WallClock
from tests.support.fakes import FAKE_PRICES
from tests.support.scope_builder import SETTINGS, ScopeBuilder

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
HOURLY = Money(Decimal("0.0090"), Decimal("0.01071"))  # cx23 + IPv4 in FAKE_PRICES
MONTHLY = Money(Decimal("5.49"), Decimal("6.5331"))


# --- billing arithmetic -------------------------------------------------------------------

@pytest.mark.parametrize(("minutes", "hours"), [(0, 1), (1, 1), (60, 1), (61, 2), (600, 10)])
def test_every_started_hour_is_billed(minutes: int, hours: int) -> None:
    cost, billed = vm_cost.run_cost(T0, T0 + timedelta(minutes=minutes), HOURLY, MONTHLY)
    assert billed == hours
    assert cost == Money(HOURLY.net * hours, HOURLY.gross * hours)


def test_a_month_costs_at_most_the_monthly_price_per_calendar_month() -> None:
    start = datetime(2026, 11, 3, tzinfo=UTC)
    cost, billed = vm_cost.run_cost(start, datetime(2027, 1, 2, 12, tzinfo=UTC),
                                    HOURLY, MONTHLY)
    # November (28 days: capped), December (capped), 36 hours of January.
    assert billed == 28 * 24 + 31 * 24 + 36
    assert cost.net == MONTHLY.net * 2 + HOURLY.net * 36


def test_a_clock_before_the_start_bills_one_hour() -> None:
    cost, billed = vm_cost.run_cost(T0, T0 - timedelta(hours=3), HOURLY, MONTHLY)
    assert (cost, billed) == (HOURLY, 1)


# --- settle: from recorded times ---------------------------------------------------------

def priced(server_id: int | None = 7, created: datetime = T0) -> WorkspaceStatus:
    status = WorkspaceStatus(server=ServerStatus(id=server_id, type="cx23", location="fsn1",
                                                 created_at=created)
                             if server_id is not None else None)
    vm_cost.record_price(status, "cx23", "fsn1", ServerPrice("EUR", HOURLY, MONTHLY))
    return status


def accrued(status: WorkspaceStatus) -> tuple[str | None, int | None]:
    cost = status.vm_cost
    assert cost is not None and cost.accrued is not None
    return cost.accrued.net, cost.billed_hours


def test_settle_is_a_function_of_the_recorded_times_not_of_the_polls() -> None:
    status = priced()
    for minute in range(0, 150, 7):  # many polls
        vm_cost.settle(status, T0 + timedelta(minutes=minute))
    many = status.model_dump(by_alias=True, mode="json")
    once = priced()
    vm_cost.settle(once, T0 + timedelta(minutes=147))
    assert accrued(once) == accrued(status) == ("0.027", 3)
    # An operator restart: status read back from the API, settled again at the same time.
    restored = WorkspaceStatus.model_validate(many)
    vm_cost.settle(restored, T0 + timedelta(minutes=147))
    assert restored.model_dump(by_alias=True, mode="json") == many


def test_accrued_at_moves_only_when_the_amount_changes() -> None:
    status = priced()
    vm_cost.settle(status, T0 + timedelta(minutes=5))
    assert status.vm_cost is not None
    first = status.vm_cost.accrued_at
    vm_cost.settle(status, T0 + timedelta(minutes=55))  # still the first hour
    assert status.vm_cost.accrued_at == first == T0 + timedelta(minutes=5)
    vm_cost.settle(status, T0 + timedelta(minutes=65))
    assert status.vm_cost.accrued_at == T0 + timedelta(minutes=65)
    assert status.vm_cost.summary == "0.018 EUR net"


def test_a_deleted_server_moves_into_previous_and_a_new_run_starts() -> None:
    status = priced()
    vm_cost.settle(status, T0 + timedelta(minutes=30))
    status.server = None  # the stop removed it
    vm_cost.settle(status, T0 + timedelta(hours=2, minutes=30))
    cost = status.vm_cost
    assert cost is not None
    assert (cost.server_id, cost.previous_hours) == (None, 3)
    assert cost.previous is not None and cost.previous.net == "0.027"
    # Stopped: nothing accrues.
    vm_cost.settle(status, T0 + timedelta(days=3))
    assert accrued(status) == ("0.027", 3)
    # Woken on a new server: its run adds to the previous ones.
    wake = T0 + timedelta(days=3)
    status.server = ServerStatus(id=8, type="cx23", location="fsn1", created_at=wake)
    vm_cost.settle(status, wake + timedelta(minutes=90))
    assert (cost.server_id, cost.run_started_at) == (8, wake)
    assert accrued(status) == ("0.045", 5)
    assert cost.accrued is not None and cost.accrued.gross == "0.0536"


def test_a_server_of_another_type_waits_for_its_price() -> None:
    status = priced()
    vm_cost.settle(status, T0)
    status.server = ServerStatus(id=9, type="cpx32", location="fsn1", created_at=T0)
    vm_cost.settle(status, T0 + timedelta(minutes=10))
    assert status.vm_cost is not None and status.vm_cost.server_id is None  # folded
    assert accrued(status) == ("0.009", 1)


def test_another_currency_starts_over_rather_than_adding() -> None:
    status = priced()
    vm_cost.settle(status, T0 + timedelta(hours=5))
    vm_cost.record_price(status, "cx23", "fsn1",
                         ServerPrice("USD", Money(Decimal(1), Decimal(1)),
                                     Money(Decimal(9), Decimal(9))))
    assert status.vm_cost == VmCostStatus(currency="USD", server_type="cx23",
                                          location="fsn1",
                                          hourly={"net": "1", "gross": "1"},
                                          monthly={"net": "9", "gross": "9"})


# --- the price list -----------------------------------------------------------------------

def test_the_emulators_price_list_parses_with_the_primary_ipv4() -> None:
    prices = parse_pricing(hetzner_catalog.pricing_dict())
    assert prices.currency == "EUR"
    server_type = hetzner_catalog.find_server_type("cx23")
    assert server_type is not None
    listed = next(p for p in hetzner_catalog.server_type_dict(server_type)["prices"]
                  if p["location"] == "fsn1")
    plain = prices.server("cx23", "fsn1", ipv4=False)
    with_ip = prices.server("cx23", "fsn1", ipv4=True)
    assert plain is not None and with_ip is not None
    assert plain.hourly.net == Decimal(listed["price_hourly"]["net"])
    assert plain.monthly.gross == Decimal(listed["price_monthly"]["gross"])
    assert with_ip.monthly.net == plain.monthly.net + Decimal("0.50")
    assert prices.server("cx23", "sin", ipv4=True) is None  # not sold there


@pytest.mark.parametrize("doc", [None, {}, {"currency": "EUR", "server_types": [{}]},
                                 {"currency": "EUR", "server_types": [
                                     {"name": "cx23", "prices": [{"location": "fsn1",
                                                                  "price_hourly": {}}]}]}])
def test_a_malformed_price_list_is_refused(doc: Any) -> None:
    with pytest.raises(ValueError):
        parse_pricing(doc)


async def test_the_cache_fetches_once_a_day_and_backs_off_after_a_failure() -> None:
    clock = WallClock(T0)
    answers: list[PriceList | CloudError] = [
        CloudError(ErrorKind.TRANSIENT, "hetzner", "unavailable", "down"), FAKE_PRICES]

    async def fetch() -> PriceList:
        answer = answers.pop(0) if answers else FAKE_PRICES
        if isinstance(answer, CloudError):
            raise answer
        return answer

    cache = CachedPrices(fetch, ttl=86400, retry=600, monotonic=clock.monotonic)
    assert await cache.get() is None
    clock.advance(60)
    assert await cache.get() is None and cache.fetches == 1  # backing off
    clock.advance(600)
    assert await cache.get() is FAKE_PRICES and cache.fetches == 2
    clock.advance(3600)
    assert await cache.get() is FAKE_PRICES and cache.fetches == 2
    clock.advance(86400)
    await cache.get()
    assert cache.fetches == 3


# --- through the reconcile ----------------------------------------------------------------

async def running(b: ScopeBuilder) -> None:
    await b.reconcile()
    b.clock.advance(SETTINGS.boot_poll)
    b.servers.boot()
    await b.reconcile()
    b.clock.advance(SETTINGS.boot_poll)
    b.agent.report_ready(b.clock())
    await b.reconcile()


async def test_the_price_is_read_once_and_the_cost_accrues_while_running(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    await running(b)
    assert b.servers.calls.methods().count("pricing") == 1
    cost = b.status["vmCost"]
    assert cost["currency"] == "EUR" and cost["serverType"] == "cx23"
    assert cost["hourly"] == {"net": "0.009", "gross": "0.01071"}  # server + IPv4
    assert cost["accrued"] == {"net": "0.009", "gross": "0.0107"}
    assert cost["billedHours"] == 1
    server = b.status["server"]
    assert (cost["serverId"], cost["runStartedAt"]) == (server["id"], server["createdAt"])

    b.clear_calls()
    for _ in range(10):  # polls within the hour: no Hetzner price call, no status write
        b.clock.advance(SETTINGS.poll_interval)
        visit = b.visit()
        await workspace.reconcile(visit)
        assert "vmCost" not in visit.status.patch()
        b.save(visit)
    assert "pricing" not in b.servers.calls.methods()
    b.clock.advance(3600)
    await b.reconcile()
    assert b.status["vmCost"]["billedHours"] == 2

    # Stopped by the user: the run is folded into previous with the server's removal.
    b.with_spec(running=False)
    for _ in range(3):
        await b.reconcile()
        b.clock.advance(SETTINGS.boot_poll)
    cost = b.status["vmCost"]
    assert "server" not in b.status and "serverId" not in cost
    assert cost["previousHours"] == 2 and cost["accrued"]["net"] == "0.018"


async def test_token_usage_reaches_status_once_complete(scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    b.with_class(pricing={"models": [{"model": "claude-opus-5-5", "input": 1,
                                      "output": 2}]})
    await running(b)
    assert "usage" not in b.status  # the fake agent reports none
    partial = UsageReport(sessions=1, models={"claude-opus-5-5": TokenCounts(input=5)},
                          complete=False)
    b.agent.state = replace(b.agent.state, usage=partial)
    await b.reconcile()
    assert "usage" not in b.status
    b.agent.state = replace(b.agent.state, usage=replace(
        partial, models={"claude-opus-5-5": TokenCounts(input=1_000_000, output=500_000)},
        last_model="claude-opus-5-5", complete=True))
    await b.reconcile()
    usage = b.status["usage"]
    assert (usage["sessions"], usage["totalTokens"], usage["lastModel"]) == \
        (1, 1_500_000, "claude-opus-5-5")
    assert (usage["estimatedCost"], usage["currency"]) == ("2", "USD")  # the class's prices
