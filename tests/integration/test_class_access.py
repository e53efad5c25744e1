"""Which namespaces may use a class, through the real apiserver: the shipped
ValidatingAdmissionPolicy refuses a Workspace at `kubectl apply`, the operator refuses
it (a condition, one event, no Hetzner call) where no policy is installed, and the
CRD's rules refuse a malformed allowedNamespaces."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, Kubectl
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
POLICY = REPO / "manifests" / "class-access.yaml"
LISTED, SELECTED, EXPRS, OPEN = ("access-list", "access-selector", "access-expressions",
                                 "access-open")
TEAM = "agentspaces.test/team"
NAME = "agentspaces-class-access"


@pytest.fixture(scope="module")
def clouds() -> Iterator[Clouds]:
    with running_clouds() as c:
        yield c


@pytest.fixture(scope="module")
def namespaces(kubectl: Kubectl) -> dict[str, str]:
    """listed: named by the List class; team: labelled for the Selector classes;
    frozen and prod: labelled too, but each excluded by a matchExpressions entry;
    other: neither."""
    suffix = uuid.uuid4().hex[:6]
    names = {role: f"{role}-{suffix}" for role in ("listed", "team", "frozen", "prod", "other")}
    labels = {"team": {TEAM: "a"}, "frozen": {TEAM: "a", "frozen": "yes"},
              "prod": {TEAM: "b", "tier": "prod"}}
    for role, name in names.items():
        kubectl.apply(yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": name, "labels": labels.get(role, {})}}))
    return names


@pytest.fixture(scope="module")
def classes(kubectl: Kubectl, clouds: Clouds, namespaces: dict[str, str]) -> None:
    install_class(kubectl, clouds, LISTED, extra={"allowedNamespaces": {
        "from": "List", "names": [namespaces["listed"]]}})
    install_class(kubectl, clouds, SELECTED, extra={"allowedNamespaces": {
        "from": "Selector", "selector": {
            "matchLabels": {TEAM: "a"},
            "matchExpressions": [{"key": "frozen", "operator": "DoesNotExist"}]}}})
    install_class(kubectl, clouds, EXPRS, extra={"allowedNamespaces": {
        "from": "Selector", "selector": {"matchExpressions": [
            {"key": TEAM, "operator": "In", "values": ["a", "b"]},
            {"key": TEAM, "operator": "Exists"},
            {"key": "tier", "operator": "NotIn", "values": ["prod"]},
            {"key": "frozen", "operator": "DoesNotExist"}]}}})
    install_class(kubectl, clouds, OPEN)


def _admitted(kubectl: Kubectl, name: str, ns: str, klass: str) -> tuple[bool, str]:
    code, _, err = _apply(kubectl, workspace(name, ns, klass), dry_run=True)
    return code == 0, err


def _apply(kubectl: Kubectl, manifest: str, dry_run: bool = False) -> tuple[int, str, str]:
    args = ["apply", "-f", "-"] + (["--dry-run=server"] if dry_run else [])
    result = kubectl.plane.kubectl_run(*args, kubeconfig=kubectl.kubeconfig, input=manifest,
                                       check=False)
    return result.returncode, result.stdout, result.stderr


@pytest.fixture
def policy(kubectl: Kubectl, classes: None, namespaces: dict[str, str]) -> Iterator[None]:
    kubectl("apply", "-f", str(POLICY))
    try:
        # In force once the apiserver has loaded it (and the class informer): a probe
        # the policy refuses.
        wait_for(lambda: not _admitted(kubectl, "probe", namespaces["other"], LISTED)[0],
                 30, "the policy in force")
        yield
    finally:
        kubectl("delete", "-f", str(POLICY), "--ignore-not-found")
        wait_for(lambda: _admitted(kubectl, "probe", namespaces["other"], LISTED)[0], 30,
                 "the policy gone")


def test_the_policy_refuses_a_namespace_the_class_does_not_allow(
        kubectl: Kubectl, policy: None, namespaces: dict[str, str]) -> None:
    ns = namespaces
    for klass, where in ((LISTED, "other"), (LISTED, "team"), (SELECTED, "other"),
                         (SELECTED, "listed"), (SELECTED, "frozen"), (SELECTED, "prod"),
                         (EXPRS, "other"), (EXPRS, "frozen"), (EXPRS, "prod")):
        admitted, err = _admitted(kubectl, "refused", ns[where], klass)
        assert not admitted, (klass, where)
        assert (f"WorkspaceClass {klass} may not be used in namespace {ns[where]}"
                in err), err
        assert f"ValidatingAdmissionPolicy '{NAME}'" in err, err
    for klass, where in ((LISTED, "listed"), (SELECTED, "team"), (EXPRS, "team"),
                         (OPEN, "other"),
                         ("no-such-class-yet", "other")):  # GitOps: the class may follow
        admitted, err = _admitted(kubectl, "admitted", ns[where], klass)
        assert admitted, (klass, where, err)


def test_the_policy_never_blocks_stopping_a_workspace_whose_access_was_revoked(
        kubectl: Kubectl, policy: None, namespaces: dict[str, str]) -> None:
    """Only creates and class changes are checked: a revoked namespace can still stop,
    edit and delete what it has, but cannot move it to a class it may not use."""
    ns = namespaces["listed"]
    code, _, err = _apply(kubectl, workspace("kept", ns, LISTED))
    assert code == 0, err
    try:
        kubectl("patch", "workspaceclass", LISTED, "--type=merge", "-p", json.dumps(
            {"spec": {"allowedNamespaces": {"names": [namespaces["team"]]}}}))
        wait_for(lambda: not _admitted(kubectl, "new", ns, LISTED)[0], 30, "revoked")
        kubectl("patch", "workspace", "kept", "-n", ns, "--type=merge", "-p",
                '{"spec": {"running": false}}')
        code, _, err = kubectl.run("patch", "workspace", "kept", "-n", ns, "--type=merge",
                                   "-p", json.dumps({"spec": {"className": SELECTED}}))
        assert code != 0 and f"WorkspaceClass {SELECTED} may not be used" in err, err
    finally:
        kubectl("delete", "workspace", "kept", "-n", ns, "--wait=false")
        kubectl("patch", "workspaceclass", LISTED, "--type=merge", "-p", json.dumps(
            {"spec": {"allowedNamespaces": {"names": [ns]}}}))


@pytest.fixture(scope="module")
def operator(control_plane, kubectl: Kubectl, classes: None,  # type: ignore[no-untyped-def]
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    proc = start_operator(control_plane.admin_kubeconfig, tmp_path_factory.mktemp("op"))
    yield proc
    proc.stop()


def _warnings(kubectl: Kubectl, name: str, ns: str, reason: str) -> list[dict[str, Any]]:
    doc = kubectl.get_json("events", "-n", ns, "--field-selector",
                           f"involvedObject.name={name}") or {}
    return [e for e in doc.get("items", []) if e.get("reason") == reason]


def test_without_the_policy_the_operator_refuses_before_any_cloud_call(
        kubectl: Kubectl, clouds: Clouds, operator: OperatorProcess,
        namespaces: dict[str, str]) -> None:
    assert kubectl.get_json("validatingadmissionpolicy", NAME) is None
    ns = namespaces["frozen"]
    clouds.hetzner.reset_calls()
    before = operator.log().count("failed temporarily: ClassNotAllowed")
    kubectl.apply(workspace("outsider", ns, SELECTED))  # admitted: no policy here
    try:
        ws = wait_for(lambda: (w := kubectl.get_json("workspace", "outsider", "-n", ns))
                      and condition(w, "Accepted").get("reason") == "ClassNotAllowed" and w,
                      30, "ClassNotAllowed")
        accepted = condition(ws, "Accepted")
        assert accepted["status"] == "False"
        assert (f"WorkspaceClass {SELECTED} may not be used in namespace {ns}: its labels "
                "do not match allowedNamespaces.selector (frozen not set) (no server is "
                "created)") == accepted["message"]
        assert condition(ws, "Ready")["reason"] == "ClassNotAllowed"
        assert ws["status"]["phase"] == "Failed"
        # Later polls (one a second here) refuse again, and say so once.
        wait_for(lambda: operator.log().count("failed temporarily: ClassNotAllowed")
                 >= before + 3, 30, "three refusals")
        warnings = wait_for(lambda: _warnings(kubectl, "outsider", ns, "ClassNotAllowed"),
                            10, "the Warning event")
        assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
        assert (warnings[0].get("count") or 1) == 1
        assert sum(clouds.hetzner.calls.values()) == 0, dict(clouds.hetzner.calls)
        assert sum(clouds.cloudflare.calls.values()) == 0, dict(clouds.cloudflare.calls)

        # The namespace loses the excluded label: the next poll creates the server.
        kubectl("label", "namespace", ns, "frozen-")
        wait_for(lambda: condition(kubectl.get_json("workspace", "outsider", "-n", ns),
                                   "ServerReady").get("reason") == "Running", 30, "a server")
        assert clouds.hetzner.calls["POST /servers"] == 1
    finally:
        kubectl("label", "namespace", ns, "frozen=yes", "--overwrite")
        kubectl("delete", "workspace", "outsider", "-n", ns, "--wait=false")
        wait_for(lambda: kubectl.get_json("workspace", "outsider", "-n", ns) is None, 60,
                 "deleted")


CLASS_BASE = {"hetzner": {"tokenSecretRef": {"name": "h"}},
              "dns": {"zoneName": "example.test", "tokenSecretRef": {"name": "c"}}}


@pytest.mark.parametrize(("allowed", "message"), [
    ({"from": "List"}, "allowedNamespaces.names is required with from: List"),
    ({"from": "List", "names": []}, "spec.allowedNamespaces.names: Invalid value: 0"),
    ({"names": ["team-a"]}, "allowedNamespaces.names is required with from: List"),
    ({"from": "Selector"}, "allowedNamespaces.selector is required with from: Selector"),
    ({"from": "List", "names": ["a"], "selector": {}},
     "allowedNamespaces.selector is required with from: Selector and allowed only with it"),
    ({"from": "Same"}, 'spec.allowedNamespaces.from: Unsupported value: "Same"'),
    ({"from": "List", "names": ["Team_A"]}, "spec.allowedNamespaces.names[0]"),
    ({"from": "Selector", "selector": {"matchLabels": {"bad key!": "a"}}},
     "matchLabels keys must be label keys"),
    ({"from": "Selector", "selector": {"matchExpressions": [{"key": "t", "operator": "In"}]}},
     "In and NotIn need values; Exists and DoesNotExist take none"),
    ({"from": "Selector", "selector": {"matchExpressions": [
        {"key": "t", "operator": "Exists", "values": ["a"]}]}},
     "In and NotIn need values; Exists and DoesNotExist take none"),
])
def test_the_crd_refuses_a_malformed_rule(kubectl: Kubectl, allowed: dict[str, Any],
                                          message: str) -> None:
    code, _, err = _apply(kubectl, yaml.safe_dump({
        "apiVersion": "agentspaces.dev/v1alpha1", "kind": "WorkspaceClass",
        "metadata": {"name": "malformed"},
        "spec": {**CLASS_BASE, "allowedNamespaces": allowed}}), dry_run=True)
    assert code != 0 and message in err, err
