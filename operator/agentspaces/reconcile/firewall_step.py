"""The class's Hetzner Cloud Firewall: the agent port only from the operator's addresses.

When a WorkspaceClass sets `agent.sourceRanges`, exactly one firewall per class and
project admits the agent port from those ranges, the class's web ports, SSH and ICMP
from anywhere, and nothing else. It applies by label selector to every server carrying
the class label (set at server create), so a new server costs no firewall call at all.

Ownership: a firewall is ours when it carries our managed-by and class labels; one at
our name without them is reported and never touched. The check runs once per class per
operator start, when the class's rules change, or when the server inventory (listed for
drift checks anyway) shows a server of the class without it; never on a plain poll. When
the setting is removed the firewall is detached and deleted; firewalls of classes that
no longer exist are swept once no server of that class is left.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from agentspaces.api.enums import ConditionType as T
from agentspaces.api.enums import Reason
from agentspaces.api.types import WorkspaceClass
from agentspaces.clouds.errors import CloudError
from agentspaces.clouds.hetzner import (
    LABEL_CLASS,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    FirewallInfo,
    InboundRule,
    ServerProvider,
    canonical_cidr,
    class_label,
)
from agentspaces.kube import KubeError
from agentspaces.reconcile.outcome import Outcome, Wait, cloud_failure
from agentspaces.reconcile.scope import Scope
from agentspaces.reconcile.server_step import provider

ANYWHERE = ("0.0.0.0/0", "::/0")
FAILED = -1
"""What `_converge` returns when the firewall could not be made ours."""


def firewall_name(klass: WorkspaceClass) -> str:
    return f"agentspaces-{class_label(klass.label_name)}"


def firewall_labels(klass: WorkspaceClass) -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_CLASS: class_label(klass.label_name)}


def selector(klass: WorkspaceClass) -> str:
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_CLASS}={class_label(klass.label_name)}"


MANAGED = f"{LABEL_MANAGED_BY}={MANAGED_BY}"


def desired_rules(klass: WorkspaceClass) -> tuple[InboundRule, ...]:
    """Empty when the class does not restrict the agent port (no firewall at all)."""
    if not klass.agent_source_ranges:
        return ()
    operator = tuple(sorted({canonical_cidr(r) for r in klass.agent_source_ranges}))
    web = sorted({klass.tls.http_port, klass.tls.https_port})
    return (
        InboundRule("tcp", str(klass.agent_port), operator, "agentspaces agent API"),
        *(InboundRule("tcp", str(port), ANYWHERE, "agentspaces web") for port in web),
        # HTTP/3: Caddy also answers on UDP at the HTTPS port.
        InboundRule("udp", str(klass.tls.https_port), ANYWHERE, "agentspaces web (HTTP/3)"),
        # SSH always: keys only (no passwords), and a workspace's sshKeys are per
        # workspace while the firewall is per class.
        InboundRule("tcp", "22", ANYWHERE, "ssh"),
        # ICMP keeps ping and IPv6 path-MTU discovery working.
        InboundRule("icmp", None, ANYWHERE, "icmp"),
    )


def _same_rules(a: tuple[InboundRule, ...], b: tuple[InboundRule, ...]) -> bool:
    def key(rules: tuple[InboundRule, ...]) -> list[tuple[str, str, tuple[str, ...]]]:
        return sorted((r.protocol, r.port or "", r.sources) for r in rules)
    return key(a) == key(b)


def _is_ours(firewall: FirewallInfo, labels: Mapping[str, str]) -> bool:
    return all(firewall.labels.get(k) == v for k, v in labels.items())


def _digest(klass: WorkspaceClass, rules: tuple[InboundRule, ...]) -> str:
    text = repr((klass.label_name, rules))
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_key(scope: Scope) -> str:
    token = hashlib.sha256(scope.creds.hetzner_token.encode()).hexdigest()
    return f"{scope.klass.hetzner_endpoint}\0{token}\0{scope.klass.label_name}"


async def reconcile(scope: Scope) -> Outcome | None:
    """Bring the class's firewall in line with the class. An Outcome only when no server
    exists yet and the firewall the class asks for could not be made: a new server is
    never started with its agent port open against the class's wish."""
    klass = scope.klass
    try:
        rules = desired_rules(klass)
    except ValueError as err:  # admission checks the CIDRs; an older CRD may not have
        scope.status.condition(T.FIREWALL_READY, False, Reason.INVALID_INPUT,
                               f"agent.sourceRanges of class {klass.name}: {err}")
        return (Outcome.after(Wait.FIREWALL, "invalid sourceRanges")
                if not scope.status.has_server else None)
    key, digest = _cache_key(scope), _digest(klass, rules)
    checks = scope.runtime.firewall_checks
    seen = checks.get(key)
    servers = provider(scope)
    try:
        if seen is not None and seen[0] == digest and not await _drifted(scope, *seen[1:]):
            _report(scope, klass, rules)  # checked before, maybe for another workspace
            return None
        managed = await servers.list_firewalls(MANAGED)  # the one call per check
        labels = firewall_labels(klass)
        mine = sorted((f for f in managed if _is_ours(f, labels)), key=lambda f: f.id)
        firewall_id: int | None = None
        if rules:
            firewall_id = await _converge(scope, servers, rules, mine)
        else:
            await _remove(scope, servers, mine)
        if firewall_id != FAILED:
            await _sweep_orphans(scope, servers, managed)
    except CloudError as err:
        outcome = cloud_failure(scope, T.FIREWALL_READY, err, "firewall")
        return outcome if rules and not scope.status.has_server else None
    if firewall_id == FAILED:
        return (Outcome.after(Wait.FIREWALL, "firewall not ready")
                if not scope.status.has_server else None)
    checks[key] = digest, firewall_id, scope.now()
    _report(scope, klass, rules)
    return None


async def _drifted(scope: Scope, firewall_id: int | None, checked: datetime) -> bool:
    """Does a server inventory newer than the last check (listed anyway for drift
    checks, so no extra call) show this workspace's server without the class firewall,
    e.g. because it was deleted? Each inventory triggers at most one check."""
    server_id = scope.status.server.id if scope.status.server is not None else None
    if firewall_id is None or server_id is None:
        return False
    fetched, listed = await scope.runtime.inventory(
        scope.creds.hetzner_token, scope.klass.hetzner_endpoint).snapshot()
    if fetched is None or fetched <= checked:
        return False
    server = listed.get(server_id)
    # A server from before class labels existed is not selected; its next start is.
    return (server is not None and LABEL_CLASS in server.labels
            and firewall_id not in server.firewalls)


def _report(scope: Scope, klass: WorkspaceClass, rules: tuple[InboundRule, ...]) -> None:
    """FirewallReady for a class whose firewall is in place (or was removed)."""
    if rules:
        scope.status.condition(T.FIREWALL_READY, True, Reason.FIREWALL_APPLIED,
                               f"the class firewall admits port {klass.agent_port} only "
                               f"from {', '.join(rules[0].sources)}")
    elif scope.status.reason(T.FIREWALL_READY) not in (None, Reason.FIREWALL_NOT_CONFIGURED):
        scope.status.condition(T.FIREWALL_READY, False, Reason.FIREWALL_NOT_CONFIGURED,
                               "the class sets no agent.sourceRanges: the agent port is "
                               "open to the internet")


async def _converge(scope: Scope, servers: ServerProvider, rules: tuple[InboundRule, ...],
                    ours: Sequence[FirewallInfo]) -> int:
    """The id of the class's firewall, now in line with `rules`; FAILED if a foreign one
    holds its name."""
    klass = scope.klass
    labels, name, wanted = firewall_labels(klass), firewall_name(klass), selector(klass)
    if not ours:
        try:
            created = await servers.create_firewall(name, labels, rules, wanted)
        except CloudError as err:
            if err.code != "uniqueness_error":
                raise
            existing = await servers.find_firewall_by_name(name)
            if existing is None or not _is_ours(existing, labels):
                message = (f"a Hetzner firewall named {name} exists and is not labelled as "
                           "this class's; the agent port is not restricted")
                scope.status.condition(T.FIREWALL_READY, False, Reason.FIREWALL_NAME_TAKEN,
                                       message)
                scope.emit("Warning", Reason.FIREWALL_NAME_TAKEN, message)
                return FAILED
            ours = [existing]
        else:
            scope.emit("Normal", "FirewallCreated",
                       f"created firewall {created.id} ({name}) for class {klass.name}")
            ours = [created]
    keep = ours[0]
    for duplicate in ours[1:]:  # e.g. two operators raced; ours by label, so ours to remove
        await servers.detach_firewall(duplicate)
        await servers.delete_firewall(duplicate.id)
    if not _same_rules(keep.rules, rules):
        await servers.set_firewall_rules(keep.id, rules)
        scope.emit("Normal", "FirewallUpdated", f"firewall {keep.id} rules updated")
    if wanted not in keep.selectors:
        await servers.apply_firewall(keep.id, wanted)
    return keep.id


async def _remove(scope: Scope, servers: ServerProvider,
                  ours: Sequence[FirewallInfo]) -> None:
    """The class no longer restricts the agent port: remove its firewall."""
    klass = scope.klass
    for firewall in ours:
        await servers.detach_firewall(firewall)
        await servers.delete_firewall(firewall.id)
        scope.emit("Normal", "FirewallDeleted",
                   f"deleted firewall {firewall.id}: class {klass.name} sets no "
                   "agent.sourceRanges")


async def _sweep_orphans(scope: Scope, servers: ServerProvider,
                         managed: Sequence[FirewallInfo]) -> None:
    """Delete our firewalls of other classes that are gone or no longer restrict the
    agent port, once no server of theirs is left in the project. A hashed label (a class
    name over 63 characters, marked by "_") cannot be looked up and is left alone."""
    own = class_label(scope.klass.label_name)
    candidates = [f for f in managed
                  if f.labels.get(LABEL_CLASS) not in (None, own)
                  and "__" not in f.labels[LABEL_CLASS]]
    if not candidates:
        return
    _, listed = await scope.runtime.inventory(
        scope.creds.hetzner_token, scope.klass.hetzner_endpoint).snapshot()
    in_use = {s.labels.get(LABEL_CLASS) for s in listed.values()}
    for firewall in candidates:
        label = firewall.labels[LABEL_CLASS]
        if label in in_use:
            continue
        try:
            body = await _class_of_label(scope, label)
        except KubeError:
            continue  # unknown for now: kept until a later check
        if body is not None and ((body.get("spec") or {}).get("agent") or {}).get(
                "sourceRanges"):
            continue  # that class still wants it
        await servers.detach_firewall(firewall)
        await servers.delete_firewall(firewall.id)
        scope.emit("Normal", "FirewallDeleted",
                   f"deleted firewall {firewall.id} of class {label}, which no longer "
                   "restricts the agent port and has no server left")


async def _class_of_label(scope: Scope, label: str) -> Mapping[str, Any] | None:
    """The class a firewall's class label names: `namespace_name` is a
    NamespacedWorkspaceClass (WorkspaceClass.label_name), a plain name the cluster's."""
    namespace, _, name = label.rpartition("_")
    if namespace:
        return await scope.runtime.kube.get_namespaced_workspace_class(namespace, name)
    return await scope.runtime.kube.get_workspace_class(label)


async def delete(scope: Scope) -> Outcome | None:
    """The firewall is the class's, shared by its workspaces: nothing per workspace."""
    return None
