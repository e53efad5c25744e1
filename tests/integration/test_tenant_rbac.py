"""The example tenant RBAC (manifests/examples/tenant-rbac/) through the real apiserver,
as real users: client certificates signed by the apiserver's CA for alice (group
team-a), bob (group team-a-viewers) and carol (team-b, bound by a copy of team-a's
bindings). With it and the class-access policy applied, alice works in team-a and
nowhere else, reads classes but cannot change them, and cannot use a class not offered
to team-a; each refusal is the apiserver's 403 with its message. Also the README's
object-count quota on Workspaces."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Kubectl
from tests.support.stack import OPERATOR_NAMESPACE, workspace
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
TENANT_RBAC = REPO / "manifests" / "examples" / "tenant-rbac"
POLICY = REPO / "manifests" / "class-access.yaml"
EXAMPLE_CLASS = yaml.safe_load((REPO / "manifests" / "examples" / "workspaceclass.yaml")
                               .read_text())
TEAM_LABEL = "agentspaces.dev/team"
CLASS_A, CLASS_B = "tenant-team-a", "tenant-team-b"
VAP = "ValidatingAdmissionPolicy 'agentspaces-class-access'"


def _class(name: str, team: str) -> str:
    body: dict[str, Any] = copy.deepcopy(EXAMPLE_CLASS)
    body["metadata"] = {"name": name}
    body["spec"]["allowedNamespaces"] = {"from": "Selector",
                                         "selector": {"matchLabels": {TEAM_LABEL: team}}}
    return yaml.safe_dump(body)


def _user(control_plane, name: str, group: str) -> Kubectl:  # type: ignore[no-untyped-def]
    return Kubectl(control_plane, control_plane.write_kubeconfig(
        f"tenant-{name}", control_plane.kubeconfig_for_user(name, [group])))


def _refused(user: Kubectl, *args: str, input: str | None = None) -> str:
    """Run kubectl as the user, expecting a refusal: the apiserver's 403 (kubectl -v=6
    logs each response's status line) and its message."""
    code, _, err = user.run(*args, "-v=6", input=input)
    assert code != 0, args
    assert 'status="403 Forbidden"' in err, err[-2000:]
    return next(line for line in err.splitlines() if line.startswith("Error from server"))


def _can(user: Kubectl, *args: str) -> bool:
    """`kubectl auth can-i` as the user; an answer other than yes or no fails."""
    _, out, err = user.run("auth", "can-i", *args)
    assert out.strip() in ("yes", "no"), (args, out, err)
    return out.strip() == "yes"


@pytest.fixture(scope="module")
def tenants(control_plane, kubectl: Kubectl) -> Iterator[dict[str, Kubectl]]:  # type: ignore[no-untyped-def]
    """team-a and team-b labelled for the class selectors, a class for each, a Secret in
    team-b and in the operator's namespace, the example RBAC and the class-access
    policy, all in force."""
    for ns in ("team-a", "team-b", OPERATOR_NAMESPACE):
        kubectl.apply(yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": ns, "labels": {TEAM_LABEL: ns} if ns.startswith("team-") else {}}}))
    for ns, secret in (("team-b", "b-credentials"), (OPERATOR_NAMESPACE, "hetzner-tenant")):
        kubectl("create", "secret", "generic", secret, "-n", ns, "--from-literal=token=x",
                check=False)
    kubectl.apply(_class(CLASS_A, "team-a") + "---\n" + _class(CLASS_B, "team-b"))
    kubectl("apply", "-k", str(TENANT_RBAC))
    # Another team's bindings, made from team-a's as the README says.
    kubectl.apply((TENANT_RBAC / "team-a.yaml").read_text().replace("team-a", "team-b"))
    kubectl("apply", "-f", str(POLICY))
    users = {"alice": _user(control_plane, "alice", "team-a"),
             "bob": _user(control_plane, "bob", "team-a-viewers"),
             "carol": _user(control_plane, "carol", "team-b")}
    try:
        wait_for(lambda: _can(users["alice"], "create", "workspaces.agentspaces.dev",
                              "-n", "team-a"), 30, "alice's binding in force")
        probe = workspace("probe", "team-a", CLASS_B)
        wait_for(lambda: kubectl.run("create", "--dry-run=server", "-f", "-",
                                     input=probe)[0] != 0, 30, "the policy in force")
        yield users
    finally:
        kubectl("delete", "-f", str(POLICY), "--ignore-not-found")


def test_an_editor_works_with_workspaces_and_secrets_in_her_own_namespace(
        tenants: dict[str, Kubectl]) -> None:
    alice = tenants["alice"]
    name = f"mine-{uuid.uuid4().hex[:6]}"
    alice("create", "-f", "-", input=workspace(name, "team-a", CLASS_A))
    alice("patch", "workspace", name, "-n", "team-a", "--type=merge",
          "-p", '{"spec":{"running":false}}')
    assert name in alice("get", "workspaces", "-n", "team-a", "-o", "name")
    alice("create", "secret", "generic", f"{name}-gh", "-n", "team-a",
          "--from-literal=token=ghp-x")
    assert alice("get", "secret", f"{name}-gh", "-n", "team-a", "-o", "name")
    # The operator's word on a workspace is not hers to write (kubectl reads the
    # subresource before it patches, and may not even read it).
    assert not _can(alice, "patch", "workspaces.agentspaces.dev", "--subresource=status",
                    "-n", "team-a")
    assert 'User "alice" cannot get resource "workspaces/status"' in _refused(
        alice, "patch", "workspace", name, "-n", "team-a", "--subresource=status",
        "--type=merge", "-p", '{"status":{"phase":"Running"}}')
    alice("delete", "workspace", name, "-n", "team-a")
    alice("delete", "secret", f"{name}-gh", "-n", "team-a")


def test_an_editor_gets_nothing_in_another_teams_namespace_or_the_operators(
        tenants: dict[str, Kubectl]) -> None:
    alice = tenants["alice"]
    who = 'User "alice" cannot'
    assert (f'{who} create resource "workspaces" in API group "agentspaces.dev" in the '
            'namespace "team-b"') in _refused(
        alice, "create", "-f", "-", input=workspace("intruder", "team-b", CLASS_B))
    assert (f'{who} list resource "workspaces" in API group "agentspaces.dev" in the '
            'namespace "team-b"') in _refused(alice, "get", "workspaces", "-n", "team-b")
    assert (f'{who} list resource "workspaces" in API group "agentspaces.dev" at the '
            'cluster scope') in _refused(alice, "get", "workspaces", "--all-namespaces")
    for ns, secret in (("team-b", "b-credentials"), (OPERATOR_NAMESPACE, "hetzner-tenant")):
        assert (f'{who} get resource "secrets" in API group "" in the namespace "{ns}"'
                in _refused(alice, "get", "secret", secret, "-n", ns))
        assert (f'{who} list resource "secrets" in API group "" in the namespace "{ns}"'
                in _refused(alice, "get", "secrets", "-n", ns))
    assert (f'{who} list resource "workspaces" in API group "agentspaces.dev" in the '
            f'namespace "{OPERATOR_NAMESPACE}"') in _refused(
        alice, "get", "workspaces", "-n", OPERATOR_NAMESPACE)
    # And the other way round: team-b's editor sees nothing of team-a.
    assert _can(tenants["carol"], "create", "workspaces.agentspaces.dev", "-n", "team-b")
    assert ('User "carol" cannot list resource "workspaces" in API group "agentspaces.dev" '
            'in the namespace "team-a"') in _refused(
        tenants["carol"], "get", "workspaces", "-n", "team-a")


def test_an_editor_reads_classes_but_cannot_change_them(tenants: dict[str, Kubectl]) -> None:
    alice = tenants["alice"]
    names = alice("get", "workspaceclasses", "-o", "name")
    assert f"workspaceclass.agentspaces.dev/{CLASS_A}" in names.splitlines()
    cluster = 'in API group "agentspaces.dev" at the cluster scope'
    assert f'User "alice" cannot patch resource "workspaceclasses" {cluster}' in _refused(
        alice, "patch", "workspaceclass", CLASS_B, "--type=merge",
        "-p", '{"spec":{"allowedNamespaces":{"from":"All"}}}')
    assert f'User "alice" cannot delete resource "workspaceclasses" {cluster}' in _refused(
        alice, "delete", "workspaceclass", CLASS_B)
    assert f'User "alice" cannot create resource "workspaceclasses" {cluster}' in _refused(
        alice, "create", "-f", "-", input=_class("alices-own", "team-a"))
    # Nor grant herself more: no RBAC object is hers to write.
    assert not _can(alice, "create", "rolebindings", "-n", "team-a")
    assert not _can(alice, "patch", "clusterrolebindings")
    assert not _can(alice, "patch", "namespaces/team-a")  # the class selector's label


def test_an_editor_cannot_use_a_class_not_offered_to_her_namespace(
        tenants: dict[str, Kubectl]) -> None:
    refusal = _refused(tenants["alice"], "create", "-f", "-",
                       input=workspace("borrowed", "team-a", CLASS_B))
    assert VAP in refusal, refusal
    assert (f"WorkspaceClass {CLASS_B} may not be used in namespace team-a: see the class "
            "spec.allowedNamespaces") in refusal
    assert tenants["alice"].get_json("workspace", "borrowed", "-n", "team-a") is None


def test_a_viewer_reads_workspaces_and_nothing_else(kubectl: Kubectl,
                                                    tenants: dict[str, Kubectl]) -> None:
    bob = tenants["bob"]
    name = f"seen-{uuid.uuid4().hex[:6]}"
    kubectl.apply(workspace(name, "team-a", CLASS_A))
    try:
        assert bob.get_json("workspace", name, "-n", "team-a") is not None
        assert bob.get_json("workspaceclass", CLASS_A) is not None
        assert ('User "bob" cannot create resource "workspaces" in API group '
                '"agentspaces.dev" in the namespace "team-a"') in _refused(
            bob, "create", "-f", "-", input=workspace("bobs", "team-a", CLASS_A))
        assert ('User "bob" cannot delete resource "workspaces" in API group '
                '"agentspaces.dev" in the namespace "team-a"') in _refused(
            bob, "delete", "workspace", name, "-n", "team-a")
        # No Secrets: a viewer cannot read a workspace's sign-in password.
        assert ('User "bob" cannot list resource "secrets" in API group "" in the '
                'namespace "team-a"') in _refused(bob, "get", "secrets", "-n", "team-a")
    finally:
        kubectl("delete", "workspace", name, "-n", "team-a", "--wait=false")


def test_kubernetes_object_count_quota_caps_workspaces_in_a_namespace(
        kubectl: Kubectl, namespace: str) -> None:
    """The README's one-liner: a ResourceQuota on count/workspaces.agentspaces.dev. The
    apiserver's quota admission enforces it; its status (hard, used) is what the
    controller manager would write, which this control plane does not run."""
    quota = "count/workspaces.agentspaces.dev"
    klass = "quota-class"  # no such class: no admission policy has a say
    kubectl("create", "quota", "workspaces", "-n", namespace, f"--hard={quota}=2")
    kubectl("patch", "resourcequota", "workspaces", "-n", namespace, "--subresource=status",
            "--type=merge", "-p", yaml.safe_dump({"status": {"hard": {quota: "2"},
                                                             "used": {quota: "0"}}}))
    for i in range(2):
        kubectl("create", "-f", "-", input=workspace(f"counted-{i}", namespace, klass))
    code, _, err = kubectl.run("create", "-f", "-",
                               input=workspace("one-too-many", namespace, klass))
    assert code != 0
    assert ("(Forbidden)" in err and "exceeded quota: workspaces, requested: "
            f"{quota}=1, used: {quota}=2, limited: {quota}=2") in err, err
