"""Whose is a Secret at one of a Workspace's names (`<name>-access`, `-agent`,
`-backup-key`)?

Namespace users may create any Secret, including one at such a name, so the name
proves nothing. A Secret is this Workspace's when it names the Workspace's uid as an
owner, or when it carries the operator's labels for this workspace and role and has no
owner (a user may re-create a deleted one by hand). Labelled Secrets whose only owners
are namesake Workspaces (same name, another uid: a deleted predecessor) are stale and
replaced, so a re-created Workspace never inherits a password, agent credentials or a
data key. Everything else is foreign: the operator does not use, change or delete it
and reports `SecretConflict` instead.
"""

from __future__ import annotations

import logging
from enum import Enum

from agentspaces.api.model import IN_USE_FINALIZER
from agentspaces.kube import KubeError, SecretData
from agentspaces.reconcile.scope import Visit

MANAGED_BY = ("app.kubernetes.io/managed-by", "agentspaces")
WORKSPACE_LABEL = "agentspaces.dev/workspace"
ROLE_LABEL = "agentspaces.dev/role"
RETAINED_LABEL = "agentspaces.dev/retained"
KEPT_UNTIL_FINALIZED = (IN_USE_FINALIZER,)
"""On the Secrets a last backup needs (the agent's credentials `-agent`, the data key
`-backup-key`): deleting a namespace deletes them alongside its Workspaces, which still
have to reach their agents and encrypt their backups. `release_kept` lets them go as
the Workspace's cleanup ends."""
KEPT_SUFFIXES = ("agent", "backup-key")
log = logging.getLogger(__name__)


async def release_kept(visit: Visit) -> None:
    """The Workspace is done with its Secrets: take `KEPT_UNTIL_FINALIZED` off them (a
    Secret it released with `Retain` included), so they go with it or stay as kept.
    Without the right to read Secrets in its namespace the operator never made any
    there, so a refusal (403) is not waited on."""
    kube = visit.runtime.kube
    for suffix in KEPT_SUFFIXES:
        name = visit.secret_name(suffix)
        try:
            current = await kube.read_secret(visit.ref.namespace, name)
        except KubeError as err:
            if err.status != 403:
                raise
            log.warning("cannot read Secret %s/%s to let it go: %s", visit.ref.namespace,
                        name, err.status)
            return
        if current is not None and IN_USE_FINALIZER in current.finalizers:
            await kube.set_secret_finalizers(
                visit.ref.namespace, name, current,
                [f for f in current.finalizers if f != IN_USE_FINALIZER])


class Ownership(Enum):
    OURS = "ours"
    STALE = "stale"
    FOREIGN = "foreign"


class SecretConflict(Exception):
    """A Secret at one of the workspace's names belongs to someone else."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"Secret {name} exists and {why}; the operator leaves it alone. "
                         "Delete or rename it so the workspace can proceed")
        self.name = name


def workspace_labels(scope: Visit, role: str) -> dict[str, str]:
    """The labels that mark a Secret as this workspace's, for `role`."""
    return {MANAGED_BY[0]: MANAGED_BY[1], WORKSPACE_LABEL: scope.ref.name[:63],
            ROLE_LABEL: role}


def ownership(scope: Visit, secret: SecretData, role: str) -> Ownership:
    if scope.ref.uid in secret.owner_uids:
        return Ownership.OURS
    labels = secret.labels
    labelled = (all(labels.get(k) == v for k, v in workspace_labels(scope, role).items())
                and RETAINED_LABEL not in labels)
    if not labelled:
        return Ownership.FOREIGN
    if not secret.owners:
        return Ownership.OURS
    if all(o.kind == "Workspace" and o.name == scope.ref.name for o in secret.owners):
        return Ownership.STALE
    return Ownership.FOREIGN


def why_foreign(scope: Visit, secret: SecretData) -> str:
    if secret.owners:
        kinds = ", ".join(sorted({o.kind for o in secret.owners}))
        return f"is owned by another object ({kinds})"
    if RETAINED_LABEL in secret.labels:
        return "is a retained backup key of a deleted workspace"
    return f"was not created by the operator for workspace {scope.ref.name}"


async def ours_or_none(scope: Visit, name: str, role: str) -> SecretData | None:
    """This workspace's Secret `name`, or None when there is none (a stale one from a
    deleted namesake is deleted first). Raises SecretConflict for a foreign one."""
    kube = scope.runtime.kube
    secret = await kube.read_secret(scope.ref.namespace, name)
    if secret is None:
        return None
    owned = ownership(scope, secret, role)
    if owned is Ownership.OURS:
        return secret
    if owned is Ownership.FOREIGN:
        raise SecretConflict(name, why_foreign(scope, secret))
    if IN_USE_FINALIZER in secret.finalizers:  # its Workspace was removed by force
        await kube.set_secret_finalizers(scope.ref.namespace, name, secret,
                                         [f for f in secret.finalizers if f != IN_USE_FINALIZER])
    await kube.delete_secret(scope.ref.namespace, name, uid=secret.uid or None)
    return None
