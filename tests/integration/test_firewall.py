"""The class's Hetzner Cloud Firewall, through the real apiserver, the real operator
process and the Hetzner emulator: the agent port admits only the operator's addresses.

The attack: anyone on the internet opens connections to the agent port and holds its
slots. With `agent.sourceRanges` set, the port is closed to everyone but the operator.
The simulated VMs cannot really be filtered, so the emulator reports which servers each
firewall applies to, and the tests check that and the rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcloud
import pytest
from hcloud.firewalls import FirewallRule

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
CLASS = "walled"
OTHER_CLASS = "open"
RANGES = ["198.51.100.7/32", "2001:db8:42::/64"]
ANYWHERE = ["0.0.0.0/0", "::/0"]


@pytest.fixture(scope="module")
def clouds() -> Iterator[Clouds]:
    with running_clouds(dead_end_block=11) as c:
        yield c


@pytest.fixture(scope="module")
def operator(control_plane, kubectl: Kubectl, clouds: Clouds,  # type: ignore[no-untyped-def]
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_class(kubectl, clouds, CLASS, extra={"agent": {"port": 9443,
                                                           "sourceRanges": RANGES}})
    install_class(kubectl, clouds, OTHER_CLASS)
    proc = start_operator(control_plane.admin_kubeconfig, tmp_path_factory.mktemp("op"))
    yield proc
    proc.stop()


def _ws(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any] | None:
    return kubectl.get_json("workspace", name, "-n", ns)


def _ready(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    return wait_for(lambda: (w := _ws(kubectl, name, ns)) and
                    condition(w, "ServerReady").get("status") == "True" and w,
                    60, f"{name} ServerReady=True")


def _class_firewalls(clouds: Clouds, class_name: str) -> list[dict[str, Any]]:
    return [f for f in clouds.hetzner.firewalls.values()
            if f["labels"].get("agentspaces.dev/class") == class_name]


def _inbound(firewall: dict[str, Any]) -> set[tuple[str, str | None, tuple[str, ...]]]:
    return {(r["protocol"], r["port"], tuple(sorted(r["source_ips"])))
            for r in firewall["rules"] if r["direction"] == "in"}


def _set_ranges(kubectl: Kubectl, ranges: list[str] | None) -> None:
    kubectl("patch", "workspaceclass", CLASS, "--type=merge", "-p",
            json.dumps({"spec": {"agent": {"sourceRanges": ranges}}}))


def test_source_ranges_must_be_cidrs(operator: OperatorProcess, kubectl: Kubectl) -> None:
    for bad in ("198.51.100.7", "198.51.100.7/24", "not-an-address"):
        code, _, err = kubectl.run("patch", "workspaceclass", CLASS, "--type=merge", "-p",
                                   json.dumps({"spec": {"agent": {"sourceRanges": [bad]}}}))
        assert code != 0 and "must be a CIDR with no host bits set" in err, bad


def test_agent_port_only_from_the_operator(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str,
        control_plane, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clouds.hetzner.reset_calls()
    kubectl.apply(workspace("walled", namespace, CLASS))
    ws = _ready(kubectl, "walled", namespace)
    server_id = ws["status"]["server"]["id"]
    [firewall] = _class_firewalls(clouds, CLASS)
    assert firewall["name"] == f"agentspaces-{CLASS}"
    assert firewall["labels"]["agentspaces.dev/managed-by"] == "agentspaces"
    assert _inbound(firewall) == {
        ("tcp", "9443", tuple(sorted(RANGES))),  # the agent: the operator only
        *{("tcp", str(p), tuple(sorted(ANYWHERE))) for p in (80, 443)},
        ("udp", "443", tuple(sorted(ANYWHERE))),
        ("tcp", "22", tuple(sorted(ANYWHERE))),
        ("icmp", None, tuple(sorted(ANYWHERE))),
    }
    # Applied by label selector: the server carries the class label from its create.
    assert clouds.hetzner.server(server_id)["labels"]["agentspaces.dev/class"] == CLASS
    assert clouds.hetzner.firewall_servers(firewall["id"]) == {server_id}
    assert condition(ws, "FirewallReady")["status"] == "True"
    calls = clouds.hetzner.calls
    print(f"\nHetzner firewall calls for the first workspace of a class: "
          f"{ {k: v for k, v in calls.items() if 'firewall' in k} }")
    assert calls["POST /firewalls"] == 1 and calls["GET /firewalls"] == 1

    # A second workspace of the class costs no firewall call and is covered at once;
    # nor do the polls of either (several inventory intervals pass here).
    clouds.hetzner.reset_calls()
    kubectl.apply(workspace("walled2", namespace, CLASS))
    second = _ready(kubectl, "walled2", namespace)["status"]["server"]["id"]
    assert clouds.hetzner.firewall_servers(firewall["id"]) == {server_id, second}
    wait_for(lambda: clouds.hetzner.calls["GET /servers"] >= 3, 30, "three inventories")
    assert not [k for k in clouds.hetzner.calls if "firewall" in k]
    # A workspace of a class without the setting is not firewalled.
    kubectl.apply(workspace("open", namespace, OTHER_CLASS))
    open_server = _ready(kubectl, "open", namespace)["status"]["server"]["id"]
    assert clouds.hetzner.server(open_server)["public_net"]["firewalls"] == []

    # The operator dies mid-create of the firewall (SIGKILL while the create answer is
    # held); its successor adopts the firewall instead of making a second one.
    _set_ranges(kubectl, None)
    wait_for(lambda: not _class_firewalls(clouds, CLASS), 30, "firewall removed")
    operator.stop()
    try:
        crashing = start_operator(control_plane.admin_kubeconfig, tmp_path, "crashing")
        clouds.hetzner.faults.hold_response("POST /firewalls", 30)
        _set_ranges(kubectl, RANGES)
        wait_for(lambda: _class_firewalls(clouds, CLASS), 30, "firewall created")
        crashing.kill()  # before the create answer (and the firewall id) arrived
        clouds.hetzner.faults.clear()
    finally:
        operator.start()
    wait_for(lambda: condition(_ws(kubectl, "walled", namespace), "FirewallReady")
             .get("message", "").endswith(", ".join(sorted(RANGES))), 30,
             "FirewallReady after the restart")
    [again] = _class_firewalls(clouds, CLASS)
    assert clouds.hetzner.firewall_servers(again["id"]) == {server_id, second}

    # Deleted behind the operator's back: the server inventory shows the servers without
    # it, and it is made again.
    client = hcloud.Client(token=clouds.hetzner_token, api_endpoint=clouds.hetzner.url)
    bound = client.firewalls.get_by_id(again["id"])
    client.firewalls.remove_from_resources(bound, bound.applied_to)
    client.firewalls.delete(bound)
    wait_for(lambda: (f := _class_firewalls(clouds, CLASS)) and
             clouds.hetzner.firewall_servers(f[0]["id"]) == {server_id, second}, 30,
             "firewall made again")
    [again] = _class_firewalls(clouds, CLASS)

    # Changed ranges reach the rules of the same firewall at the next poll.
    _set_ranges(kubectl, ["203.0.113.0/24"])
    wait_for(lambda: ("tcp", "9443", ("203.0.113.0/24",)) in _inbound(
        clouds.hetzner.firewalls.get(again["id"], {"rules": []})), 30, "rules updated")
    assert [f["id"] for f in _class_firewalls(clouds, CLASS)] == [again["id"]]

    # Removing the setting removes the firewall (detached first: it is in use).
    _set_ranges(kubectl, None)
    wait_for(lambda: not _class_firewalls(clouds, CLASS), 30, "firewall removed")
    ws = wait_for(lambda: (w := _ws(kubectl, "walled", namespace)) and
                  condition(w, "FirewallReady").get("reason") == "NotConfigured" and w,
                  30, "FirewallReady=NotConfigured")
    assert "open to the internet" in condition(ws, "FirewallReady")["message"]
    kubectl("delete", "workspace", "walled", "walled2", "open", "-n", namespace,
            "--wait=false")
    wait_for(lambda: all(_ws(kubectl, n, namespace) is None
                         for n in ("walled", "walled2", "open")), 60, "deleted")


def test_firewall_of_a_deleted_class_is_swept_when_unused(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    # A firewall left by a class that is gone, and one another project user made at a
    # name like ours without our labels: only ours is removed, the foreign one stays.
    client = hcloud.Client(token=clouds.hetzner_token, api_endpoint=clouds.hetzner.url)
    rule = FirewallRule(direction="in", protocol="tcp", port="9443", source_ips=RANGES)
    gone = client.firewalls.create("agentspaces-gone", rules=[rule], labels={
        "agentspaces.dev/managed-by": "agentspaces", "agentspaces.dev/class": "gone"}).firewall
    foreign = client.firewalls.create("agentspaces-foreign", rules=[rule]).firewall
    _set_ranges(kubectl, RANGES)
    kubectl.apply(workspace("sweeper", namespace, CLASS))
    _ready(kubectl, "sweeper", namespace)
    wait_for(lambda: gone.id not in clouds.hetzner.firewalls, 30, "orphan swept")
    assert foreign.id in clouds.hetzner.firewalls
    kubectl("delete", "workspace", "sweeper", "-n", namespace, "--wait=false")
    wait_for(lambda: _ws(kubectl, "sweeper", namespace) is None, 60, "deleted")


def test_a_foreign_firewall_at_our_name_blocks_new_servers(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    client = hcloud.Client(token=clouds.hetzner_token, api_endpoint=clouds.hetzner.url)
    for firewall in _class_firewalls(clouds, CLASS):  # from an earlier test
        client.firewalls.remove_from_resources(
            client.firewalls.get_by_id(firewall["id"]),
            [r for r in client.firewalls.get_by_id(firewall["id"]).applied_to])
        client.firewalls.delete(client.firewalls.get_by_id(firewall["id"]))
    squatter = client.firewalls.create(f"agentspaces-{CLASS}").firewall
    _set_ranges(kubectl, ["192.0.2.0/24"])  # a new digest: checked at once
    kubectl.apply(workspace("blocked", namespace, CLASS))
    ws = wait_for(lambda: (w := _ws(kubectl, "blocked", namespace)) and
                  condition(w, "FirewallReady").get("reason") == "NameTaken" and w,
                  30, "FirewallReady=NameTaken")
    assert (ws["status"].get("server") or {}).get("id") is None  # fails closed
    assert clouds.hetzner.firewalls[squatter.id]["rules"] == []  # untouched
    assert clouds.hetzner.firewalls[squatter.id]["labels"] == {}
    kubectl("delete", "workspace", "blocked", "-n", namespace, "--wait=false")
    wait_for(lambda: _ws(kubectl, "blocked", namespace) is None, 60, "deleted")
    client.firewalls.delete(squatter)
