"""The shipped manifests apply cleanly, and the operator works with exactly the shipped
RBAC: run as the ServiceAccount (a real TokenRequest token), it completes a
create/delete; with any single rule removed, it does not. Its Secret rights can be
confined to namespaces with RoleBindings instead of the cluster-wide binding."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Kubectl
from tests.support.stack import (
    OPERATOR_NAMESPACE,
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
RULES = [(r, i) for r, role in enumerate(ROLES) for i in range(len(role["rules"]))]
SECRETS_ROLE = "agentspaces-operator-secrets"


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
    install_class(kubectl, clouds, CLASS)
    return kubectl


def _service_account_kubeconfig(control_plane, kubectl: Kubectl, tmp: Path) -> Path:  # type: ignore[no-untyped-def]
    token = kubectl("create", "token", SA, "-n", OPERATOR_NAMESPACE, "--duration=1h").strip()
    return control_plane.write_kubeconfig(f"sa-{tmp.name}",
                                          control_plane.kubeconfig_for_token(token))


def _create_and_delete(kubectl: Kubectl, namespace: str, name: str, timeout: float) -> bool:
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
    op = start_operator(kubeconfig, tmp_path)
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
    op = start_operator(kubeconfig, tmp_path)
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
        op = start_operator(kubeconfig, tmp_path)
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
