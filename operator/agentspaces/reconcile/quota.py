"""Does a namespace's WorkspaceQuota let one more server start? (docs/quotas.md)

Pure: the quota, what the namespace's Workspaces record in their status, the quota's
ledger of deleted Workspaces and the time in; what is in use and a verdict out.

- Running: a Workspace counts while it has a server (status.server.id), or while this
  operator has let it start and its server is not recorded yet (`reserved`).
- Server types: a list, since Hetzner's types are not totally ordered (shared and
  dedicated vCPUs, x86 and Arm at different prices and sizes).
- Budget: the namespace's spend in the current calendar month (UTC): each Workspace's
  VM cost in the month (net, reconcile/vm_cost.month_to_date: runs ended this month
  plus the running server's part), its token estimate when in the budget's currency
  (the estimate is not split by month, so all of it counts), and what Workspaces
  deleted this month had spent (the quota's status.deleted). Amounts in two currencies
  are never added or converted: a VM cost in another currency than the budget's is an
  error that keeps the start waiting, rather than a spend silently not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from agentspaces.api.enums import Reason
from agentspaces.api.quota_model import WorkspaceQuotaSpec
from agentspaces.api.status import TokenUsageStatus, VmCostStatus
from agentspaces.reconcile.vm_cost import month_key, month_to_date

NAMES_SHOWN = 5


class CurrencyMismatch(ValueError):
    """A spend in another currency than the budget's."""


@dataclass(frozen=True)
class WorkspaceUse:
    """One Workspace of the namespace, as its status records it."""

    uid: str
    name: str
    has_server: bool
    vm_cost: VmCostStatus | None = None
    tokens: TokenUsageStatus | None = None

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> WorkspaceUse:
        """From a listed Workspace; a malformed cost record counts as none."""
        meta, status = raw.get("metadata") or {}, raw.get("status") or {}
        server = status.get("server") or {}
        try:
            cost = VmCostStatus.model_validate(status["vmCost"]) if status.get("vmCost") \
                else None
        except ValueError:
            cost = None
        try:
            tokens = TokenUsageStatus.model_validate(status["usage"]) if status.get("usage") \
                else None
        except ValueError:
            tokens = None
        return cls(uid=str(meta.get("uid", "")), name=str(meta.get("name", "")),
                   has_server=server.get("id") is not None, vm_cost=cost, tokens=tokens)


@dataclass(frozen=True)
class Use:
    running: int
    spent: Decimal | None
    """Month to date in the budget's currency; None without a budget."""
    month: str


@dataclass(frozen=True)
class Refusal:
    reason: Reason
    message: str


def spent(budget_currency: str, workspaces: Iterable[WorkspaceUse],
          deleted: Mapping[str, str], now: datetime) -> Decimal:
    """The month-to-date spend in `budget_currency` (see the module's docstring)."""
    total = sum((_decimal(v) for v in deleted.values()), Decimal(0))
    for ws in workspaces:
        if ws.uid not in deleted:  # recorded at its delete, still listed while it goes
            total += workspace_spend(budget_currency, ws, now)
    return total


def workspace_spend(budget_currency: str, ws: WorkspaceUse, now: datetime) -> Decimal:
    """One Workspace's month-to-date spend in `budget_currency`; CurrencyMismatch when
    its VM cost is in another currency."""
    total = Decimal(0)
    vm = month_to_date(ws.vm_cost, now)
    if vm is not None and ws.vm_cost is not None:
        if ws.vm_cost.currency != budget_currency:
            raise CurrencyMismatch(
                f"the budget is in {budget_currency} but Workspace {ws.name}'s VM cost is "
                f"in {ws.vm_cost.currency} (its Hetzner project's currency); amounts in "
                "two currencies are never added or converted: set the budget in "
                f"{ws.vm_cost.currency}")
        total += vm.net
    if ws.tokens is not None and ws.tokens.currency == budget_currency:
        total += _decimal(ws.tokens.estimated_cost)
    return total


def check(name: str, spec: WorkspaceQuotaSpec, workspaces: Sequence[WorkspaceUse],
          deleted: Mapping[str, Mapping[str, str]] | None, *, uid: str,
          server_type: str, reserved: Iterable[str], now: datetime
          ) -> tuple[Use, Refusal | None]:
    """What the namespace uses under quota `name`, and whether Workspace `uid` may get
    a server of `server_type` now (None) or must wait (why)."""
    month = month_key(now)
    held = set(reserved)
    others = [w for w in workspaces if w.uid != uid and (w.has_server or w.uid in held)]
    running = len(others)
    budget, amount = spec.monthly_budget, None
    refusal: Refusal | None = None
    if budget is not None:
        try:
            amount = spent(budget.currency, workspaces,
                           (deleted or {}).get(month, {}), now)
        except CurrencyMismatch as err:
            refusal = Refusal(Reason.BUDGET_EXCEEDED, f"WorkspaceQuota {name}: {err}")
    use = Use(running=running, spent=amount, month=month)
    if spec.server_types is not None and server_type not in spec.server_types:
        return use, Refusal(Reason.QUOTA_EXCEEDED,
                            f"WorkspaceQuota {name} does not allow server type {server_type} "
                            f"(serverTypes: {', '.join(spec.server_types)})")
    if spec.max_running is not None and running >= spec.max_running:
        names = sorted(w.name for w in others)
        shown = ", ".join(names[:NAMES_SHOWN]) + (", ..." if len(names) > NAMES_SHOWN else "")
        return use, Refusal(Reason.QUOTA_EXCEEDED,
                            f"WorkspaceQuota {name} allows {spec.max_running} running "
                            f"workspaces; {running} have a server"
                            + (f" ({shown})" if names else "")
                            + "; this start waits until one stops")
    if refusal is not None:
        return use, refusal
    if budget is not None and amount is not None and amount >= _decimal(budget.amount):
        return use, Refusal(Reason.BUDGET_EXCEEDED,
                            f"WorkspaceQuota {name}'s monthly budget is {budget.amount} "
                            f"{budget.currency}; {text(amount)} {budget.currency} spent in "
                            f"{month}; this start waits until the budget is raised or the "
                            "month ends")
    return use, None


def text(amount: Decimal) -> str:
    """Two decimals, as money is read."""
    return format(amount.quantize(Decimal("0.01")), "f")


def _decimal(value: str | None) -> Decimal:
    try:
        return Decimal(value or 0)
    except InvalidOperation:
        return Decimal(0)


def limit_reached(name: str, spec: WorkspaceQuotaSpec, use: Use) -> Refusal | None:
    """Whether the namespace is at one of the quota's limits now (its status), whoever
    starts next."""
    if spec.max_running is not None and use.running >= spec.max_running:
        return Refusal(Reason.QUOTA_EXCEEDED, f"{use.running} of {spec.max_running} "
                                              "running workspaces")
    budget = spec.monthly_budget
    if budget is not None and use.spent is not None and use.spent >= _decimal(budget.amount):
        return Refusal(Reason.BUDGET_EXCEEDED, f"{text(use.spent)} of {budget.amount} "
                                               f"{budget.currency} spent in {use.month}")
    return None
