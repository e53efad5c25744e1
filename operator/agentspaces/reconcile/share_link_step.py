"""Share links by annotation: revoke them all, or have the operator make one.

- `agentspaces.dev/revoke-share-links=<any new value>` rotates the access Secret's
  `shareLinkKey` once per value, which revokes every link made before (the VM gets the
  new key with the next secrets delivery, the wake gateway reads it from the Secret).
- `agentspaces.dev/share-link.<port>=<duration>[,wake]` makes one link per new value
  and writes its URL to the access Secret's `shareLink.<port>`; only ports with
  visibility link accept links. Removing the annotation forgets its value, so setting
  the same value again makes a new link.

status.shareLinks records the values acted on (never a link or a key); events say what
happened without the token. `plan` is pure (the clock is passed in); `reconcile`
applies it. A revoke and a new link in one change are applied in that order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agentspaces.api.share_links import (
    KEY_FIELD,
    LINK_ANNOTATION_PREFIX,
    LINK_FIELD_PREFIX,
    REVOKE_ANNOTATION,
    annotation_port,
    mint_link,
    parse_request,
)
from agentspaces.api.status import ShareLinksStatus
from agentspaces.api.types import WorkspaceSpec
from agentspaces.reconcile.dns_step import workspace_urls
from agentspaces.reconcile.scope import Scope
from agentspaces_vm.contracts import format_time
from agentspaces_vm.share_links import new_key

if TYPE_CHECKING:  # owned_secrets calls this module
    from agentspaces.reconcile.owned_secrets import Access

MAX_LINK_ANNOTATIONS = 64
"""Share-link annotations looked at (in key order); status.shareLinks holds as many."""
_RECORDED_CHARS = 64


@dataclass(frozen=True)
class Mint:
    port: int
    expires: int  # unix seconds
    may_wake: bool


@dataclass(frozen=True)
class Refusal:
    annotation: str
    message: str


@dataclass(frozen=True)
class Plan:
    rotate: bool
    mints: tuple[Mint, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    status: ShareLinksStatus | None = field(default=None)
    """status.shareLinks afterwards."""


def recorded(value: str) -> str:
    """An annotation value as status records it: itself when short and printable, else
    a digest (status stays small whatever the annotation holds)."""
    if len(value) <= _RECORDED_CHARS and value.isprintable():
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]


def visibility(spec: WorkspaceSpec) -> dict[int, str]:
    """spec.access.ports as port -> private | link | public (unlisted ports: private)."""
    return {p.port: "public" if p.public else "link" if p.link else "private"
            for p in spec.ports}


def plan(annotations: Mapping[str, str], handled: ShareLinksStatus | None,
         ports: Mapping[int, str], now: float) -> Plan:
    """What the annotations ask for that was not done yet. `ports`: visibility()."""
    before = handled or ShareLinksStatus()
    revoke = annotations.get(REVOKE_ANNOTATION)
    rotate = revoke is not None and recorded(revoke) != before.revoke_handled
    mints: list[Mint] = []
    refusals: list[Refusal] = []
    acted: dict[str, str] = {}
    keys = sorted(k for k in annotations if k.startswith(LINK_ANNOTATION_PREFIX))
    for key in keys[:MAX_LINK_ANNOTATIONS]:
        label, value = key.removeprefix(LINK_ANNOTATION_PREFIX), annotations[key]
        acted[label] = recorded(value)
        if before.create_handled.get(label) == acted[label]:
            continue
        try:
            port = annotation_port(key)
            assert port is not None
            request = parse_request(value)
        except ValueError as err:
            refusals.append(Refusal(key, str(err)))
            continue
        shown = ports.get(port, "private")
        if shown != "link":
            refusals.append(Refusal(key, f"port {port} is {shown}; share links open only "
                                    "ports with visibility link (spec.access.ports)"))
            continue
        mints.append(Mint(port, int(now + request.lifetime.total_seconds()),
                          request.may_wake))
    after = ShareLinksStatus(
        revoke_handled=recorded(revoke) if revoke is not None else before.revoke_handled,
        create_handled=acted)
    empty = after.revoke_handled is None and not after.create_handled
    return Plan(rotate=rotate, mints=tuple(mints), refusals=tuple(refusals),
                status=None if empty and handled is None else after)


async def reconcile(scope: Scope, access: Access, secret_name: str) -> Access:
    """Apply the plan to the access Secret `secret_name`; the access with the key now
    in force."""
    status = scope.status
    todo = plan(scope.annotations, status.share_links, visibility(scope.spec),
                scope.now().timestamp())
    kube, namespace = scope.runtime.kube, scope.ref.namespace
    key = access.share_link_key
    updates: dict[str, str] = {}
    if todo.rotate:
        key = updates[KEY_FIELD] = new_key()
        # The links already handed out are dead now: nobody should copy them any more.
        current = await kube.read_secret(namespace, secret_name)
        updates.update({name: "" for name in (current.data if current else {})
                        if name.startswith(LINK_FIELD_PREFIX)})
    pattern = workspace_urls(scope).ports or ""
    for mint in todo.mints:
        updates[f"{LINK_FIELD_PREFIX}{mint.port}"] = mint_link(
            key, scope.host, pattern, mint.port, mint.expires, may_wake=mint.may_wake)
    if updates:
        await kube.replace_secret_data(namespace, secret_name, updates)
    # Recorded only once the Secret holds the result: a failed write is retried.
    status.share_links = todo.status
    if todo.rotate:
        scope.emit("Normal", "ShareLinksRevoked", f"new {KEY_FIELD} in Secret "
                   f"{secret_name} ({REVOKE_ANNOTATION}): every share link made before "
                   "is refused from now on")
    for mint in todo.mints:
        until = format_time(datetime.fromtimestamp(mint.expires, UTC))
        scope.emit("Normal", "ShareLinkCreated", f"share link for port {mint.port}, valid "
                   f"until {until}{', may wake the workspace' if mint.may_wake else ''}: "
                   f"Secret {secret_name} key {LINK_FIELD_PREFIX}{mint.port}")
    for refusal in todo.refusals:
        scope.emit("Warning", "ShareLinkRefused", f"{refusal.annotation}: {refusal.message}")
    return replace(access, share_link_key=key)
