"""WorkspaceQuota through the real apiserver, the operator process and the Hetzner
emulator: maxRunning holds the next start (QuotaExceeded, one Warning event, no server
created) until another stops; a monthly budget holds it (BudgetExceeded) and still
counts a deleted workspace's spend; a server type the quota does not list is refused;
`kubectl get workspacequota` shows what was counted; the CRD refuses an empty quota."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import yaml

from tests.conftest import Kubectl
from tests.support.operator import OperatorProcess
from tests.support.stack import (
    Clouds,
    condition,
    install_class,
    running_clouds,
    start_operator,
    workspace,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "quota"


@pytest.fixture(scope="module")
def clouds() -> Iterator[Clouds]:
    with running_clouds(dead_end_block=61) as c:  # no agent: polls fail fast
        yield c


@pytest.fixture(scope="module")
def operator(control_plane, kubectl: Kubectl, clouds: Clouds,  # type: ignore[no-untyped-def]
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_class(kubectl, clouds, CLASS)
    proc = start_operator(control_plane.admin_kubeconfig, tmp_path_factory.mktemp("op"))
    yield proc
    proc.stop()


def _quota(kubectl: Kubectl, ns: str, **spec: Any) -> None:
    kubectl.apply(yaml.safe_dump({"apiVersion": "agentspaces.dev/v1alpha1",
                                  "kind": "WorkspaceQuota",
                                  "metadata": {"name": "team", "namespace": ns},
                                  "spec": spec}))


def _ws(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any] | None:
    return kubectl.get_json("workspace", name, "-n", ns)


def _quota_status(kubectl: Kubectl, ns: str) -> dict[str, Any]:
    return ((kubectl.get_json("workspacequota", "team", "-n", ns) or {}).get("status")
            or {})


def _ready_reason(kubectl: Kubectl, name: str, ns: str, reason: str) -> dict[str, Any]:
    return wait_for(lambda: (w := _ws(kubectl, name, ns))
                    and condition(w, "Ready").get("reason") == reason and w,
                    30, f"{name}: {reason}")


def _server_running(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    return wait_for(lambda: (w := _ws(kubectl, name, ns))
                    and condition(w, "ServerReady").get("reason") == "Running" and w,
                    30, f"{name}'s server")


def _warnings(kubectl: Kubectl, name: str, ns: str, reason: str) -> list[dict[str, Any]]:
    doc = kubectl.get_json("events", "-n", ns, "--field-selector",
                           f"involvedObject.name={name}") or {}
    return [e for e in doc.get("items", []) if e.get("reason") == reason]


def _delete_all(kubectl: Kubectl, ns: str, *names: str) -> None:
    for name in names:
        kubectl("delete", "workspace", name, "-n", ns, "--wait=false", "--ignore-not-found")
    wait_for(lambda: all(_ws(kubectl, n, ns) is None for n in names), 60, "deleted")


def test_max_running_holds_the_next_start_until_one_stops(
        kubectl: Kubectl, clouds: Clouds, operator: OperatorProcess, namespace: str) -> None:
    ns = namespace
    _quota(kubectl, ns, maxRunning=1)
    kubectl.apply(workspace("first", ns, CLASS))
    try:
        _server_running(kubectl, "first", ns)
        clouds.hetzner.reset_calls()
        kubectl.apply(workspace("second", ns, CLASS))
        ws = _ready_reason(kubectl, "second", ns, "QuotaExceeded")
        ready = condition(ws, "Ready")
        assert ready["status"] == "False"
        assert ready["message"] == (
            "WorkspaceQuota team allows 1 running workspaces; 1 have a server (first); this "
            "start waits until one stops (no server is created)")
        assert condition(ws, "ServerReady")["reason"] == "QuotaExceeded"
        assert ws["status"]["phase"] == "Pending"
        before = operator.log().count("failed temporarily: QuotaExceeded")
        wait_for(lambda: operator.log().count("failed temporarily: QuotaExceeded")
                 >= before + 2, 30, "two more polls that wait")
        warnings = wait_for(lambda: _warnings(kubectl, "second", ns, "QuotaExceeded"), 10,
                            "the Warning event")
        assert len(warnings) == 1 and (warnings[0].get("count") or 1) == 1
        assert clouds.hetzner.calls["POST /servers"] == 0, dict(clouds.hetzner.calls)

        quota = _quota_status(kubectl, ns)
        assert quota["running"] == 1
        reached = quota["conditions"][0]
        assert (reached["type"], reached["status"], reached["reason"]) == (
            "LimitReached", "True", "QuotaExceeded")
        table = kubectl("get", "workspacequota", "-n", ns).splitlines()
        assert table[0].split() == ["NAME", "RUNNING", "MAX", "SPENT", "BUDGET", "CURRENCY",
                                    "LIMIT", "AGE"]
        # No budget: Spent, Budget and Currency are empty.
        assert table[1].split()[:4] == ["team", "1", "1", "QuotaExceeded"]

        # The first one stops (no agent here to save its work first): the next poll
        # starts the second.
        kubectl("annotate", "workspace", "first", "-n", ns, "agentspaces.dev/skip-backup=true")
        kubectl("patch", "workspace", "first", "-n", ns, "--type=merge", "-p",
                json.dumps({"spec": {"running": False}}))
        _server_running(kubectl, "second", ns)
        assert clouds.hetzner.calls["POST /servers"] == 1
        assert _quota_status(kubectl, ns)["running"] == 0  # counted at the second's start
    finally:
        _delete_all(kubectl, ns, "first", "second")


def test_a_budget_holds_the_next_start_and_counts_a_deleted_workspace(
        kubectl: Kubectl, clouds: Clouds, operator: OperatorProcess, namespace: str) -> None:
    ns = namespace
    # Less than one started hour of any server: the first start spends it all.
    _quota(kubectl, ns, monthlyBudget={"amount": "0.0001", "currency": "EUR"})
    kubectl.apply(workspace("spender", ns, CLASS))
    try:
        first = wait_for(lambda: (w := _ws(kubectl, "spender", ns))
                         and ((w.get("status") or {}).get("vmCost") or {}).get("accrued")
                         and w, 30, "the first server's cost")
        hour = first["status"]["vmCost"]["hourly"]["net"]
        clouds.hetzner.reset_calls()
        kubectl.apply(workspace("next", ns, CLASS))
        ws = _ready_reason(kubectl, "next", ns, "BudgetExceeded")
        message = condition(ws, "Ready")["message"]
        assert message.startswith("WorkspaceQuota team's monthly budget is 0.0001 EUR; ")
        assert "this start waits until the budget is raised or the month ends" in message
        assert clouds.hetzner.calls["POST /servers"] == 0

        # Deleted, its spend stays in the quota's record for the month.
        uid = first["metadata"]["uid"]
        kubectl("delete", "workspace", "spender", "-n", ns, "--wait=false")
        wait_for(lambda: _ws(kubectl, "spender", ns) is None, 60, "deleted")
        (month, spent), = _quota_status(kubectl, ns)["deleted"].items()
        assert month == datetime.now(UTC).strftime("%Y-%m")
        # It ran for seconds: one started hour.
        assert spent == {uid: str(Decimal(hour).quantize(Decimal("0.0001")).normalize())}
        before = operator.log().count("failed temporarily: BudgetExceeded")
        wait_for(lambda: operator.log().count("failed temporarily: BudgetExceeded")
                 >= before + 2, 30, "still waiting after the delete")
        assert condition(_ws(kubectl, "next", ns), "Ready")["reason"] == "BudgetExceeded"
        assert clouds.hetzner.calls["POST /servers"] == 0

        # A raised budget lets it start.
        _quota(kubectl, ns, monthlyBudget={"amount": "100", "currency": "EUR"})
        _server_running(kubectl, "next", ns)
    finally:
        _delete_all(kubectl, ns, "spender", "next")


def test_a_server_type_the_quota_does_not_list_is_refused(
        kubectl: Kubectl, clouds: Clouds, operator: OperatorProcess, namespace: str) -> None:
    ns = namespace
    _quota(kubectl, ns, serverTypes=["cax11", "cpx22"])
    kubectl.apply(workspace("big", ns, CLASS))
    try:
        ws = _ready_reason(kubectl, "big", ns, "QuotaExceeded")
        assert condition(ws, "Ready")["message"] == (
            "WorkspaceQuota team does not allow server type cx23 (serverTypes: cax11, "
            "cpx22) (no server is created)")
    finally:
        _delete_all(kubectl, ns, "big")


def test_the_crd_refuses_a_quota_without_limits(kubectl: Kubectl, namespace: str) -> None:
    manifest = yaml.safe_dump({"apiVersion": "agentspaces.dev/v1alpha1",
                               "kind": "WorkspaceQuota",
                               "metadata": {"name": "empty", "namespace": namespace},
                               "spec": {}})
    result = kubectl.plane.kubectl_run("apply", "--dry-run=server", "-f", "-",
                                       kubeconfig=kubectl.kubeconfig, input=manifest,
                                       check=False)
    assert result.returncode != 0
    assert "a WorkspaceQuota sets maxRunning, serverTypes or monthlyBudget" in result.stderr
