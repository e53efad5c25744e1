"""What the workspace's servers cost, accrued in status.vmCost.

Hetzner bills a server from its creation until its deletion, whatever its state, per
started hour and at most its monthly price in a month; the primary IPv4 is billed beside
it. The step records the price of the running server once (server type and location,
from the project's GET /pricing, which the runtime caches per project: no Hetzner call
at steady state) together with the run's start, the server's creation time.

`settle` runs at the end of every reconcile and computes the accrued amount from those
recorded times, never by adding on each poll: repeated polls and operator restarts give
the same figure, and status is written only when it changes (once per billed hour).
When the server goes (a stop, or a replacement), its run moves into `previous` in the
same status write that drops the server. Amounts stay in the project's currency (net
and gross), apart from the token estimate's USD.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from agentspaces.api.status import MoneyStatus, VmCostStatus, WorkspaceStatus
from agentspaces.clouds.errors import CloudError
from agentspaces.clouds.hetzner_pricing import Money, ServerPrice
from agentspaces.reconcile.outcome import Outcome
from agentspaces.reconcile.scope import Scope

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
CENT_FRACTION = Decimal("0.0001")  # amounts are kept to 1/100 of a cent
MAX_MONTHS = 1200


async def reconcile(scope: Scope) -> Outcome | None:
    """Record the running server's price once; never holds up the walk."""
    server, status = scope.server, scope.status
    assert server is not None, "runs after the server step"
    settle(status, scope.now())  # a replaced server's run ends before the new one's
    cost = status.vm_cost
    if cost is not None and cost.hourly is not None and \
            (cost.server_type, cost.location) == (server.server_type, server.location):
        return None
    try:
        prices = await scope.runtime.prices(scope.creds.hetzner_token,
                                            scope.klass.hetzner_endpoint).get()
    except CloudError as err:  # the cache catches these; a price is never worth a retry
        log.warning("no Hetzner price for %s: %s", scope.ref.name, err)
        return None
    price = prices.server(server.server_type, server.location,
                          ipv4=server.ipv4 is not None) if prices is not None else None
    if price is None:
        return None
    record_price(status, server.server_type, server.location, price)
    settle(status, scope.now())
    return None


async def delete(scope: Scope) -> Outcome | None:
    return None


def _text(amount: Decimal) -> str:
    """A decimal string without exponent or trailing zeros."""
    text = format(amount.normalize(), "f")
    return text if text != "-0" else "0"


def _money_status(money: Money, places: Decimal | None = None) -> MoneyStatus:
    if places is not None:
        money = Money(money.net.quantize(places, ROUND_HALF_UP),
                      money.gross.quantize(places, ROUND_HALF_UP))
    return MoneyStatus(net=_text(money.net), gross=_text(money.gross))


def _money(status: MoneyStatus | None) -> Money:
    if status is None:
        return Money(Decimal(0), Decimal(0))
    return Money(Decimal(status.net or 0), Decimal(status.gross or 0))


def record_price(status: WorkspaceStatus, server_type: str, location: str,
                 price: ServerPrice) -> None:
    """The price of the server billed from now on. A different currency than the one
    recorded starts the record over: amounts in two currencies are never added."""
    cost = status.vm_cost
    if cost is None or (cost.currency is not None and cost.currency != price.currency):
        cost = status.vm_cost = VmCostStatus(currency=price.currency)
    cost.server_type, cost.location = server_type, location
    cost.hourly = _money_status(price.hourly)
    cost.monthly = _money_status(price.monthly)


def run_cost(start: datetime, end: datetime, hourly: Money, monthly: Money
             ) -> tuple[Money, int]:
    """(cost, billed hours) of one server from `start` to `end`: each started hour at
    `hourly`, at most `monthly` in each calendar month (UTC)."""
    total, hours_total = Money(Decimal(0), Decimal(0)), 0
    cursor = start.astimezone(UTC)
    end = max(end.astimezone(UTC), cursor)
    for _ in range(MAX_MONTHS):
        boundary = (datetime(cursor.year + 1, 1, 1, tzinfo=UTC) if cursor.month == 12
                    else datetime(cursor.year, cursor.month + 1, 1, tzinfo=UTC))
        piece_end = min(end, boundary)
        hours = max(1, math.ceil((piece_end - cursor) / HOUR))
        total = total + Money(min(hourly.net * hours, monthly.net),
                              min(hourly.gross * hours, monthly.gross))
        hours_total += hours
        if piece_end >= end:
            break
        cursor = piece_end
    return total, hours_total


def settle(status: WorkspaceStatus, now: datetime) -> None:
    """Fold a finished run into `previous`, start the current server's run when its
    price is known, and update `accrued` when the billed amount changed."""
    cost = status.vm_cost
    if cost is None or cost.hourly is None or cost.monthly is None:
        return
    hourly, monthly = _money(cost.hourly), _money(cost.monthly)
    server = status.server
    current = server.id if server is not None else None
    if cost.server_id is not None and cost.server_id != current:
        ended, hours = run_cost(cost.run_started_at or now, now, hourly, monthly)
        cost.previous = _money_status(_money(cost.previous) + ended)  # exact
        cost.previous_hours = (cost.previous_hours or 0) + hours
        _fold_into_month(cost, cost.run_started_at or now, now, hourly, monthly)
        cost.server_id, cost.run_started_at = None, None
    if cost.server_id is None and server is not None and current is not None and \
            (server.type, server.location) == (cost.server_type, cost.location):
        cost.server_id, cost.run_started_at = current, server.created_at or now
    accrued, hours = _money(cost.previous), cost.previous_hours or 0
    if cost.server_id is not None and cost.run_started_at is not None:
        running, running_hours = run_cost(cost.run_started_at, now, hourly, monthly)
        accrued, hours = accrued + running, hours + running_hours
    shown = _money_status(accrued, CENT_FRACTION)
    if shown != cost.accrued or cost.billed_hours != hours:
        cost.accrued, cost.billed_hours, cost.accrued_at = shown, hours, now
        cost.summary = f"{shown.net} {cost.currency} net"


def month_key(now: datetime) -> str:
    """The calendar month (UTC) of `now`, YYYY-MM."""
    return now.astimezone(UTC).strftime("%Y-%m")


def month_start(now: datetime) -> datetime:
    now = now.astimezone(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def _fold_into_month(cost: VmCostStatus, start: datetime, end: datetime, hourly: Money,
                     monthly: Money) -> None:
    """Add an ended run's part in the current month to `monthPrevious` (reset when the
    month changed), in the same status write that drops the server: a quota's budget
    still counts it after the stop."""
    key = month_key(end)
    if cost.month != key:
        cost.month, cost.month_previous = key, None
    in_month, _ = run_cost(max(start.astimezone(UTC), month_start(end)), end, hourly, monthly)
    cost.month_previous = _money_status(_money(cost.month_previous) + in_month)


def month_to_date(cost: VmCostStatus | None, now: datetime) -> Money | None:
    """What the workspace's servers cost in `now`'s month so far: the runs that ended in
    it plus the running server's part in it. None when no price was ever recorded."""
    if cost is None or cost.hourly is None or cost.monthly is None:
        return None
    total = _money(cost.month_previous) if cost.month == month_key(now) else _money(None)
    if cost.server_id is not None and cost.run_started_at is not None:
        start = max(cost.run_started_at.astimezone(UTC), month_start(now))
        running, _ = run_cost(start, max(now, start), _money(cost.hourly), _money(cost.monthly))
        total = total + running
    return total
