"""Which namespaces may use a class (spec.allowedNamespaces): the model's rules, the
pure policy with Kubernetes' label-selector semantics, and the reconcile that refuses
a server before any cloud call and reads the Namespace only when one is about to be
created."""

from __future__ import annotations

from typing import Any

import pytest

from agentspaces.api.enums import ConditionStatus, Phase, Reason
from agentspaces.api.enums import ConditionType as T
from agentspaces.api.model import AllowedNamespacesSpec, WorkspaceClassSpecModel
from agentspaces.api.types import AllowedNamespaces, WorkspaceClass
from agentspaces.kube import KubeError
from agentspaces.reconcile.class_access import needs_labels, refusal
from tests.support.fakes import SERVER_WRITES
from tests.support.scope_builder import SETTINGS, ScopeBuilder


def _rule(raw: dict[str, Any] | None) -> AllowedNamespaces:
    return AllowedNamespaces.of(None if raw is None else AllowedNamespacesSpec.parse(raw))


def _selector(**selector: Any) -> AllowedNamespaces:
    return _rule({"from": "Selector", "selector": selector})


# -- the model ---------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "message"), [
    ({"from": "List"}, "names is required with from: List"),
    ({"from": "List", "names": []}, "at least 1 item"),
    ({"names": ["team-a"]}, "names is required with from: List and allowed only with it"),
    ({"from": "Selector"}, "selector is required with from: Selector"),
    ({"from": "All", "selector": {}}, "selector is required with from: Selector and allowed"),
    ({"from": "List", "names": ["a"], "selector": {}}, "selector is required"),
    ({"from": "Same"}, "from"),
    ({"from": "List", "names": ["Team_A"]}, "names.0"),
    ({"from": "Selector", "selector": {"matchLabels": {"bad key!": "x"}}},
     "matchLabels keys must be label keys"),
    ({"from": "Selector", "selector": {"matchLabels": {"team": "not a value"}}},
     "matchLabels.team"),
    ({"from": "Selector", "selector": {"matchExpressions": [{"key": "team",
                                                             "operator": "In"}]}},
     "In and NotIn need values"),
    ({"from": "Selector", "selector": {"matchExpressions": [
        {"key": "team", "operator": "Exists", "values": ["a"]}]}},
     "Exists and DoesNotExist take none"),
    ({"from": "Selector", "selector": {"matchExpressions": [{"key": "team",
                                                             "operator": "Gt"}]}},
     "operator"),
])
def test_the_model_refuses_what_admission_refuses(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AllowedNamespacesSpec.parse(raw)


def test_a_class_without_the_field_allows_every_namespace() -> None:
    spec = WorkspaceClassSpecModel.parse({
        "hetzner": {"tokenSecretRef": {"name": "h"}},
        "dns": {"zoneName": "example.com", "tokenSecretRef": {"name": "c"}}})
    klass = WorkspaceClass.from_body({"metadata": {"name": "c"}, "spec": spec.dump()})
    assert klass.allowed_namespaces == AllowedNamespaces()
    assert refusal(klass.allowed_namespaces, "c", "anyone") is None
    assert not needs_labels(klass.allowed_namespaces)


# -- the policy --------------------------------------------------------------------------

def test_all_and_list_need_no_labels() -> None:
    assert refusal(_rule({"from": "All"}), "std", "x") is None
    listed = _rule({"from": "List", "names": ["team-a", "team-b"]})
    assert not needs_labels(listed)
    assert refusal(listed, "std", "team-b") is None
    assert refusal(listed, "std", "team-c") == (
        "WorkspaceClass std may not be used in namespace team-c: not in its "
        "allowedNamespaces.names")


def test_an_empty_selector_selects_every_namespace() -> None:
    rule = _selector()
    assert needs_labels(rule)
    assert refusal(rule, "std", "x", {}) is None


def test_match_labels_need_every_entry() -> None:
    rule = _selector(matchLabels={"team": "a", "tier": "dev"})
    assert refusal(rule, "std", "x", {"team": "a", "tier": "dev", "other": "1"}) is None
    message = refusal(rule, "std", "x", {"team": "a", "tier": "prod"})
    assert message is not None and "tier=dev" in message
    assert refusal(rule, "std", "x", {"team": "a"}) is not None  # absent is no match
    assert refusal(rule, "std", "x", {}) is not None


@pytest.mark.parametrize(("operator", "values", "labels", "allowed"), [
    ("In", ["a", "b"], {"team": "b"}, True),
    ("In", ["a", "b"], {"team": "c"}, False),
    ("In", ["a", "b"], {}, False),
    ("NotIn", ["a"], {"team": "b"}, True),
    ("NotIn", ["a"], {"team": "a"}, False),
    ("NotIn", ["a"], {}, True),  # as in Kubernetes: an absent label is not in the set
    ("Exists", [], {"team": ""}, True),
    ("Exists", [], {"other": "a"}, False),
    ("DoesNotExist", [], {"other": "a"}, True),
    ("DoesNotExist", [], {"team": "a"}, False),
])
def test_each_operator_means_what_it_means_in_kubernetes(
        operator: str, values: list[str], labels: dict[str, str], allowed: bool) -> None:
    requirement: dict[str, Any] = {"key": "team", "operator": operator}
    if values:
        requirement["values"] = values
    message = refusal(_selector(matchExpressions=[requirement]), "std", "ns", labels)
    assert (message is None) is allowed, message


def test_labels_and_expressions_must_all_hold() -> None:
    rule = _selector(matchLabels={"org": "acme"}, matchExpressions=[
        {"key": "team", "operator": "In", "values": ["a", "b"]},
        {"key": "frozen", "operator": "DoesNotExist"}])
    assert refusal(rule, "std", "ns", {"org": "acme", "team": "a"}) is None
    message = refusal(rule, "std", "ns", {"org": "acme", "team": "a", "frozen": "yes"})
    assert message is not None and message.endswith(
        "its labels do not match allowedNamespaces.selector (frozen not set)")
    message = refusal(rule, "std", "ns", {"org": "acme", "team": "z"})
    assert message is not None and "(team in (a,b))" in message
    assert "org=acme" in (refusal(rule, "std", "ns", {"team": "a"}) or "")


def test_the_refusal_names_each_requirement_in_selector_syntax() -> None:
    for requirement, text in (
            ({"key": "t", "operator": "NotIn", "values": ["x"]}, "t notin (x)"),
            ({"key": "t", "operator": "Exists"}, "t set")):
        message = refusal(_selector(matchExpressions=[requirement]), "std", "ns", {"t": "x"}
                          if requirement["operator"] == "NotIn" else {})
        assert message is not None and f"({text})" in message


# -- the reconcile ------------------------------------------------------------------------

SELECT_TEAM_A = {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}


def _refused(b: ScopeBuilder) -> None:
    accepted = next(c for c in b.status["conditions"] if c["type"] == T.ACCEPTED)
    assert (accepted["status"], accepted["reason"]) == (ConditionStatus.FALSE,
                                                        Reason.CLASS_NOT_ALLOWED)
    assert "WorkspaceClass standard may not be used in namespace team-a" in accepted["message"]
    assert accepted["message"].endswith("(no server is created)")
    ready = next(c for c in b.status["conditions"] if c["type"] == T.READY)
    assert ready["reason"] == Reason.CLASS_NOT_ALLOWED
    assert b.status["phase"] == Phase.FAILED


async def test_a_namespace_the_class_does_not_select_gets_no_server() -> None:
    b = ScopeBuilder().with_class(allowedNamespaces=SELECT_TEAM_A)
    b.kube.namespaces["team-a"] = {"team": "b"}
    for _ in range(3):
        outcome = await b.reconcile()
        assert outcome.requeue == SETTINGS.poll_interval
        assert outcome.message == Reason.CLASS_NOT_ALLOWED
    _refused(b)
    assert b.servers.calls == [] and b.dns.calls == []  # not even a lookup
    assert [(e.type, e.reason) for e in b.events] == [("Warning", Reason.CLASS_NOT_ALLOWED)]

    b.kube.namespaces["team-a"] = {"team": "a"}  # labelled: the next poll creates it
    await b.reconcile()
    assert "create" in b.servers.calls.methods()
    accepted = next(c for c in b.status["conditions"] if c["type"] == T.ACCEPTED)
    assert accepted["status"] == ConditionStatus.TRUE


async def test_a_listed_namespace_needs_no_namespace_read() -> None:
    b = ScopeBuilder().with_class(allowedNamespaces={"from": "List", "names": ["team-a"]})
    await b.reconcile()
    assert "create" in b.servers.calls.methods()
    assert "namespace_labels" not in b.kube.calls.methods()

    b = ScopeBuilder().with_class(allowedNamespaces={"from": "List", "names": ["team-b"]})
    await b.reconcile()
    _refused(b)
    assert b.servers.calls == []


async def test_an_unreadable_namespace_refuses_the_server() -> None:
    b = ScopeBuilder().with_class(allowedNamespaces=SELECT_TEAM_A)

    async def forbidden(name: str) -> None:
        raise KubeError(403, "Forbidden")

    b.kube.namespace_labels = forbidden  # type: ignore[method-assign]
    await b.reconcile()
    accepted = next(c for c in b.status["conditions"] if c["type"] == T.ACCEPTED)
    assert accepted["reason"] == Reason.CLASS_NOT_ALLOWED
    assert "cannot read Namespace team-a" in accepted["message"] and "403" in accepted["message"]
    assert b.servers.calls == []

    b = ScopeBuilder().with_class(allowedNamespaces=SELECT_TEAM_A)  # no such namespace
    await b.reconcile()
    assert "Namespace team-a not found" in next(
        c for c in b.status["conditions"] if c["type"] == T.ACCEPTED)["message"]


async def test_a_running_workspace_keeps_its_server_and_its_polls_read_no_namespace() -> None:
    b = ScopeBuilder().with_class(allowedNamespaces=SELECT_TEAM_A)
    b.kube.namespaces["team-a"] = {"team": "a"}
    await b.reconcile()
    assert b.status["server"]["id"] is not None
    b.kube.namespaces["team-a"] = {"team": "b"}  # access revoked
    b.kube.calls.clear()
    b.servers.calls.clear()
    b.clock.advance(SETTINGS.boot_poll)
    await b.reconcile()
    assert "namespace_labels" not in b.kube.calls.methods()
    assert not set(b.servers.calls.methods()) & set(SERVER_WRITES)  # nothing deleted
    assert b.status["server"]["id"] is not None
    assert Reason.CLASS_NOT_ALLOWED not in b.reasons()

    b.with_spec(running=False)  # stopped by its user: the next start is refused
    for _ in range(10):
        b.clock.advance(SETTINGS.boot_poll)
        await b.reconcile()
        if b.status.get("phase") == Phase.STOPPED:
            break
    assert b.status["phase"] == Phase.STOPPED
    b.with_spec(running=True)
    b.servers.calls.clear()
    await b.reconcile()
    _refused(b)
    assert b.servers.calls == []
