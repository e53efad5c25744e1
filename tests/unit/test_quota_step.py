"""WorkspaceQuota in the reconcile (fakes): a start at a limit waits before any cloud
call with one Warning event, the quota's status says what was counted, running
workspaces' polls list nothing, a start let through is counted until its server shows,
and a delete records the workspace's spend in the quota once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from agentspaces.api.enums import ConditionType as T
from agentspaces.api.enums import Phase, Reason
from agentspaces.kube import KubeError
from agentspaces.quota_gate import QuotaGate
from agentspaces.reconcile import workspace
from tests.support.scope_builder import SETTINGS, ScopeBuilder


def _quota(b: ScopeBuilder, name: str = "team", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": name, "namespace": b.namespace},
                            "spec": spec}
    b.kube.quotas[(b.namespace, name)] = body
    return body


def _other(b: ScopeBuilder, name: str, server: bool = True, **status: Any) -> None:
    b.kube.workspaces[(b.namespace, name)] = {
        "metadata": {"name": name, "namespace": b.namespace, "uid": f"uid-{name}"},
        "status": ({"server": {"id": 99}} if server else {}) | status}


def _condition(b: ScopeBuilder, type_: str) -> dict[str, Any]:
    return next(c for c in b.status["conditions"] if c["type"] == type_)


async def test_without_a_quota_one_list_and_the_server_is_created() -> None:
    b = ScopeBuilder()
    await b.reconcile()
    assert "create" in b.servers.calls.methods()
    assert b.kube.calls.methods().count("list_workspace_quotas") == 1
    assert "list_workspaces" not in b.kube.calls.methods()


async def test_max_running_holds_the_start_until_a_server_goes() -> None:
    b = ScopeBuilder()
    quota = _quota(b, maxRunning=1)
    _other(b, "busy")
    for _ in range(3):
        outcome = await b.reconcile()
        assert (outcome.requeue, outcome.message) == (SETTINGS.poll_interval,
                                                      Reason.QUOTA_EXCEEDED)
    assert b.servers.calls == [] and b.dns.calls == []  # no cloud call at all
    ready = _condition(b, T.READY)
    assert (ready["status"], ready["reason"]) == ("False", Reason.QUOTA_EXCEEDED)
    assert ready["message"] == ("WorkspaceQuota team allows 1 running workspaces; 1 have a "
                                "server (busy); this start waits until one stops (no server "
                                "is created)")
    assert _condition(b, T.SERVER_READY)["reason"] == Reason.QUOTA_EXCEEDED
    assert b.status["phase"] == Phase.PENDING
    assert [(e.type, e.reason) for e in b.events] == [("Warning", Reason.QUOTA_EXCEEDED)]
    status = quota["status"]
    assert (status["running"], status["conditions"][0]["reason"]) == (1, Reason.QUOTA_EXCEEDED)
    writes = b.kube.calls.methods().count("patch_workspace_quota_status")
    assert writes == 1  # unchanged counts are not written again

    _other(b, "busy", server=False)  # stopped: the next poll starts this one
    await b.reconcile()
    assert "create" in b.servers.calls.methods()
    assert quota["status"]["conditions"][0]["reason"] == "WithinLimits"

    b.kube.calls.clear()  # the polls of the running workspace list nothing
    for _ in range(3):
        b.clock.advance(SETTINGS.boot_poll)
        await b.reconcile()
    assert not {"list_workspace_quotas", "list_workspaces"} & set(b.kube.calls.methods())


async def test_a_disallowed_server_type_and_an_unlistable_namespace_wait() -> None:
    b = ScopeBuilder()
    _quota(b, serverTypes=["cax11"])
    await b.reconcile()
    assert _condition(b, T.READY)["message"].startswith(
        "WorkspaceQuota team does not allow server type cx23 (serverTypes: cax11)")
    assert "list_workspaces" not in b.kube.calls.methods()  # types need no count
    assert b.servers.calls == []

    b = ScopeBuilder()

    async def forbidden(namespace: str) -> list[Any]:
        raise KubeError(403, "Forbidden")

    b.kube.list_workspace_quotas = forbidden  # type: ignore[method-assign]
    await b.reconcile()
    assert "cannot list WorkspaceQuotas" in _condition(b, T.READY)["message"]
    assert b.servers.calls == []


async def test_a_budget_counts_stopped_and_deleted_workspaces_once() -> None:
    b = ScopeBuilder()
    now = b.clock()
    month = now.strftime("%Y-%m")
    quota = _quota(b, monthlyBudget={"amount": "1", "currency": "EUR"})
    quota["status"] = {"deleted": {month: {"uid-gone": "0.6"}}}
    _other(b, "stopped", server=False, vmCost={
        "currency": "EUR", "hourly": {"net": "0.01"}, "monthly": {"net": "5"},
        "month": month, "monthPrevious": {"net": "0.3"}})
    await b.reconcile()
    assert "create" in b.servers.calls.methods()  # 0.90 of 1
    assert quota["status"]["spent"] == "0.90"

    other = ScopeBuilder(name="second")
    other.kube, other.runtime = b.kube, b.runtime
    quota["status"]["deleted"][month]["uid-gone"] = "0.7"
    other.kube.workspaces[(other.namespace, "second")] = other.body
    await other.reconcile()
    assert _condition(other, T.READY)["reason"] == Reason.BUDGET_EXCEEDED
    assert "1 EUR; 1.00 EUR spent in" in _condition(other, T.READY)["message"]


async def test_a_delete_records_its_spend_once_and_drops_past_months() -> None:
    b = ScopeBuilder()
    quota = _quota(b, monthlyBudget={"amount": "100", "currency": "EUR"})
    quota["status"] = {"deleted": {"2000-01": {"uid-old": "9"}}}
    b.with_status({"vmCost": {
        "currency": "EUR", "hourly": {"net": "0.01", "gross": "0.01"},
        "monthly": {"net": "5", "gross": "5"}, "serverId": 5,
        "runStartedAt": (b.clock() - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")}})
    for _ in range(2):  # a finalizer run twice (a restart) records it once
        visit = b.visit()
        await workspace.finalize(visit)
        b.save(visit)
    month = b.clock().strftime("%Y-%m")
    assert quota["status"]["deleted"] == {month: {b.uid: "0.03"}}
    assert b.kube.calls.methods().count("patch_workspace_quota_status") == 1


async def test_the_gate_counts_a_start_until_its_server_shows() -> None:
    now = [0.0]
    gate = QuotaGate(lambda: now[0], ttl=60)
    gate.reserve("ns", "a")
    gate.reserve("ns", "b")
    assert gate.reserved("ns", waiting=["a", "b"]) == {"a", "b"}
    assert gate.reserved("ns", waiting=["b"]) == {"b"}  # a's server shows (or a is gone)
    now[0] = 61
    assert gate.reserved("ns", waiting=["b"]) == set()  # a start that never created
    assert gate.reserved("other", waiting=[]) == set()


async def test_a_start_let_through_holds_the_last_slot_before_its_server_is_recorded() -> None:
    b = ScopeBuilder()
    _quota(b, maxRunning=1)
    visit = b.visit()
    await workspace.reconcile(visit)  # created; its status not written yet
    assert "create" in b.servers.calls.methods()
    second = ScopeBuilder(name="second")
    second.kube, second.runtime = b.kube, b.runtime
    b.kube.workspaces[(b.namespace, "second")] = second.body
    await second.reconcile()
    assert _condition(second, T.READY)["reason"] == Reason.QUOTA_EXCEEDED
    assert "1 have a server (demo)" in _condition(second, T.READY)["message"]
