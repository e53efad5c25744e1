"""No server for a Workspace whose namespace may not use its class.

Called only when a server is about to be created (running is wanted and none is
recorded: a create, a start, a wake), before any cloud call. A running workspace's
polls never come here, so they never read its Namespace; a class that stops allowing
a namespace refuses new starts and leaves running servers alone
(docs/design-decisions.md). The Namespace is read only for a `Selector` rule.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentspaces.api.enums import ConditionType as T
from agentspaces.api.enums import Phase, Reason
from agentspaces.kube import KubeError
from agentspaces.reconcile import class_access
from agentspaces.reconcile.outcome import Outcome
from agentspaces.reconcile.scope import Scope


async def refused(scope: Scope) -> Outcome | None:
    """None when the namespace may use the class; else the refusal, recorded."""
    rule, name, namespace = scope.klass.allowed_namespaces, scope.klass.name, scope.ref.namespace
    labels: Mapping[str, str] | None = None
    if class_access.needs_labels(rule):
        try:
            labels = await scope.runtime.kube.namespace_labels(namespace)
        except KubeError as err:  # fail closed: the rule cannot be checked
            return _refuse(scope, f"cannot read Namespace {namespace} to check WorkspaceClass "
                                  f"{name}'s allowedNamespaces: {err.status}")
        if labels is None:
            return _refuse(scope, f"Namespace {namespace} not found")
    message = class_access.refusal(rule, name, namespace, labels)
    return None if message is None else _refuse(scope, message)


def _refuse(scope: Scope, message: str) -> Outcome:
    status = scope.status
    message += " (no server is created)"
    if status.reason(T.ACCEPTED) != Reason.CLASS_NOT_ALLOWED:  # one event, not one a poll
        scope.emit("Warning", Reason.CLASS_NOT_ALLOWED, message)
    status.condition(T.ACCEPTED, False, Reason.CLASS_NOT_ALLOWED, message)
    status.condition(T.READY, False, Reason.CLASS_NOT_ALLOWED, message)
    status.phase = Phase.FAILED
    # No cloud call was made: look again at the poll (the class or the namespace's
    # labels may change).
    return Outcome.after(scope.runtime.settings.poll_interval, Reason.CLASS_NOT_ALLOWED)
