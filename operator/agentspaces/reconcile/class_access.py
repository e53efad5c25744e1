"""May a namespace's Workspaces use a class? (WorkspaceClass spec.allowedNamespaces)

Pure: the class's rule, a namespace's name and its labels in, a verdict out. Label
selectors mean what they mean everywhere in Kubernetes: every matchLabels entry and
every matchExpressions requirement must hold (NotIn also holds for an absent label),
and an empty selector selects every namespace. The shipped ValidatingAdmissionPolicy
(manifests/class-access.yaml) says the same in CEL; this is the check that always runs.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentspaces.api.types import AllowedNamespaces, LabelRequirement, NamespaceSelector


def needs_labels(rule: AllowedNamespaces) -> bool:
    """Whether the verdict depends on the namespace's labels (so it must be read)."""
    return rule.source == "Selector"


def refusal(rule: AllowedNamespaces, class_name: str, namespace: str,
            labels: Mapping[str, str] | None = None) -> str | None:
    """None when `namespace` may use the class, else why not (for a condition).
    `labels` is needed only when `needs_labels(rule)`."""
    if rule.source == "All":
        return None
    if rule.source == "List":
        if namespace in rule.names:
            return None
        # Other teams' namespace names are not told to this one.
        why = "not in its allowedNamespaces.names"
    else:
        assert rule.selector is not None and labels is not None
        unmet = _unmet(rule.selector, labels)
        if unmet is None:
            return None
        why = f"its labels do not match allowedNamespaces.selector ({unmet})"
    return f"WorkspaceClass {class_name} may not be used in namespace {namespace}: {why}"


def _unmet(selector: NamespaceSelector, labels: Mapping[str, str]) -> str | None:
    """The first requirement `labels` fail, described; None when all hold."""
    for key, value in selector.match_labels:
        if labels.get(key) != value:
            return f"{key}={value}"
    for requirement in selector.match_expressions:
        if not _holds(requirement, labels):
            return _describe(requirement)
    return None


def _holds(requirement: LabelRequirement, labels: Mapping[str, str]) -> bool:
    key, values = requirement.key, requirement.values
    match requirement.operator:
        case "In":
            return key in labels and labels[key] in values
        case "NotIn":
            return key not in labels or labels[key] not in values
        case "Exists":
            return key in labels
        case "DoesNotExist":
            return key not in labels


def _describe(requirement: LabelRequirement) -> str:
    match requirement.operator:
        case "Exists":
            return f"{requirement.key} set"
        case "DoesNotExist":
            return f"{requirement.key} not set"
        case "In" | "NotIn":  # kubectl's selector syntax: team in (a,b), team notin (c)
            values = ",".join(sorted(requirement.values))
            return f"{requirement.key} {requirement.operator.lower()} ({values})"
