"""The shipped manifests apply cleanly, and the operator works with exactly the shipped
RBAC: run as the ServiceAccount (a real TokenRequest token), it completes a
create/delete; with any single rule removed, it does not. Its Secret rights can be
confined to namespaces with RoleBindings instead of the cluster-wide binding."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Kubectl
from tests.support.stack import (
    OPERATOR_NAMESPACE,
    ZONE,
    Clouds,
    condition,
    install_class,
    running_clouds,
    start_operator,
    workspace,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "rbac"
SA = "agentspaces-operator"
RBAC = list(yaml.safe_load_all((REPO / "manifests" / "rbac.yaml").read_text()))
ROLES: list[dict[str, Any]] = [d for d in RBAC if d["kind"] in ("ClusterRole", "Role")]
# The rule for tenants' own classes is removed in turn by test_tenant_classes.py, whose
# workspaces use one; those for WorkspaceImages by test_workspace_images.py; the one for
# classes' status (their warm pools) by test_warm_pool.py.
ELSEWHERE = (["namespacedworkspaceclasses"], ["workspaceimages"], ["workspaceimages/status"],
             ["workspaceclasses/status"])
RULES = [(r, i) for r, role in enumerate(ROLES) for i in range(len(role["rules"]))
         if role["rules"][i]["resources"] not in ELSEWHERE]
SECRETS_ROLE = "agentspaces-operator-secrets"
_DEPLOYMENT = next(d for d in yaml.safe_load_all((REPO / "manifests" / "deployment.yaml")
                                                 .read_text()) if d["kind"] == "Deployment")
# Peering as the Deployment runs it, so its RBAC rule is exercised too.
AS_DEPLOYED = {e["name"]: e["value"] for e in
               _DEPLOYMENT["spec"]["template"]["spec"]["containers"][0]["env"]
               if e["name"] == "AGENTSPACES_PEERING"}


@pytest.fixture(scope="module")
def clouds() -> Iterator[Clouds]:
    with running_clouds() as c:
        yield c


@pytest.fixture(scope="module")
def installed(kubectl: Kubectl, clouds: Clouds) -> Kubectl:
    kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    code, out, err = kubectl.run("apply", "--dry-run=server", "-k", str(REPO / "manifests"))
    assert code == 0, err
    assert "clusterrole.rbac.authorization.k8s.io/agentspaces-operator" in out
    kubectl("apply", "-k", str(REPO / "manifests"))
    # A selector class: the operator reads each Workspace's Namespace before its server.
    install_class(kubectl, clouds, CLASS, extra={"allowedNamespaces": {
        "from": "Selector", "selector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "Exists"}]}}})
    return kubectl


def _service_account_kubeconfig(control_plane, kubectl: Kubectl, tmp: Path) -> Path:  # type: ignore[no-untyped-def]
    token = kubectl("create", "token", SA, "-n", OPERATOR_NAMESPACE, "--duration=1h").strip()
    return control_plane.write_kubeconfig(f"sa-{tmp.name}",
                                          control_plane.kubeconfig_for_token(token))


def _create_and_delete(kubectl: Kubectl, namespace: str, name: str, timeout: float) -> bool:
    # A quota the start must list and whose status the operator writes.
    kubectl.apply(yaml.safe_dump({
        "apiVersion": "agentspaces.dev/v1alpha1", "kind": "WorkspaceQuota",
        "metadata": {"name": "rbac", "namespace": namespace},
        "spec": {"maxRunning": 10}}))
    kubectl.apply(workspace(name, namespace, CLASS))
    try:
        wait_for(lambda: (w := kubectl.get_json("workspace", name, "-n", namespace)) and
                 condition(w, "ServerReady").get("status") == "True" and
                 condition(w, "DNSReady").get("status") == "True", timeout, "ready")
        kubectl("delete", "workspace", name, "-n", namespace, "--wait=false")
        wait_for(lambda: kubectl.get_json("workspace", name, "-n", namespace) is None,
                 timeout, "deleted")
    except AssertionError:
        return False
    return True


def _forbidden(log: str) -> bool:
    return "Forbidden" in log or " 403" in log or "forbidden" in log


def test_operator_with_shipped_rbac_completes_create_and_delete(
        control_plane, installed: Kubectl, namespace: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    can = installed("auth", "can-i", "--list",
                    f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{SA}")
    assert "workspaces.agentspaces.dev" in can
    assert installed("auth", "can-i", "delete", "workspaces.agentspaces.dev",
                     f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{SA}",
                     check=False).strip() == "no"
    kubeconfig = _service_account_kubeconfig(control_plane, installed, tmp_path)
    op = start_operator(kubeconfig, tmp_path, extra_env=AS_DEPLOYED)
    try:
        assert _create_and_delete(installed, namespace, "allowed", 60), op.log()[-3000:]
        assert not _forbidden(op.log()), [line for line in op.log().splitlines()
                                          if "orbidden" in line or " 403" in line][:5]
    finally:
        op.stop()


@pytest.mark.parametrize("role_rule", RULES, ids=[
    f"{ROLES[r]['kind']}-{'/'.join(ROLES[r]['rules'][i]['resources'])}" for r, i in RULES])
def test_operator_fails_when_any_rule_is_removed(
        control_plane, installed: Kubectl, namespace: str, tmp_path: Path,  # type: ignore[no-untyped-def]
        role_rule: tuple[int, int]) -> None:
    role_index, rule_index = role_rule
    reduced = copy.deepcopy(ROLES[role_index])
    del reduced["rules"][rule_index]
    installed.apply(yaml.safe_dump(reduced))
    kubeconfig = _service_account_kubeconfig(control_plane, installed, tmp_path)
    op = start_operator(kubeconfig, tmp_path, extra_env=AS_DEPLOYED)
    try:
        completed = _create_and_delete(installed, namespace, f"denied-{rule_index}", 20)
        assert not completed or _forbidden(op.log()), \
            f"removing rule {reduced} did not break the operator"
    finally:
        op.stop()
        installed.apply(yaml.safe_dump(ROLES[role_index]))
        # Clean up what the crippled operator may have left behind, with full rights.
        ws = installed.get_json("workspace", f"denied-{rule_index}", "-n", namespace)
        if ws is not None:
            admin_op = start_operator(control_plane.admin_kubeconfig, tmp_path, "cleanup")
            try:
                installed("delete", "workspace", f"denied-{rule_index}", "-n", namespace,
                          "--wait=false")
                wait_for(lambda: installed.get_json("workspace", f"denied-{rule_index}",
                                                    "-n", namespace) is None, 60, "cleanup")
            finally:
                admin_op.stop()


def _bind_secrets(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "rolebinding", SECRETS_ROLE, "-n", namespace,
            f"--clusterrole={SECRETS_ROLE}",
            f"--serviceaccount={OPERATOR_NAMESPACE}:{SA}")


def test_secret_rights_can_be_confined_to_workspace_namespaces(
        control_plane, installed: Kubectl, clouds: Clouds, namespace: str,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    """Without the cluster-wide binding, RoleBindings in the operator's namespace and a
    workspace's namespace are enough, and a namespace without one is out of reach."""
    binding = next(d for d in RBAC if d["kind"] == "ClusterRoleBinding"
                   and d["metadata"]["name"] == SECRETS_ROLE)
    unbound = f"t-{uuid.uuid4().hex[:8]}"
    installed("create", "namespace", unbound)
    installed("delete", "clusterrolebinding", SECRETS_ROLE)
    kubeconfig = _service_account_kubeconfig(control_plane, installed, tmp_path)
    op = None
    try:
        _bind_secrets(installed, OPERATOR_NAMESPACE)
        _bind_secrets(installed, namespace)
        assert installed("auth", "can-i", "get", "secrets", "-n", unbound,
                         f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{SA}",
                         check=False).strip() == "no"
        op = start_operator(kubeconfig, tmp_path, extra_env=AS_DEPLOYED)
        assert _create_and_delete(installed, namespace, "confined", 60), op.log()[-3000:]

        installed.apply(workspace("outside", unbound, CLASS))
        wait_for(lambda: _forbidden(op.log()), 30, "a Forbidden Secret read")  # type: ignore[union-attr]
        ws = installed.get_json("workspace", "outside", "-n", unbound)
        assert ws is not None and condition(ws, "ServerReady").get("status") != "True"
        uid = ws["metadata"]["uid"]
        assert [s for s in clouds.hetzner.servers.values()
                if s["labels"].get("agentspaces.dev/workspace-uid") == uid] == []
        installed("delete", "workspace", "outside", "-n", unbound, "--wait=false")
        wait_for(lambda: installed.get_json("workspace", "outside", "-n", unbound) is None,
                 60, "outside deleted")
    finally:
        if op is not None:
            op.stop()
        installed("delete", "rolebinding", SECRETS_ROLE, "-n", OPERATOR_NAMESPACE,
                  "--ignore-not-found")
        installed.apply(yaml.safe_dump(binding))


# -- the wake gateway's RBAC (manifests/gateway.yaml) ------------------------------------

GATEWAY_SA = "agentspaces-gateway"
GATEWAY_DOCS = list(yaml.safe_load_all((REPO / "manifests" / "gateway.yaml").read_text()))
GATEWAY_ROLES: list[dict[str, Any]] = [d for d in GATEWAY_DOCS if d["kind"] == "ClusterRole"]
GATEWAY_RULES = [(r, i) for r, role in enumerate(GATEWAY_ROLES)
                 for i in range(len(role["rules"]))]
GATEWAY_CLASS = "rbac-gateway"


def _gateway_can(kubectl: Kubectl, *args: str) -> bool:
    _, out, _ = kubectl.run("auth", "can-i", *args,
                            f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{GATEWAY_SA}")
    return out.strip() == "yes"


def test_gateway_rights_are_only_what_it_uses(installed: Kubectl, namespace: str) -> None:
    ws = "workspaces.agentspaces.dev"
    for verb in ("list", "watch", "patch"):
        assert _gateway_can(installed, verb, ws, "--all-namespaces"), verb
    assert _gateway_can(installed, "list", "workspaceclasses.agentspaces.dev")
    assert _gateway_can(installed, "get", "secrets", "-n", namespace)
    for args in (("delete", ws, "-n", namespace), ("create", ws, "-n", namespace),
                 ("update", ws, "-n", namespace),
                 ("patch", ws, "--subresource=status", "-n", namespace),
                 ("patch", "workspaceclasses.agentspaces.dev"),
                 ("list", "secrets", "-n", namespace), ("watch", "secrets", "-n", namespace),
                 ("create", "secrets", "-n", namespace), ("patch", "secrets", "-n", namespace),
                 ("create", "events", "-n", namespace), ("list", "pods", "-n", namespace)):
        assert not _gateway_can(installed, *args), args


def _stopped_for_the_gateway(kubectl: Kubectl, namespace: str, name: str) -> str:
    """A workspace of the gateway's class, stopped by inactivity with its records at the
    gateway (status written as the operator would), and its access Secret; its host."""
    from agentspaces.api.hostnames import workspace_label
    from agentspaces_vm import share_links
    from agentspaces_vm.password_hash import hash_password

    kubectl.apply(workspace(name, namespace, GATEWAY_CLASS))
    label = workspace_label(name, namespace)
    stamp = "2025-01-01T00:00:00Z"
    status = {"status": {
        "phase": "Stopped", "hostname": label, "stoppedBy": "inactivity",
        "conditions": [{"type": "Ready", "status": "False", "reason": "Stopped",
                        "message": "stopped", "lastTransitionTime": stamp}],
        "dns": {"target": "Gateway", "changedAt": stamp}}}
    kubectl("patch", "workspace", name, "-n", namespace, "--subresource=status",
            "--type=merge", "-p", json.dumps(status))
    kubectl("create", "secret", "generic", f"{name}-access", "-n", namespace,
            "--from-literal=username=agent", "--from-literal=password=gw-password",
            f"--from-literal=scryptHash={hash_password('gw-password', log_n=10)}",
            f"--from-literal=sessionKey={share_links.new_key()}",
            f"--from-literal=shareLinkKey={share_links.new_key()}")
    return f"{label}.{ZONE}"


async def _gateway_wakes(kubeconfig: Path, kubectl: Kubectl, namespace: str, name: str,
                         host: str, seconds: float) -> bool:
    """Run the gateway as its ServiceAccount; ask its app (as Caddy would) for a
    signed-in navigation; True when that showed the waking page and woke the workspace."""
    import httpx

    from agentspaces.gateway.caddy_config import FRONT_KEY_HEADER
    from agentspaces.gateway.service import GatewaySettings, start_gateway

    app_port, admin_port = _free_port(), _free_port()
    gateway = await start_gateway(GatewaySettings(
        caddy_admin=f"127.0.0.1:{admin_port}", listen=f"127.0.0.1:{app_port}"),
        kubeconfig=str(kubeconfig))
    try:
        deadline = asyncio.get_running_loop().time() + seconds
        async with httpx.AsyncClient(timeout=10) as client:
            while asyncio.get_running_loop().time() < deadline:
                resp = await client.get(f"http://127.0.0.1:{app_port}/", auth=("agent",
                                                                                "gw-password"),
                                        headers={"Host": host, FRONT_KEY_HEADER:
                                                 gateway.front_key,
                                                 "User-Agent": "Mozilla/5.0 Firefox/133.0",
                                                 "Accept": "text/html",
                                                 "Sec-Fetch-Mode": "navigate"})
                if resp.status_code == 200 and "Waking" in resp.text:
                    break
                await asyncio.sleep(0.5)
            else:
                return False
        for _ in range(20):
            ws = kubectl.get_json("workspace", name, "-n", namespace) or {}
            annotations = ws.get("metadata", {}).get("annotations") or {}
            if annotations.get("agentspaces.dev/wake", "").startswith("gateway-"):
                return annotations["agentspaces.dev/woken-by"].startswith("gateway: agent ")
            await asyncio.sleep(0.25)
        return False
    finally:
        await gateway.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gateway_kubeconfig(control_plane, kubectl: Kubectl, tmp: Path) -> Path:  # type: ignore[no-untyped-def]
    token = kubectl("create", "token", GATEWAY_SA, "-n", OPERATOR_NAMESPACE,
                    "--duration=1h").strip()
    return control_plane.write_kubeconfig(f"gw-{tmp.name}",
                                          control_plane.kubeconfig_for_token(token))


@pytest.fixture(scope="module")
def gateway_class(installed: Kubectl, clouds: Clouds) -> str:
    install_class(installed, clouds, GATEWAY_CLASS,
                  extra={"wakeGateway": {"ipv4": "203.0.113.10"}})
    return GATEWAY_CLASS


async def test_gateway_with_shipped_rbac_wakes_a_workspace(
        control_plane, installed: Kubectl, gateway_class: str, namespace: str,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    host = _stopped_for_the_gateway(installed, namespace, "woken")
    kubeconfig = _gateway_kubeconfig(control_plane, installed, tmp_path)
    assert await _gateway_wakes(kubeconfig, installed, namespace, "woken", host, 30)


@pytest.mark.parametrize("role_rule", GATEWAY_RULES, ids=[
    f"{GATEWAY_ROLES[r]['metadata']['name']}-{'/'.join(GATEWAY_ROLES[r]['rules'][i]['resources'])}"
    for r, i in GATEWAY_RULES])
async def test_gateway_fails_when_any_rule_is_removed(
        control_plane, installed: Kubectl, gateway_class: str, namespace: str,  # type: ignore[no-untyped-def]
        tmp_path: Path, role_rule: tuple[int, int]) -> None:
    role_index, rule_index = role_rule
    reduced = copy.deepcopy(GATEWAY_ROLES[role_index])
    del reduced["rules"][rule_index]
    host = _stopped_for_the_gateway(installed, namespace, "kept")
    installed.apply(yaml.safe_dump(reduced))
    try:
        kubeconfig = _gateway_kubeconfig(control_plane, installed, tmp_path)
        assert not await _gateway_wakes(kubeconfig, installed, namespace, "kept", host, 8), \
            f"removing rule {reduced} did not stop the gateway"
    finally:
        installed.apply(yaml.safe_dump(GATEWAY_ROLES[role_index]))
