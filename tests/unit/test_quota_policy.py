"""WorkspaceQuota's pure policy: running counts, allowed server types, the month-to-date
budget across month boundaries (an injected clock), a stopped server's cost kept in the
month, and a currency mismatch refused with a clear message."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from agentspaces.api.enums import Reason
from agentspaces.api.quota_model import WorkspaceQuotaSpec
from agentspaces.api.status import MoneyStatus, ServerStatus, VmCostStatus, WorkspaceStatus
from agentspaces.clouds.hetzner_pricing import Money, ServerPrice
from agentspaces.reconcile import vm_cost
from agentspaces.reconcile.quota import WorkspaceUse, check, spent

DEC_10 = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)


def _spec(**raw: Any) -> WorkspaceQuotaSpec:
    return WorkspaceQuotaSpec.parse(raw)


def _cost(started: datetime | None, hourly: str = "0.01", monthly: str = "5",
          currency: str = "EUR", month: str | None = None,
          month_previous: str | None = None) -> VmCostStatus:
    return VmCostStatus(currency=currency, server_type="cx23", location="fsn1",
                        hourly=MoneyStatus(net=hourly, gross=hourly),
                        monthly=MoneyStatus(net=monthly, gross=monthly),
                        server_id=1 if started else None, run_started_at=started,
                        month=month, month_previous=MoneyStatus(net=month_previous,
                                                                gross=month_previous)
                        if month_previous else None)


def _ws(name: str, server: bool = True, **cost: Any) -> WorkspaceUse:
    return WorkspaceUse(uid=f"uid-{name}", name=name, has_server=server,
                        vm_cost=_cost(**cost) if cost else None)


def _check(spec: WorkspaceQuotaSpec, workspaces: list[WorkspaceUse], *,
           uid: str = "uid-new", server_type: str = "cx23", reserved: tuple[str, ...] = (),
           deleted: dict[str, dict[str, str]] | None = None, now: datetime = DEC_10
           ) -> Any:
    return check("team", spec, workspaces, deleted, uid=uid, server_type=server_type,
                 reserved=reserved, now=now)


def test_the_model_refuses_an_empty_quota_and_a_malformed_budget() -> None:
    with pytest.raises(ValueError, match="maxRunning"):
        _spec(maxRunning=-1)
    with pytest.raises(ValueError, match="currency"):
        _spec(monthlyBudget={"amount": "10", "currency": "eur"})
    with pytest.raises(ValueError, match="amount"):
        _spec(monthlyBudget={"amount": "1e3", "currency": "EUR"})
    assert WorkspaceQuotaSpec.cel_rules[0].message.startswith("a WorkspaceQuota sets")


def test_max_running_counts_servers_and_reservations_but_not_the_starter_itself() -> None:
    spec = _spec(maxRunning=2)
    stopped = _ws("stopped", server=False)
    use, refusal = _check(spec, [_ws("a"), stopped])
    assert use.running == 1 and refusal is None
    # A start this operator let through whose server is not recorded yet counts.
    use, refusal = _check(spec, [_ws("a"), stopped], reserved=("uid-stopped",))
    assert use.running == 2 and refusal is not None
    assert refusal.reason == Reason.QUOTA_EXCEEDED
    assert refusal.message == ("WorkspaceQuota team allows 2 running workspaces; 2 have a "
                               "server (a, stopped); this start waits until one stops")
    # Its own record (a retry after a failed create) never counts against itself.
    use, refusal = _check(spec, [_ws("a"), _ws("new", server=True)], uid="uid-new")
    assert use.running == 1 and refusal is None
    assert _check(_spec(maxRunning=0), [])[1] is not None


def test_server_types_are_a_list_not_an_order() -> None:
    spec = _spec(serverTypes=["cx23", "cax21"])
    assert _check(spec, [], server_type="cax21")[1] is None
    refusal = _check(spec, [], server_type="cx33")[1]
    assert refusal.reason == Reason.QUOTA_EXCEEDED
    assert refusal.message == ("WorkspaceQuota team does not allow server type cx33 "
                               "(serverTypes: cx23, cax21)")


def test_the_budget_counts_this_month_only() -> None:
    spec = _spec(monthlyBudget={"amount": "1", "currency": "EUR"})
    # Running since 2 Dec 12:00: 192 started hours at 0.01 = 1.92, over the budget.
    long_run = _ws("long", started=datetime(2026, 12, 2, 12, tzinfo=UTC))
    use, refusal = _check(spec, [long_run])
    assert use.spent == Decimal("1.92") and use.month == "2026-12"
    assert refusal.reason == Reason.BUDGET_EXCEEDED
    assert refusal.message == ("WorkspaceQuota team's monthly budget is 1 EUR; 1.92 EUR "
                               "spent in 2026-12; this start waits until the budget is "
                               "raised or the month ends")
    # Started in November: only its December part counts (from 1 Dec 00:00, 15 h).
    carried = _ws("carried", started=datetime(2026, 11, 20, tzinfo=UTC))
    use, refusal = _check(spec, [carried], now=datetime(2026, 12, 1, 14, 30, tzinfo=UTC))
    assert use.spent == Decimal("0.15") and refusal is None
    # A stopped workspace's November record is not this month's spend.
    old = _ws("old", server=False, started=None, month="2026-11", month_previous="4")
    assert _check(spec, [old])[0].spent == 0
    this = _ws("this", server=False, started=None, month="2026-12", month_previous="0.4")
    assert _check(spec, [this])[0].spent == Decimal("0.4")
    # The monthly cap bounds a server's month.
    capped = _ws("capped", started=datetime(2026, 11, 1, tzinfo=UTC), hourly="1", monthly="3")
    assert _check(spec, [capped])[0].spent == Decimal("3")


def test_deleted_workspaces_and_token_estimates_count_once_in_their_month() -> None:
    spec = _spec(monthlyBudget={"amount": "10", "currency": "USD"})
    deleted = {"2026-11": {"uid-x": "50"}, "2026-12": {"uid-y": "2.5", "uid-z": "3"}}
    tokens = WorkspaceUse(uid="uid-t", name="t", has_server=False, tokens=_tokens("4.1"))
    use, refusal = _check(spec, [tokens], deleted=deleted)
    assert use.spent == Decimal("9.6") and refusal is None
    use, refusal = _check(spec, [tokens], deleted={"2026-12": {"uid-y": "6"}})
    assert refusal is not None and "10.10 USD spent in 2026-12" in refusal.message
    # A token estimate in another currency than an EUR budget is not added.
    assert spent("EUR", [tokens], {}, DEC_10) == 0


def _tokens(cost: str) -> Any:
    from agentspaces.api.status import TokenUsageStatus
    return TokenUsageStatus(estimated_cost=cost, currency="USD")


def test_a_budget_in_another_currency_than_the_vm_cost_is_a_clear_error() -> None:
    spec = _spec(monthlyBudget={"amount": "100", "currency": "USD"})
    _, refusal = _check(spec, [_ws("eur", started=DEC_10 - timedelta(hours=2))])
    assert refusal is not None and refusal.reason == Reason.BUDGET_EXCEEDED
    assert refusal.message == (
        "WorkspaceQuota team: the budget is in USD but Workspace eur's VM cost is in EUR "
        "(its Hetzner project's currency); amounts in two currencies are never added or "
        "converted: set the budget in EUR")
    # A limit that refuses first is still the one reported.
    both = _spec(maxRunning=0, monthlyBudget={"amount": "100", "currency": "USD"})
    assert _check(both, [])[1].reason == Reason.QUOTA_EXCEEDED


def test_a_stop_keeps_the_run_in_the_month_and_a_new_month_starts_at_zero() -> None:
    status = WorkspaceStatus()
    price = ServerPrice(currency="EUR", hourly=Money(Decimal("0.01"), Decimal("0.012")),
                        monthly=Money(Decimal("5"), Decimal("6")))
    vm_cost.record_price(status, "cx23", "fsn1", price)
    status.server = ServerStatus(id=7, type="cx23", location="fsn1",
                                 created_at=datetime(2026, 11, 30, 22, tzinfo=UTC))
    start_dec = datetime(2026, 12, 1, 3, 30, tzinfo=UTC)
    vm_cost.settle(status, start_dec)
    assert vm_cost.month_to_date(status.vm_cost, start_dec).net == Decimal("0.04")
    status.server = None  # stopped at 03:30 on 1 Dec
    vm_cost.settle(status, start_dec)
    vm_cost.settle(status, start_dec + timedelta(hours=5))  # settling again adds nothing
    cost = status.vm_cost
    assert cost.month == "2026-12" and cost.month_previous.net == "0.04"
    assert vm_cost.month_to_date(cost, DEC_10).net == Decimal("0.04")
    assert vm_cost.month_to_date(cost, datetime(2027, 1, 1, tzinfo=UTC)).net == 0
    # The next stop in January starts January's record over.
    status.server = ServerStatus(id=8, type="cx23", location="fsn1",
                                 created_at=datetime(2027, 1, 2, tzinfo=UTC))
    vm_cost.settle(status, datetime(2027, 1, 2, tzinfo=UTC))
    status.server = None
    vm_cost.settle(status, datetime(2027, 1, 2, 1, 30, tzinfo=UTC))
    assert (cost.month, cost.month_previous.net) == ("2027-01", "0.02")


def test_a_listed_workspace_is_read_from_its_status() -> None:
    raw = {"metadata": {"uid": "u1", "name": "w"},
           "status": {"server": {"id": 3}, "vmCost": {"currency": "EUR", "serverId": "x"},
                      "usage": {"estimatedCost": "1.5", "currency": "USD"}}}
    use = WorkspaceUse.of(raw)
    assert (use.uid, use.name, use.has_server, use.vm_cost) == ("u1", "w", True, None)
    assert use.tokens is not None and use.tokens.estimated_cost == "1.5"
    assert WorkspaceUse.of({"metadata": {"uid": "u2"}}).has_server is False
