"""The example tenant RBAC (manifests/examples/tenant-rbac/) grants a team only what it
needs: Workspaces and Secrets in its own namespace, reading the cluster's classes,
nothing in the operator's namespace or another's, and no way to widen its own rights.
tests/integration/test_tenant_rbac.py checks the same through the real apiserver."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples" / "tenant-rbac"
OPERATOR_NAMESPACE = yaml.safe_load((REPO / "manifests" / "namespace.yaml")
                                    .read_text())["metadata"]["name"]
TEAM = "team-a"
READ = {"get", "list", "watch"}
# Everything a tenant role may mention: (API group, resource).
KNOWN = {("agentspaces.dev", "workspaces"), ("agentspaces.dev", "workspaceclasses"),
         ("agentspaces.dev", "namespacedworkspaceclasses"), ("", "secrets"), ("", "events")}
CLUSTER_SCOPED = {("agentspaces.dev", "workspaceclasses")}
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"

Grant = tuple[str, str, str, str]  # where ("*" for every namespace), group, resource, verb


def _docs() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((EXAMPLES / "kustomization.yaml").read_text())
    files = sorted(p.name for p in EXAMPLES.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    return [d for name in files for d in yaml.safe_load_all((EXAMPLES / name).read_text())
            if d]


DOCS = _docs()
ROLES = {d["metadata"]["name"]: d for d in DOCS if d["kind"] == "ClusterRole"}
BINDINGS = [d for d in DOCS if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]


def grants(docs: list[dict[str, Any]]) -> set[Grant]:
    """What the bindings give their subjects, rule by rule."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d["kind"] in ("ClusterRole", "Role")}
    out: set[Grant] = set()
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        where = binding["metadata"].get("namespace", "*") if binding["kind"] == "RoleBinding" \
            else "*"
        ref = binding["roleRef"]
        role = roles[(ref["kind"], None if ref["kind"] == "ClusterRole" else where,
                      ref["name"])]
        for rule in role["rules"]:
            out |= {(where, group, resource, verb) for group in rule.get("apiGroups", [])
                    for resource in rule.get("resources", []) for verb in rule["verbs"]}
    return out


GRANTS = grants(DOCS)


def test_the_examples_are_the_three_roles_and_one_teams_bindings() -> None:
    assert set(ROLES) == {"agentspaces-workspace-editor", "agentspaces-workspace-viewer",
                          "agentspaces-class-reader"}
    assert all(d["kind"] in ("ClusterRole", "RoleBinding", "ClusterRoleBinding") for d in DOCS)
    for binding in BINDINGS:
        assert binding["roleRef"]["name"] in ROLES, binding["metadata"]["name"]
        assert {s["kind"] for s in binding["subjects"]} <= {"Group", "User"}
    assert {b["metadata"].get("namespace") for b in BINDINGS
            if b["kind"] == "RoleBinding"} == {TEAM}


def test_the_roles_name_only_workspaces_classes_secrets_and_events_and_no_wildcard() -> None:
    for role in ROLES.values():
        for rule in role["rules"]:
            assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
            assert {(g, r) for g in rule["apiGroups"] for r in rule["resources"]} <= KNOWN, rule


def test_no_escalation_nothing_on_rbac_or_impersonation() -> None:
    for _, group, resource, verb in GRANTS:
        assert group != "rbac.authorization.k8s.io", resource
        assert verb not in ("escalate", "bind", "impersonate", "approve", "sign"), verb
        assert resource not in ("namespaces", "serviceaccounts", "workspaces/status"), resource


def test_secrets_only_in_the_teams_own_namespace() -> None:
    secrets = {where for where, group, resource, _ in GRANTS
               if (group, resource) == ("", "secrets")}
    assert secrets == {TEAM}
    assert "*" not in {where for where, group, _, _ in GRANTS if group == ""}


def test_nothing_in_the_operators_namespace() -> None:
    assert OPERATOR_NAMESPACE not in {where for where, *_ in GRANTS}
    assert OPERATOR_NAMESPACE != TEAM


def test_cluster_wide_only_reading_classes_and_workspaces_only_in_the_team() -> None:
    cluster_wide = {(g, r, v) for where, g, r, v in GRANTS if where == "*"}
    assert cluster_wide == {("agentspaces.dev", "workspaceclasses", v) for v in READ}
    assert {v for where, g, r, v in GRANTS if r == "workspaceclasses"} == READ
    workspaces = {(where, v) for where, g, r, v in GRANTS if r == "workspaces"}
    assert {where for where, _ in workspaces} == {TEAM}
    assert {v for _, v in workspaces} == READ | {"create", "update", "patch", "delete"}
    # The team's own classes name its cloud accounts: read, and only in the team.
    own_classes = {(where, v) for where, g, r, v in GRANTS
                   if r == "namespacedworkspaceclasses"}
    assert own_classes == {(TEAM, v) for v in READ}


def test_namespaced_roles_never_name_cluster_scoped_objects_and_viewers_read_only() -> None:
    """Aggregated into the built-in roles (bound per namespace), a class rule would be
    dead; and `view` must never carry Secrets or a write."""
    for role in ROLES.values():
        labels = role["metadata"].get("labels", {})
        aggregated = {k.removeprefix(AGGREGATE) for k, v in labels.items()
                      if k.startswith(AGGREGATE) and v == "true"}
        pairs = {(g, r) for rule in role["rules"] for g in rule["apiGroups"]
                 for r in rule["resources"]}
        if aggregated:
            assert not pairs & CLUSTER_SCOPED, role["metadata"]["name"]
        if "view" in aggregated:
            assert ("", "secrets") not in pairs
            assert {v for rule in role["rules"] for v in rule["verbs"]} <= READ


@pytest.mark.parametrize("widened", ["cluster-binding", "operator-namespace", "wildcard"])
def test_the_checks_catch_a_widened_example(widened: str) -> None:
    docs = copy.deepcopy(DOCS)
    editors = next(d for d in docs if d["metadata"]["name"] == "agentspaces-workspace-editors")
    if widened == "cluster-binding":
        editors["kind"] = "ClusterRoleBinding"
        del editors["metadata"]["namespace"]
        assert "*" in {w for w, g, r, _ in grants(docs) if r == "secrets"}
    elif widened == "operator-namespace":
        editors["metadata"]["namespace"] = OPERATOR_NAMESPACE
        assert OPERATOR_NAMESPACE in {w for w, *_ in grants(docs)}
    else:
        reader = next(d for d in docs if d["metadata"]["name"] == "agentspaces-class-reader")
        reader["rules"][0]["resources"] = ["*"]
        assert ("*", "agentspaces.dev", "*", "get") in grants(docs)
