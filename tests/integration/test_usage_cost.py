"""Token usage and server cost in Workspace status, end to end: the real apiserver, the
operator process, the Hetzner emulator and a simulated VM running the real agent.

Claude Code's transcript lines (tests/unit/golden/claude-transcript.jsonl, written by
the real CLI 2.1.332; test_claude_usage.py runs the CLI itself) land in the VM's
CLAUDE_CONFIG_DIR; the agent sums them, the operator prices them and shows them in
`kubectl get ws -o wide`. The server's price comes from the emulator's GET /pricing,
once, and accrues per started hour while the server exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agentspaces.sandbox import hetzner_catalog
from tests.conftest import Kubectl
from tests.support.stack import VmStack, condition, vm_stack, workspace
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "usage"
GOLDEN = Path(__file__).parents[1] / "unit" / "golden" / "claude-transcript.jsonl"


@pytest.fixture(scope="module")
def stack(control_plane, kubectl: Kubectl,  # type: ignore[no-untyped-def]
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmStack]:
    with vm_stack(control_plane, kubectl, tmp_path_factory.mktemp("vms"), CLASS, 37, 18097,
                  env={"AGENTSPACES_INVENTORY_INTERVAL": "10m"}) as stack:
        # A price for a model only this class uses (a gateway's, say).
        kubectl("patch", "workspaceclass", CLASS, "--type", "merge", "-p", json.dumps(
            {"spec": {"pricing": {"models": [{"model": "team-gateway-model", "input": 1,
                                              "output": 2}]}}}))
        yield stack


def _ws(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any] | None:
    return kubectl.get_json("workspace", name, "-n", ns)


def _cx23_fsn1_hourly() -> tuple[Decimal, Decimal]:
    """The emulator's net and gross hourly price of cx23 in fsn1 plus a primary IPv4."""
    pricing = hetzner_catalog.pricing_dict()
    server = next(t for t in pricing["server_types"] if t["name"] == "cx23")
    ipv4 = next(e for e in pricing["primary_ips"] if e["type"] == "ipv4")
    total = [Decimal(0), Decimal(0)]
    for prices in (server["prices"], ipv4["prices"]):
        fsn1 = next(p for p in prices if p["location"] == "fsn1")["price_hourly"]
        total[0] += Decimal(fsn1["net"])
        total[1] += Decimal(fsn1["gross"])
    return total[0], total[1]


def _wide(kubectl: Kubectl, name: str, ns: str) -> dict[str, str]:
    header, row = kubectl("get", "ws", name, "-n", ns, "-o", "wide").splitlines()[:2]
    return dict(zip(header.split(), row.split(), strict=False))


def test_usage_and_cost_in_status_and_the_wide_columns(stack: VmStack, kubectl: Kubectl,
                                                        namespace: str) -> None:
    hetzner = stack.clouds.hetzner
    kubectl.apply(workspace("spender", namespace, CLASS, persistence={"enabled": False}))
    ready = wait_for(lambda: (w := _ws(kubectl, "spender", namespace)) and
                     condition(w, "Ready").get("status") == "True" and w, 90, "Ready")
    server = ready["status"]["server"]
    cost = ready["status"]["vmCost"]
    net, gross = _cx23_fsn1_hourly()
    assert cost["currency"] == "EUR"
    assert (cost["serverType"], cost["location"]) == ("cx23", "fsn1")
    assert Decimal(cost["hourly"]["net"]) == net
    assert Decimal(cost["hourly"]["gross"]) == gross
    assert (cost["serverId"], cost["runStartedAt"]) == (server["id"], server["createdAt"])
    assert cost["billedHours"] == 1
    assert Decimal(cost["accrued"]["net"]) == net.quantize(Decimal("0.0001"))
    assert cost["summary"] == f"{cost['accrued']['net']} EUR net"
    assert hetzner.calls["GET /pricing"] == 1

    # /metrics before the transcript (other modules' workspaces may count as well).
    operator = stack.operator
    kinds = ("input", "output", "cache_read", "cache_write")
    tokens_before = {k: operator.metric("agentspaces_claude_tokens_total", kind=k)
                     for k in kinds}
    agents_running = operator.metric("agentspaces_agents")
    assert agents_running >= 1

    # Transcript lines as the real CLI writes them, and a turn of a class-priced model.
    projects = stack.vms.workspace_dir(int(server["id"])) / ".claude" / "projects"
    transcript = projects / "-workspaces-app" / "0c0ffee0-0000-4000-8000-000000000001.jsonl"
    transcript.parent.mkdir(parents=True)
    gateway = json.loads(GOLDEN.read_text().splitlines()[1])
    gateway["message"].update(id="msg_gateway", model="team-gateway-model",
                              usage={"input_tokens": 1_000_000, "output_tokens": 500_000})
    gateway["timestamp"] = "2026-12-02T09:00:00.000Z"  # older: not the last model
    transcript.write_text(GOLDEN.read_text() + json.dumps(gateway) + "\n")

    hetzner.reset_calls()
    usage = wait_for(lambda: (u := ((_ws(kubectl, "spender", namespace) or {})
                                    .get("status", {}).get("usage") or {}))
                     .get("sessions") and u, 30, "status.usage with the session")
    # The golden answers (each once, the fork's copy not again): 1500 in, 52 out, 4500
    # cache reads, 3000 cache writes = 0.02594 USD at the default prices; the gateway
    # model 1.5M tokens = 2 USD at the class's.
    assert usage["sessions"] == 1
    assert usage["lastModel"] == "claude-opus-5-5"
    assert (usage["inputTokens"], usage["outputTokens"], usage["cacheReadTokens"],
            usage["cacheWriteTokens"], usage["totalTokens"]) == \
        (1_001_500, 500_052, 4500, 3000, 1_509_052)
    assert (usage["estimatedCost"], usage["currency"]) == ("2.02594", "USD")
    assert usage["unpricedModels"] == []
    assert {m["model"]: m["estimatedCost"] for m in usage["models"]} == \
        {"claude-opus-5-5": "0.02594", "team-gateway-model": "2"}
    # /metrics: the token sums' growth, counted once (it follows the status write).
    def grown() -> dict[str, float]:
        return {k: operator.metric("agentspaces_claude_tokens_total", kind=k)
                - tokens_before[k] for k in kinds}

    wait_for(lambda: grown()["input"] > 0, 5, "the token counters")
    assert grown() == \
        {"input": 1_001_500, "output": 500_052, "cache_read": 4500, "cache_write": 3000}

    wide = _wide(kubectl, "spender", namespace)
    assert wide["TOKENS"] == "1509052"
    assert wide["TOKEN-USD"] == "2.02594"
    assert wide["VM-COST"] == cost["accrued"]["net"]  # "<net> EUR net": split on spaces
    print("\n" + kubectl("get", "ws", "spender", "-n", namespace, "-o", "wide"))
    assert sum(hetzner.calls.values()) == 0, dict(hetzner.calls)  # polls only

    # Stopped: the run is folded, nothing accrues, the usage stays for the record.
    kubectl("patch", "workspace", "spender", "-n", namespace, "--type", "merge",
            "-p", '{"spec":{"running":false}}')
    stopped = wait_for(lambda: (w := _ws(kubectl, "spender", namespace)) and
                       w["status"].get("phase") == "Stopped" and w, 60, "Stopped")
    cost = stopped["status"]["vmCost"]
    assert "serverId" not in cost and cost["previousHours"] == 1
    assert Decimal(cost["previous"]["net"]) == net
    assert stopped["status"]["usage"]["totalTokens"] == 1_509_052
    wait_for(lambda: operator.metric("agentspaces_agents") == agents_running - 1, 5,
             "the stopped workspace's agent no longer counted")
    assert operator.metric("agentspaces_claude_tokens_total") == \
        sum(tokens_before.values()) + 1_509_052
