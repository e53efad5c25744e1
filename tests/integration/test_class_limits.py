"""A Workspace gets only what its class allows, through the real apiserver, the real
operator and the Hetzner emulator: no server for a spec over the class's limits, no
URL for a port that is the VM's own, and no crash loop for user-data Hetzner would
refuse."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from agentspaces.sandbox.hetzner import HetznerEmulator
from agentspaces.vmconfig.layout import VM_LAYOUT
from agentspaces.vmconfig.userdata import USER_DATA_LIMIT, read_write_files
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
LIMITED = "limited"
PORTS = "agent-port-9555"
LIMITS = {"serverTypes": ["cx23", "cpx22"], "idleTimeout": "2h", "lifetime": "12h"}


@pytest.fixture(scope="module")
def clouds() -> Iterator[Clouds]:
    with running_clouds(dead_end_block=19) as c:
        yield c


@pytest.fixture(scope="module")
def operator(control_plane, kubectl: Kubectl, clouds: Clouds,  # type: ignore[no-untyped-def]
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_class(kubectl, clouds, LIMITED, extra={"limits": LIMITS})
    install_class(kubectl, clouds, PORTS, extra={"agent": {"port": 9555}})
    proc = start_operator(control_plane.admin_kubeconfig, tmp_path_factory.mktemp("op"))
    yield proc
    proc.stop()


def _ws(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any] | None:
    return kubectl.get_json("workspace", name, "-n", ns)


def _servers(hetzner: HetznerEmulator, uid: str) -> list[dict[str, Any]]:
    return [s for s in hetzner.servers.values()
            if s["labels"].get("agentspaces.dev/workspace-uid") == uid]


def _wait_condition(kubectl: Kubectl, name: str, ns: str, type_: str, reason: str,
                    timeout: float = 60) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        ws = _ws(kubectl, name, ns)
        return ws if condition(ws, type_).get("reason") == reason else None
    return wait_for(probe, timeout, f"{name}: {type_} reason {reason}")


def _reconciles(operator: OperatorProcess, reason: str) -> int:
    """Reconciles so far that ended waiting on `reason` (one workspace at a time here):
    retried by Kopf, or for a wait longer than the poll interval by the poll timer."""
    text = operator.log()
    return (text.count(f"failed temporarily: {reason}")
            + text.count(f"for the poll timer: {reason}"))


def _delete(kubectl: Kubectl, name: str, ns: str) -> None:
    kubectl("delete", "workspace", name, "-n", ns, "--wait=false")
    wait_for(lambda: _ws(kubectl, name, ns) is None, 60, f"{name} deleted")


@pytest.mark.parametrize(("case", "spec", "expected"), [
    ("big-server", {"server": {"type": "ccx63"}}, "server type ccx63 is not in"),
    ("snapshot-image", {"server": {"image": "31337"}}, "image id 31337 needs the class"),
    ("year-idle", {"idle": {"timeout": "8760h"}},
     "idle.timeout 8760h exceeds the class limit 2h"),
    ("long-lifetime", {"lifetime": {"max": "48h"}},
     "lifetime.max 48h exceeds the class limit 12h"),
])
def test_a_spec_over_the_class_limits_creates_no_server(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str,
        case: str, spec: dict[str, Any], expected: str) -> None:
    clouds.hetzner.reset_calls()
    before = _reconciles(operator, "NotAllowedByClass")
    kubectl.apply(workspace(case, namespace, LIMITED, **spec))
    ws = _wait_condition(kubectl, case, namespace, "Accepted", "NotAllowedByClass")
    accepted = condition(ws, "Accepted")
    assert accepted["status"] == "False"
    assert expected in accepted["message"] and "no server is created" in accepted["message"]
    ready = condition(ws, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NotAllowedByClass")
    assert ws["status"]["phase"] == "Failed"
    # More polls (one a second here) check before any cloud call: not even a lookup.
    wait_for(lambda: _reconciles(operator, "NotAllowedByClass") >= before + 3, 30,
             "three reconciles")
    assert sum(clouds.hetzner.calls.values()) == 0, dict(clouds.hetzner.calls)
    assert _servers(clouds.hetzner, ws["metadata"]["uid"]) == []
    _delete(kubectl, case, namespace)


def test_a_spec_within_the_limits_gets_its_server(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    """The control for the test above: the same class does create servers."""
    kubectl.apply(workspace("small", namespace, LIMITED, server={"type": "cpx22"},
                            idle={"timeout": "90m"}))
    ws = _wait_condition(kubectl, "small", namespace, "ServerReady", "Running")
    assert condition(ws, "Accepted")["status"] == "True"
    servers = _servers(clouds.hetzner, ws["metadata"]["uid"])
    assert [s["server_type"]["name"] for s in servers] == ["cpx22"]
    assert clouds.hetzner.calls["POST /servers"] >= 1
    _delete(kubectl, "small", namespace)


def test_a_tightened_class_keeps_the_running_server_but_never_starts_another(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    kubectl.apply(workspace("tightened", namespace, LIMITED, server={"type": "cpx22"}))
    ws = _wait_condition(kubectl, "tightened", namespace, "ServerReady", "Running")
    uid = ws["metadata"]["uid"]
    try:
        kubectl("patch", "workspaceclass", LIMITED, "--type=merge", "-p",
                '{"spec": {"limits": {"serverTypes": ["cx23"]}}}')
        ws = _wait_condition(kubectl, "tightened", namespace, "Accepted", "NotAllowedByClass")
        assert "kept until it stops" in condition(ws, "Accepted")["message"]
        assert len(_servers(clouds.hetzner, uid)) == 1  # no surprise stop, no data lost

        kubectl("patch", "workspace", "tightened", "-n", namespace, "--type=merge", "-p",
                '{"spec": {"running": false}}')
        wait_for(lambda: (_ws(kubectl, "tightened", namespace) or {}).get("status", {})
                 .get("phase") == "Stopped", 60, "stopped")
        assert _servers(clouds.hetzner, uid) == []
        clouds.hetzner.reset_calls()
        kubectl("patch", "workspace", "tightened", "-n", namespace, "--type=merge", "-p",
                '{"spec": {"running": true}}')
        ws = _wait_condition(kubectl, "tightened", namespace, "Ready", "NotAllowedByClass")
        assert "no server is created" in condition(ws, "Accepted")["message"]
        assert clouds.hetzner.calls["POST /servers"] == 0
        assert _servers(clouds.hetzner, uid) == []
    finally:
        kubectl("patch", "workspaceclass", LIMITED, "--type=merge", "-p",
                yaml.safe_dump({"spec": {"limits": LIMITS}}))
        _delete(kubectl, "tightened", namespace)


def test_the_class_agent_port_is_never_published(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    ports = [{"port": 9555, "visibility": "public"}, {"port": 8080, "visibility": "public"}]
    kubectl.apply(workspace("ports", namespace, PORTS, access={"ports": ports}))
    ws = _wait_condition(kubectl, "ports", namespace, "ServerReady", "Running")
    accepted = condition(ws, "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "ReservedPort")
    assert "9555" in accepted["message"]
    # What the operator hands the agent: agent.json in the server's user-data.
    server = _servers(clouds.hetzner, ws["metadata"]["uid"])[0]
    files = read_write_files(clouds.hetzner.user_data(server["id"]) or "")
    agent_json = yaml.safe_load(files[VM_LAYOUT.agent_json].content)
    assert agent_json["publicPorts"] == [8080]
    assert agent_json["listen"]["api"].endswith(":9555")
    claude_md = files[f"{VM_LAYOUT.claude_seed_dir}/CLAUDE.md"].content.decode()
    assert "Public ports (no password): 8080." in claude_md
    _delete(kubectl, "ports", namespace)


def test_user_data_over_the_limit_is_a_condition_not_a_crash_loop(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    # Within the admission budget (it counts characters), but four UTF-8 bytes each
    # and incompressible: only the rendered size can tell.
    rng = random.Random(18)
    text = "".join(chr(rng.randint(0x10000, 0x10FFFF - 1)) for _ in range(8192))
    text = "".join(c for c in text if not 0xD800 <= ord(c) <= 0xDFFF)
    clouds.hetzner.reset_calls()
    before = _reconciles(operator, "UserDataTooLarge")
    kubectl.apply(workspace("huge", namespace, LIMITED, agent={"instructions": text}))
    ws = _wait_condition(kubectl, "huge", namespace, "ServerReady", "UserDataTooLarge")
    message = condition(ws, "ServerReady")["message"]
    assert f"Hetzner allows {USER_DATA_LIMIT}" in message and "user-data is " in message
    assert condition(ws, "Ready")["reason"] == "UserDataTooLarge"
    assert ws["status"]["phase"] == "Failed"
    # It is retried (every 10 polls, 10 s here), never in a tight loop or a traceback.
    wait_for(lambda: _reconciles(operator, "UserDataTooLarge") >= before + 2, 40,
             "a second attempt")
    assert clouds.hetzner.calls["POST /servers"] == 0
    assert _servers(clouds.hetzner, ws["metadata"]["uid"]) == []
    assert "Traceback" not in operator.log()
    _delete(kubectl, "huge", namespace)
