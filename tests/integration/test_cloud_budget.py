"""The real operator under a tight Hetzner rate limit: workspaces created together wait
for the project's request budget (ServerReady says WaitingForCloudBudget) instead of
drawing 429s, and all of them become Ready."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agentspaces.sandbox.fleet import FleetSimulator
from agentspaces.sandbox.vmsim_ips import LoopbackPool
from tests.conftest import Kubectl
from tests.support.stack import (
    condition,
    install_class,
    running_clouds,
    start_operator,
    workspace,
)

pytestmark = pytest.mark.integration
CLASS = "budget"
COUNT = 10
LIMIT = 24
REFILL = 2.0


def _workspaces(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    doc = kubectl.get_json("workspaces", "-n", namespace)
    return list((doc or {}).get("items") or [])


def test_workspaces_wait_for_the_budget_then_become_ready(  # type: ignore[no-untyped-def]
        control_plane, kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    with running_clouds() as clouds, \
            FleetSimulator(tmp_path, ip_pool=LoopbackPool("127.0.98.10", "127.0.98.60")) \
            as fleet:
        fleet.attach(clouds.hetzner)
        clouds.hetzner.set_rate_limit(LIMIT, REFILL)
        install_class(kubectl, clouds, CLASS, extra={"tls": {"mode": "none",
                                                             "httpPort": 18198}})
        op = start_operator(control_plane.admin_kubeconfig, tmp_path)
        try:
            kubectl.apply("---\n".join(workspace(f"b{i}", namespace, CLASS)
                                       for i in range(COUNT)))
            waited: dict[str, str] = {}
            ready: set[str] = set()
            deadline = time.monotonic() + 180
            while len(ready) < COUNT and time.monotonic() < deadline:
                for ws in _workspaces(kubectl, namespace):
                    name = ws["metadata"]["name"]
                    server = condition(ws, "ServerReady")
                    if server.get("reason") == "WaitingForCloudBudget":
                        waited[name] = server.get("message", "")
                    if condition(ws, "Ready").get("status") == "True":
                        ready.add(name)
                time.sleep(0.3)
            throttled = sum(1 for r in clouds.hetzner.requests if r.status == 429)
            assert len(ready) == COUNT, f"only {sorted(ready)} Ready"
            assert waited, "no workspace waited for the budget"
            # Held back for the reserve, not only while learning the budget at start.
            message = next((m for m in waited.values() if "keep" in m), "")
            assert "waiting for the hetzner API request budget: " in message, waited
            assert not any(clouds.hetzner_token in m for m in waited.values())
            assert throttled <= 2, throttled
            print(f"{COUNT} workspaces Ready, {len(waited)} waited for the budget, "
                  f"{throttled} x 429, {len(clouds.hetzner.requests)} Hetzner requests")
        finally:
            op.stop()
