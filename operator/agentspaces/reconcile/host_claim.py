"""Hostname claims: one Lease per DNS label, so a label has exactly one workspace.

The label names the Hetzner server and the DNS records, and a stopped workspace owns
neither, so neither can tell that its name is in use. Before any cloud call a
workspace therefore claims its label with a Lease `host-{label}` in the operator's
namespace (holder: the Workspace uid). Creating it is atomic: when it exists and its
holder is another Workspace that still exists, the label is taken (`NameTaken`, no
server, no record). A claim whose holder is gone (checked by uid) is taken over with a
resourceVersion precondition, so two contenders cannot both win. The claim is deleted
when the Workspace is finally deleted.
"""

from __future__ import annotations

from agentspaces.api.enums import ConditionType, Phase, Reason
from agentspaces.kube import LeaseData
from agentspaces.reconcile.outcome import Outcome, Wait
from agentspaces.reconcile.scope import Visit

PREFIX = "host-"
HOLDER_ANNOTATION = "agentspaces.dev/workspace"
LABELS = {"app.kubernetes.io/managed-by": "agentspaces", "agentspaces.dev/role": "hostname"}
_ATTEMPTS = 3

def claim_name(label: str) -> str:
    return PREFIX + label


async def ensure(scope: Visit) -> Outcome | None:
    """None when this workspace holds its label's claim; else the Outcome to return."""
    label = scope.label
    if scope.runtime.host_claims.get(scope.ref.uid) == label:
        return None
    kube = scope.runtime.kube
    namespace = scope.runtime.settings.namespace
    annotations = {HOLDER_ANNOTATION: f"{scope.ref.namespace}/{scope.ref.name}"}
    for _ in range(_ATTEMPTS):  # each pass sees a newer claim; contention is rare
        current = await kube.read_lease(namespace, claim_name(label))
        if current is None:
            if await kube.create_lease(namespace, claim_name(label), scope.ref.uid, LABELS,
                                       annotations) is None:
                continue  # created by someone else just now: look at it
        elif current.holder != scope.ref.uid:
            if await _holder_exists(scope, current):
                return _taken(scope, label, namespace)
            if not await kube.replace_lease(namespace, current, scope.ref.uid, LABELS,
                                            annotations):
                continue
            scope.emit("Normal", "HostnameClaimed",
                       f"took over the claim on {label} from a deleted workspace")
        scope.runtime.host_claims[scope.ref.uid] = label
        return None
    return Outcome.after(Wait.HOST_CONTENDED, "hostname claim contended")


async def release(scope: Visit) -> None:
    """Delete this workspace's claim (only if it is still the holder)."""
    scope.runtime.host_claims.pop(scope.ref.uid, None)
    kube = scope.runtime.kube
    namespace = scope.runtime.settings.namespace
    current = await kube.read_lease(namespace, claim_name(scope.label))
    if current is not None and current.holder == scope.ref.uid:
        await kube.delete_lease(namespace, current)


async def _holder_exists(scope: Visit, claim: LeaseData) -> bool:
    """Whether the claim's Workspace still exists; a claim we cannot read is kept."""
    namespace, sep, name = claim.annotations.get(HOLDER_ANNOTATION, "").partition("/")
    if not sep or not name or not claim.holder:
        return True
    holder = await scope.runtime.kube.get_workspace(namespace, name)
    return holder is not None and (holder.get("metadata") or {}).get("uid") == claim.holder


def _taken(scope: Visit, label: str, namespace: str) -> Outcome:
    message = (f"hostname {label} is claimed by another workspace (Lease "
               f"{namespace}/{claim_name(label)}); rename this workspace")
    status = scope.status
    status.condition(ConditionType.SERVER_READY, False, Reason.SERVER_NAME_TAKEN, message)
    status.condition(ConditionType.DNS_READY, False, Reason.DNS_NAME_TAKEN, message)
    status.condition(ConditionType.READY, False, Reason.SERVER_NAME_TAKEN, message)
    if not status.has_server:
        status.phase = Phase.FAILED
    scope.emit("Warning", Reason.SERVER_NAME_TAKEN, message)
    return Outcome.after(Wait.HOST_TAKEN, "hostname taken")
