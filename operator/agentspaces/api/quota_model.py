"""WorkspaceQuota: limits on a namespace's Workspaces (spec) and what was counted (status).

Kept apart from `api.model` (the Workspace and its classes): a quota names no Secret and
no cloud, only how many servers a namespace may run, of which types, and what they may
cost in a calendar month. Several quotas in one namespace all apply.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from agentspaces.api.model import LIST_SET, ApiModel, Cel, ServerType
from agentspaces.api.status import LIST_MAP, Condition, StatusModel, Timestamp

QUOTA_KIND = "WorkspaceQuota"
QUOTA_PLURAL = "workspacequotas"
AMOUNT_PATTERN = r"^[0-9]{1,9}(\.[0-9]{1,4})?$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"
MONTH_PATTERN = r"^[0-9]{4}-[0-9]{2}$"


class BudgetSpec(ApiModel):
    """A monthly budget: the namespace's spend since the first of the month (UTC)."""

    amount: str = Field(description="Decimal, e.g. 250 or 99.50.", pattern=AMOUNT_PATTERN)
    currency: str = Field(description="ISO 4217 code, e.g. EUR (the Hetzner project's "
                                      "currency) or USD (the token estimate's).",
                          pattern=CURRENCY_PATTERN)


class WorkspaceQuotaSpec(ApiModel):
    """Limits checked whenever a Workspace in this namespace is about to get a server
    (a create, a start, a wake); a start at a limit waits and is retried at the poll."""

    max_running: int | None = Field(
        None, ge=0, le=100000,
        description="Workspaces with a server at once (a workspace counts while it has "
                    "one, starting and stopping included).")
    server_types: list[ServerType] | None = Field(
        None, min_length=1, max_length=64, json_schema_extra=LIST_SET,
        description="The server types a new server may have; unset: any.")
    monthly_budget: BudgetSpec | None = Field(
        None, description="No new server once the month's spend reaches this: the VM cost "
                          "of the namespace's servers this month (net, in the Hetzner "
                          "project's currency) plus the token estimates in the same "
                          "currency.")

    cel_rules = (Cel("has(self.maxRunning) || has(self.serverTypes) || "
                     "has(self.monthlyBudget)",
                     "a WorkspaceQuota sets maxRunning, serverTypes or monthlyBudget"),)


Amount = Annotated[str, Field(pattern=AMOUNT_PATTERN)]


class WorkspaceQuotaStatus(StatusModel):
    """What the operator counted when it last decided a start in this namespace."""

    running: int | None = Field(None, description="Workspaces with a server.")
    spent: str | None = Field(None, description="Month-to-date spend, in the budget's "
                                                "currency.")
    month: str | None = Field(None, description="The month of `spent` (UTC), YYYY-MM.",
                              pattern=MONTH_PATTERN)
    checked_at: Timestamp | None = Field(None, alias="checkedAt",
                                         description="When these were counted.")
    deleted: dict[str, dict[str, Amount]] | None = Field(
        None, description="Month (YYYY-MM) -> deleted Workspace's uid -> what it had "
                          "spent that month when it was deleted, in the budget's currency; "
                          "keyed by uid so a repeated record counts once. Months before "
                          "the current one are dropped.")
    conditions: list[Condition] = Field(default_factory=list, max_length=8,
                                        json_schema_extra=LIST_MAP)
