"""Idle detection and the stop/start lifecycle with real agents on simulated VMs.

Several workspaces run side by side against one operator; each shows one rule:
a working agent outlives the idle timeout, a waiting one stops after it, a runaway
agent stops at the busy cap, lifetime stops even a working agent, a wake annotation
brings an idle-stopped workspace back, and `running` toggles stop and start.
Steady-state agent polling costs zero Hetzner calls.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentspaces.sandbox.vmsim import hook_endpoint
from tests.conftest import Kubectl
from tests.support.stack import (
    VmStack,
    condition,
    vm_stack,
    workspace,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "idle"


@pytest.fixture(scope="module")
def stack(control_plane, kubectl: Kubectl,  # type: ignore[no-untyped-def]
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmStack]:
    # A long inventory interval: any Hetzner call at steady state would be a bug.
    with vm_stack(control_plane, kubectl, tmp_path_factory.mktemp("vms"), CLASS, 3, 18080,
                  storage=True, env={"AGENTSPACES_INVENTORY_INTERVAL": "10m"}) as stack:
        yield stack


def _ws(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any] | None:
    return kubectl.get_json("workspace", name, "-n", ns)


def _ready(kubectl: Kubectl, name: str, ns: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: (w := _ws(kubectl, name, ns)) and
                    condition(w, "Ready").get("status") == "True" and w, timeout,
                    f"{name} Ready")


def _stopped(kubectl: Kubectl, name: str, ns: str, timeout: float) -> dict[str, Any]:
    return wait_for(lambda: (w := _ws(kubectl, name, ns)) and
                    w["status"].get("phase") == "Stopped" and w, timeout, f"{name} Stopped")


def _hook(state: Path, ws: dict[str, Any], event: str, session: str = "s1") -> None:
    url, token = hook_endpoint(state, int(ws["status"]["server"]["id"]))
    body = json.dumps({"hook_event_name": event, "session_id": session, "cwd": "/workspaces",
                       "transcript_path": "/tmp/t.jsonl"}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 204


def test_idle_rules_stop_and_start(stack: VmStack, kubectl: Kubectl, namespace: str) -> None:
    clouds, vms, s3 = stack.clouds, stack.vms, stack.s3
    assert s3 is not None
    state = vms.state_dir
    minute = {"timeout": "1m", "grace": "0s"}
    kubectl.apply(workspace("worker", namespace, CLASS, idle={**minute, "agentBusyCap": "6h"},
                            persistence={"enabled": False}))
    kubectl.apply(workspace("waiter", namespace, CLASS, idle=minute,
                            persistence={"onDelete": "Delete"}))
    kubectl.apply(workspace("runaway", namespace, CLASS,
                            idle={**minute, "agentBusyCap": "1m"},
                            persistence={"enabled": False}))
    kubectl.apply(workspace("mortal", namespace, CLASS, lifetime={"max": "1m"},
                            idle={"timeout": "30m"}, persistence={"enabled": False}))
    ready = {name: _ready(kubectl, name, namespace)
             for name in ("worker", "waiter", "runaway", "mortal")}
    started = time.monotonic()
    _hook(state, ready["worker"], "UserPromptSubmit")
    _hook(state, ready["runaway"], "UserPromptSubmit")
    _hook(state, ready["mortal"], "PreToolUse")
    _hook(state, ready["waiter"], "UserPromptSubmit")
    _hook(state, ready["waiter"], "Stop")
    waiter_dir = vms.workspace_dir(int(ready["waiter"]["status"]["server"]["id"]))
    (waiter_dir / "notes.txt").write_text("written before the idle stop\n")

    # Steady state: agent polls only, no Hetzner calls at all.
    clouds.hetzner.reset_calls()
    wait_for(lambda: (w := _ws(kubectl, "worker", namespace)) and
             w["status"].get("activity", {}).get("agentState") == "working", 20,
             "worker reported as working")
    time.sleep(8)  # ~8 agent polls per workspace
    assert sum(clouds.hetzner.calls.values()) == 0, dict(clouds.hetzner.calls)

    mortal = _stopped(kubectl, "mortal", namespace, 90)
    assert mortal["status"]["stoppedBy"] == "lifetime"
    assert condition(mortal, "Idle")["reason"] == "LifetimeExceeded"

    waiter = _stopped(kubectl, "waiter", namespace, 120)
    assert waiter["status"]["stoppedBy"] == "inactivity"
    assert condition(waiter, "BackupSucceeded")["status"] == "True"
    assert waiter["status"]["urls"]["state"] == "stopped"
    assert "server" not in waiter["status"] and "dns" not in waiter["status"]
    idle_latency = time.monotonic() - started
    print(f"\nidle -> Stopped after {idle_latency:.0f}s with a 1m timeout")

    runaway = _stopped(kubectl, "runaway", namespace, 180)
    assert runaway["status"]["stoppedBy"] == "inactivity"
    assert condition(runaway, "Idle")["reason"] == "AgentBusyCapExceeded"

    # The working agent is still running, well past its 1m idle timeout.
    worker = _ws(kubectl, "worker", namespace)
    assert worker is not None and worker["status"]["phase"] == "Running"
    assert time.monotonic() - started > 90
    assert condition(worker, "Idle")["status"] == "False"
    assert condition(worker, "Idle")["reason"] == "AgentWorking"

    # Stopped by inactivity stays stopped, even though spec.running is true ...
    time.sleep(3)
    assert _ws(kubectl, "waiter", namespace)["status"]["phase"] == "Stopped"  # type: ignore[index]
    # ... until woken; the backup comes back.
    kubectl("annotate", "workspace", "waiter", "-n", namespace,
            "agentspaces.dev/wake=first", "--overwrite")
    waiter = _ready(kubectl, "waiter", namespace, 90)
    assert "stoppedBy" not in waiter["status"]
    assert condition(waiter, "BackupRestored")["reason"] == "Restored"
    restored = vms.workspace_dir(int(waiter["status"]["server"]["id"])) / "notes.txt"
    assert restored.read_text() == "written before the idle stop\n"

    # running: false stops (user), true starts again.
    kubectl("patch", "workspace", "mortal", "-n", namespace, "--type", "merge",
            "-p", '{"spec":{"running":false}}')
    wait_for(lambda: _ws(kubectl, "mortal", namespace)["status"].get("stoppedBy")  # type: ignore[index]
             == "user", 30, "stoppedBy user")
    kubectl("patch", "workspace", "mortal", "-n", namespace, "--type", "merge",
            "-p", '{"spec":{"running":true,"lifetime":{"max":"30m"}}}')
    _ready(kubectl, "mortal", namespace, 90)

    for name in ("worker", "waiter", "runaway", "mortal"):
        kubectl("delete", "workspace", name, "-n", namespace, "--wait=false")
    wait_for(lambda: all(_ws(kubectl, n, namespace) is None
                         for n in ("worker", "waiter", "runaway", "mortal")), 90, "deleted")
    assert clouds.hetzner.servers == {}
    wait_for(lambda: vms.vms == {}, 15, "every simulated VM stopped")
    uid_prefix = f"agentspaces/{namespace}/waiter-"
    assert [k for k in s3.object_keys() if k.startswith(uid_prefix)] == []  # onDelete: Delete
