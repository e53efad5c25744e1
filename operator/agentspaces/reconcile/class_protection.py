"""A tenant's class and the Secrets a cleanup needs outlive the Workspaces using them.

Deleting a namespace deletes everything in it at once. A Workspace waits for its
finalizer, but a NamespacedWorkspaceClass and its Secrets would go at once, and
without the Hetzner token, the DNS token, the storage keys and the backup key the
operator could neither back up nor delete the servers: they would run on, billed, and
the namespace would never finish terminating. So, as Kubernetes keeps a
PersistentVolumeClaim while a Pod uses it:

- the class carries the operator's finalizer (Kopf adds it: handlers.py), and its
  deletion waits until no Workspace of the namespace names it;
- before a Workspace of the class gets a server, the Secrets the class names for its
  clouds and its key carry `IN_USE`; they are let go when the class is deleted and no
  remaining Workspace's class names them.

A tenant's key Secret deleted while its class exists therefore stays (terminating, and
readable) until the class and its workspaces are gone; the backups become unreadable
then (crypto-shredding), not while a workspace still needs the key to stop.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from agentspaces.api.model import (
    CLASS_SECRET_REFS,
    IN_USE_FINALIZER,
    NAMESPACED_CLASS_KIND,
    OPERATOR_FINALIZER,
)
from agentspaces.kube import KubeError, KubePort
from agentspaces.reconcile.outcome import Outcome, Wait
from agentspaces.reconcile.scope import Scope

log = logging.getLogger(__name__)
IN_USE = IN_USE_FINALIZER
# What a stop or a delete needs; Claude Code's credentials play no part in either.
CLEANUP_REFS = tuple(path for path in CLASS_SECRET_REFS if path[0] != "agentCredentials")


def cleanup_secrets(spec: Mapping[str, Any] | None) -> set[str]:
    """The names of the Secrets a class's spec names for its clouds and its key."""
    names = set()
    for path in CLEANUP_REFS:
        node: Any = spec or {}
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, Mapping) and node.get("name"):
            names.add(str(node["name"]))
    return names


def _names_class(workspace: Mapping[str, Any], class_name: str) -> bool:
    spec = workspace.get("spec") or {}
    return spec.get("classKind") == NAMESPACED_CLASS_KIND and spec.get("className") == class_name


async def hold(scope: Scope) -> Outcome | None:
    """Before a server for a Workspace of a namespaced class: the class carries the
    operator's finalizer and its Secrets `IN_USE`. None when they do; else the wait."""
    klass = scope.klass
    if not klass.namespaced:
        return None
    namespace, kube = scope.ref.namespace, scope.runtime.kube
    try:
        body = await kube.get_namespaced_workspace_class(namespace, klass.name)
        finalizers = ((body or {}).get("metadata") or {}).get("finalizers") or ()
        if body is None or OPERATOR_FINALIZER not in finalizers:
            # Kopf adds it as soon as it sees the class: a class this new waits a moment.
            return Outcome.after(Wait.CLASS_PROTECTED, "class not yet protected")
        for name in sorted(cleanup_secrets(body.get("spec"))):
            current = await kube.read_secret(namespace, name)
            if current is not None and IN_USE not in current.finalizers:
                await kube.set_secret_finalizers(namespace, name, current,
                                                 [*current.finalizers, IN_USE])
    except KubeError as err:  # e.g. a conflict: the next visit tries again
        log.warning("cannot protect %s's Secrets: %s", klass.title, err.status)
        return Outcome.after(Wait.CLASS_PROTECTED, "protecting the class's Secrets")
    return None


async def release(kube: KubePort, namespace: str, name: str,
                  spec: Mapping[str, Any] | None) -> str | None:
    """A deleted NamespacedWorkspaceClass: why it must stay (a Workspace names it), or
    None once the Secrets no remaining Workspace's class needs are let go."""
    workspaces = await kube.list_workspaces(namespace)
    users = sorted((w.get("metadata") or {}).get("name", "") for w in workspaces
                   if _names_class(w, name))
    if users:
        shown = ", ".join(users[:3]) + (f" and {len(users) - 3} more" if len(users) > 3 else "")
        return f"Workspaces still use it: {shown}"
    needed = await _still_needed(kube, namespace, workspaces, name)
    for secret in sorted(cleanup_secrets(spec) - needed):
        current = await kube.read_secret(namespace, secret)
        if current is not None and IN_USE in current.finalizers:
            await kube.set_secret_finalizers(
                namespace, secret, current, [f for f in current.finalizers if f != IN_USE])
    return None


async def _still_needed(kube: KubePort, namespace: str,
                        workspaces: Iterable[Mapping[str, Any]], deleted: str) -> set[str]:
    """The Secrets named by the other namespaced classes that Workspaces still name."""
    classes = {(w.get("spec") or {}).get("className", "") for w in workspaces
               if (w.get("spec") or {}).get("classKind") == NAMESPACED_CLASS_KIND}
    needed: set[str] = set()
    for other in sorted(classes - {deleted, ""}):
        body = await kube.get_namespaced_workspace_class(namespace, other)
        if body is not None:
            needed |= cleanup_secrets(body.get("spec"))
    return needed
