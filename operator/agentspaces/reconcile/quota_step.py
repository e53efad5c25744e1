"""No server for a Workspace while its namespace's WorkspaceQuotas say wait.

Called only when a server is about to be created (a create, a start, a wake), before any
cloud call, like class_access_step: the polls of a running workspace never list
anything. A decision lists the namespace's WorkspaceQuotas (one small read) and, when
one limits running servers or spend, its Workspaces; it holds the namespace's gate
(quota_gate.py) from the listing until the start is counted. A start that must wait
records why (Ready and ServerReady False, QuotaExceeded or BudgetExceeded), says so in
one Warning event and is looked at again at the poll. Running workspaces are left
alone: a quota only holds back new servers.

`record_deleted` adds a deleted Workspace's month-to-date spend to each budgeted
quota's status.deleted, keyed by its uid, so a repeated finalizer records it once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from agentspaces.api.enums import ConditionType as T
from agentspaces.api.enums import Phase, Reason
from agentspaces.api.quota_model import WorkspaceQuotaSpec
from agentspaces.kube import KubeError
from agentspaces.reconcile import quota, vm_cost
from agentspaces.reconcile.outcome import Outcome
from agentspaces.reconcile.scope import Scope
from agentspaces_vm.contracts import format_time

log = logging.getLogger(__name__)
LIMIT_REACHED = "LimitReached"
WITHIN_LIMITS = "WithinLimits"


async def refused(scope: Scope) -> Outcome | None:
    """None when every quota lets the start through (it is then counted); else the
    wait, recorded."""
    ns, uid, kube = scope.ref.namespace, scope.ref.uid, scope.runtime.kube
    gate = scope.runtime.quota_gate
    async with gate.lock(ns):
        try:
            quotas = _parsed(await kube.list_workspace_quotas(ns))
            if not quotas:
                return None
            counts = any(s.max_running is not None or s.monthly_budget is not None
                         for _, s, _ in quotas)
            listed = await kube.list_workspaces(ns) if counts else []
        except KubeError as err:  # fail closed: the limits cannot be checked
            return _wait(scope, quota.Refusal(
                Reason.QUOTA_EXCEEDED, f"cannot list WorkspaceQuotas or Workspaces in "
                                       f"{ns} to check the quotas: {err.status}"))
        workspaces = [quota.WorkspaceUse.of(raw) for raw in listed]
        reserved = gate.reserved(ns, (w.uid for w in workspaces if not w.has_server))
        first: quota.Refusal | None = None
        for name, spec, raw_status in quotas:
            use, refusal = quota.check(name, spec, workspaces, raw_status.get("deleted"),
                                       uid=uid, server_type=scope.spec.server.type,
                                       reserved=reserved, now=scope.now())
            await _publish(scope, name, spec, raw_status, use)
            first = first or refusal
        if first is not None:
            return _wait(scope, first)
        gate.reserve(ns, uid)
    return None


async def record_deleted(scope: Scope) -> Outcome | None:
    """Before a deleted Workspace's finalizer is released: its spend this month into
    each budgeted quota's ledger. None when done; else retried at the poll."""
    ns, uid, now = scope.ref.namespace, scope.ref.uid, scope.now()
    scope.runtime.quota_gate.release(ns, uid)
    vm_cost.settle(scope.status, now)  # the run of the server just deleted ends now
    month = vm_cost.month_key(now)
    own = quota.WorkspaceUse(uid=uid, name=scope.ref.name, has_server=False,
                             vm_cost=scope.status.vm_cost, tokens=scope.status.usage)
    try:
        quotas = _parsed(await scope.runtime.kube.list_workspace_quotas(ns))
        for name, spec, raw_status in quotas:
            budget = spec.monthly_budget
            if budget is None or uid in ((raw_status.get("deleted") or {}).get(month) or {}):
                continue
            try:
                amount = quota.workspace_spend(budget.currency, own, now)
            except quota.CurrencyMismatch:
                continue  # never counted by this budget (its starts wait instead)
            if amount <= 0:
                continue
            stale = {m: None for m in (raw_status.get("deleted") or {}) if m != month}
            await scope.runtime.kube.patch_workspace_quota_status(ns, name, {"deleted": {
                **stale, month: {uid: _amount(amount)}}})
    except KubeError as err:
        log.warning("cannot record %s/%s's spend in its namespace's quotas: %s",
                    ns, scope.ref.name, err.status)
        return Outcome.after(scope.runtime.settings.poll_interval, "quota ledger")
    return None


def _parsed(items: list[Mapping[str, Any]]
            ) -> list[tuple[str, WorkspaceQuotaSpec, Mapping[str, Any]]]:
    out = []
    for raw in items:
        name = (raw.get("metadata") or {}).get("name", "")
        try:
            spec = WorkspaceQuotaSpec.parse(raw.get("spec"))
        except ValueError as err:  # the CRD's schema keeps these out
            log.warning("ignoring WorkspaceQuota %s: %s", name, err)
            continue
        out.append((name, spec, raw.get("status") or {}))
    return out


async def _publish(scope: Scope, name: str, spec: WorkspaceQuotaSpec,
                   current: Mapping[str, Any], use: quota.Use) -> None:
    """The quota's status: what was counted, written only when it changed."""
    reached = quota.limit_reached(name, spec, use)
    condition: dict[str, Any] = {
        "type": LIMIT_REACHED, "status": "True" if reached else "False",
        "reason": reached.reason if reached else WITHIN_LIMITS,
        "message": reached.message if reached else "below every limit"}
    patch: dict[str, Any] = {"running": use.running, "month": use.month,
                             "spent": None if use.spent is None else quota.text(use.spent)}
    old: Mapping[str, Any] = next(
        (c for c in current.get("conditions") or () if c.get("type") == LIMIT_REACHED),
        {})
    changed = any(current.get(k) != v for k, v in patch.items()) or any(
        old.get(k) != v for k, v in condition.items())
    if not changed:
        return
    flipped = old.get("status") != condition["status"]
    condition["lastTransitionTime"] = (format_time(scope.now()) if flipped
                                       else old.get("lastTransitionTime"))
    patch |= {"checkedAt": format_time(scope.now()), "conditions": [condition]}
    try:
        await scope.runtime.kube.patch_workspace_quota_status(scope.ref.namespace, name, patch)
    except KubeError as err:  # a description only: the decision stands
        log.warning("cannot update WorkspaceQuota %s/%s's status: %s",
                    scope.ref.namespace, name, err.status)


def _wait(scope: Scope, refusal: quota.Refusal) -> Outcome:
    status = scope.status
    message = refusal.message + " (no server is created)"
    if status.reason(T.READY) != refusal.reason:  # one event, not one a poll
        scope.emit("Warning", refusal.reason, message)
    status.condition(T.SERVER_READY, False, refusal.reason, message)
    status.condition(T.READY, False, refusal.reason, message)
    status.phase = Phase.PENDING
    return Outcome.after(scope.runtime.settings.poll_interval, refusal.reason)


def _amount(value: Decimal) -> str:
    return format(value.quantize(vm_cost.CENT_FRACTION).normalize(), "f")
