"""What each `kubectl ws` command reads and writes, over a `Cluster`, and what it says
when something is missing or not allowed (a `CliError`; the command exits 1).

Stop, start and wake write what the dashboard's buttons write: `spec.running` and the
`agentspaces.dev/wake` annotation (reconcile.lifecycle decides from them). Share links
are share_link_cli's `create` and `revoke`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from agentspaces.api.enums import StoppedBy, UrlState
from agentspaces.reconcile.lifecycle import WAKE_ANNOTATION, WOKEN_BY_ANNOTATION
from agentspaces.share_link_cli import ACCESS_SUFFIX, CliError, KubeError

RESOURCE = "workspaces.agentspaces.dev"
WOKEN_BY = "kubectl ws"
AUTOMATIC_STOPS = (StoppedBy.INACTIVITY.value, StoppedBy.LIFETIME.value)
# Hetzner's images put the keys of a server created with keys on root (its API: a root
# password only "when no SSH keys have been specified"); -l picks another user.
DEFAULT_SSH_USER = "root"
# Where a VM keeps what `logs` cannot fetch through the API (docs/vm.md).
VM_LOG_COMMAND = ("tail -n {lines} /var/log/cloud-init-output.log; "
                  "journalctl -u agentspaces-agent.service -n {lines} --no-pager")


class Cluster(Protocol):
    def get_workspace(self, namespace: str, name: str) -> Mapping[str, Any]: ...

    def read_secret(self, namespace: str, name: str) -> Mapping[str, str]: ...

    def annotate_workspace(self, namespace: str, name: str,
                           annotations: Mapping[str, str]) -> None: ...

    def list_workspaces(self, namespace: str | None) -> list[Mapping[str, Any]]: ...

    def patch_workspace(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None: ...

    def list_events(self, namespace: str, name: str) -> list[Mapping[str, Any]]: ...


def refused(err: KubeError, verb: str, resource: str, namespace: str | None) -> CliError:
    """A failed call said plainly: for a 403 the verb and resource the user lacks, with
    the apiserver's own words (they name the user)."""
    where = f" -n {namespace}" if namespace else " -A"
    if err.status == 403:
        return CliError(f"permission denied: you may not {verb} {resource}"
                        f"{f' in namespace {namespace}' if namespace else ' in any namespace'}"
                        f" ({err}); check with `kubectl auth can-i {verb} {resource}{where}`")
    if err.status == 401:
        return CliError("the cluster refused your credentials (kubeconfig)")
    return CliError(f"{verb} {resource} failed (HTTP {err.status}): {err}")


def _not_found(cluster: Cluster, namespace: str, name: str) -> CliError:
    """Name the close matches in the namespace, when the user may list them."""
    text = f"workspace {name} not found in namespace {namespace}"
    try:
        names = [str(w["metadata"]["name"]) for w in cluster.list_workspaces(namespace)]
    except (KubeError, CliError, KeyError):
        return CliError(text)
    if not names:
        return CliError(f"{text} (it has no workspaces; another namespace: -n NAMESPACE)")
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5) or \
        [n for n in names if name in n or n in name][:3]
    if close:
        return CliError(f"{text}; did you mean {', '.join(close)}?")
    return CliError(f"{text}; it has {', '.join(sorted(names)[:10])}"
                    f"{' and more' if len(names) > 10 else ''}")


def get(cluster: Cluster, namespace: str, name: str) -> Mapping[str, Any]:
    try:
        return cluster.get_workspace(namespace, name)
    except KubeError as err:
        if err.status == 404:
            raise _not_found(cluster, namespace, name) from None
        raise refused(err, "get", RESOURCE, namespace) from None


def _status(ws: Mapping[str, Any]) -> Mapping[str, Any]:
    return ws.get("status") or {}


def _running_wanted(ws: Mapping[str, Any]) -> bool:
    return (ws.get("spec") or {}).get("running", True) is not False


# -- url, password, open -----------------------------------------------------------------

@dataclass(frozen=True)
class Url:
    url: str
    note: str | None
    """What the user should know before opening it (stopped, wakes on open)."""


def url(ws: Mapping[str, Any], port: int | None) -> Url:
    name = ws["metadata"]["name"]
    urls = _status(ws).get("urls") or {}
    if port is None:
        found = urls.get("workspace")
    else:
        found = (urls.get("ports") or "").replace("{port}", str(port)) or None
    if not found:
        phase = _status(ws).get("phase") or "not reconciled yet"
        raise CliError(f"{name} has no URL yet (status.urls is empty, phase {phase}): the "
                       "operator sets it once it has reconciled the workspace")
    note = None
    if urls.get("state") == UrlState.GATEWAY:
        note = f"{name} is stopped; opening the URL wakes it (the wake gateway)"
    elif urls.get("state") == UrlState.STOPPED:
        note = f"{name} is stopped and the URL answers nothing: kubectl ws wake {name}"
    return Url(str(found), note)


def password(cluster: Cluster, namespace: str, name: str) -> str:
    secret = f"{name}{ACCESS_SUFFIX}"
    try:
        data = cluster.read_secret(namespace, secret)
    except KubeError as err:
        if err.status == 404:
            get(cluster, namespace, name)  # a wrong name says so, with close names
            raise CliError(f"{name} has no password Secret {secret} in namespace "
                           f"{namespace} yet: the operator creates it when it first "
                           "reconciles the workspace") from None
        raise refused(err, "get", "secrets", namespace) from None
    if not data.get("password"):
        raise CliError(f"Secret {secret} has no password field")
    return data["password"]


# -- stop, start, wake -------------------------------------------------------------------

def _patch(cluster: Cluster, namespace: str, name: str, body: Mapping[str, Any]) -> None:
    try:
        cluster.patch_workspace(namespace, name, body)
    except KubeError as err:
        if err.status == 404:
            raise _not_found(cluster, namespace, name) from None
        raise refused(err, "patch", RESOURCE, namespace) from None


def stop(cluster: Cluster, namespace: str, name: str) -> str:
    ws = get(cluster, namespace, name)
    if not _running_wanted(ws):
        return f"{name}: already stopped (spec.running is false)"
    _patch(cluster, namespace, name, {"spec": {"running": False}})
    return (f"{name}: stop requested (spec.running=false); the operator backs up "
            "/workspaces and deletes the server")


def start(cluster: Cluster, namespace: str, name: str) -> str:
    ws = get(cluster, namespace, name)
    stopped_by = _status(ws).get("stoppedBy")
    if _running_wanted(ws):
        if stopped_by in AUTOMATIC_STOPS:
            raise CliError(f"{name} was stopped for {stopped_by} and spec.running is already "
                           f"true, so start changes nothing: kubectl ws wake {name}")
        return f"{name}: already started (spec.running is true)"
    _patch(cluster, namespace, name, {"spec": {"running": True}})
    return f"{name}: start requested (spec.running=true); the operator starts a server again"


def wake(cluster: Cluster, namespace: str, name: str, now: float) -> str:
    ws = get(cluster, namespace, name)
    if not _running_wanted(ws):
        raise CliError(f"{name} was stopped by you (spec.running is false); wake undoes only "
                       f"idle and lifetime stops: kubectl ws start {name}")
    stamp = str(int(now))
    _patch(cluster, namespace, name, {"metadata": {"annotations": {
        WAKE_ANNOTATION: stamp, WOKEN_BY_ANNOTATION: WOKEN_BY}}})
    if _status(ws).get("stoppedBy") in AUTOMATIC_STOPS:
        return f"{name}: wake requested ({WAKE_ANNOTATION}={stamp})"
    return (f"{name}: {WAKE_ANNOTATION}={stamp} set; it is not stopped for inactivity or "
            "lifetime, so there is nothing to wake")


# -- list ----------------------------------------------------------------------------------

def age(created: str | None, now: datetime) -> str:
    """kubectl's short ages: 45s, 12m, 5h, 3d."""
    if not created:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def table(items: Sequence[Mapping[str, Any]], all_namespaces: bool, now: datetime) -> str:
    """The columns of `kubectl get ws` (NAME PHASE URL IDLE AGENT AGE)."""
    head = ["NAME", "PHASE", "URL", "IDLE", "AGENT", "AGE"]
    rows: list[list[str]] = []
    for ws in sorted(items, key=lambda w: (w["metadata"].get("namespace", ""),
                                           w["metadata"]["name"])):
        status = _status(ws)
        activity = status.get("activity") or {}
        idle = activity.get("idle")
        row = [ws["metadata"]["name"], status.get("phase") or "",
               (status.get("urls") or {}).get("workspace") or "",
               "" if idle is None else str(idle).lower(), activity.get("agentState") or "",
               age(ws["metadata"].get("creationTimestamp"), now)]
        rows.append(([ws["metadata"].get("namespace", "")] if all_namespaces else []) + row)
    if all_namespaces:
        head.insert(0, "NAMESPACE")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True))
                     .rstrip() for r in [head, *rows])


def list_text(cluster: Cluster, namespace: str | None, now: datetime) -> str:
    try:
        items = cluster.list_workspaces(namespace)
    except KubeError as err:
        raise refused(err, "list", RESOURCE, namespace) from None
    if not items:
        raise CliError(f"no workspaces in namespace {namespace}" if namespace
                       else "no workspaces in any namespace")
    return table(items, namespace is None, now)


# -- logs ----------------------------------------------------------------------------------

def logs_text(cluster: Cluster, namespace: str, name: str) -> str:
    """What the cluster knows: the status summary, the conditions, the events. The agent's
    API has no log endpoint (and only the operator holds its token), so the VM's own logs
    are for `logs --vm`, over SSH."""
    ws = get(cluster, namespace, name)
    status = _status(ws)
    server = status.get("server") or {}
    lines = [f"Workspace {namespace}/{name}: phase {status.get('phase') or 'unknown'}"]
    if server.get("id"):
        where = ", ".join(str(server[k]) for k in ("type", "location") if server.get(k))
        lines.append(f"  server {server['id']} {server.get('ipv4') or server.get('ipv6') or ''}"
                     f"{f' ({where})' if where else ''}")
    for key in ("startedAt", "stoppedAt", "stoppedBy"):
        if status.get(key):
            lines.append(f"  {key}: {status[key]}")
    lines.append("Conditions:")
    for cond in status.get("conditions") or []:
        lines.append(f"  {cond.get('type')}={cond.get('status')} {cond.get('reason') or ''}"
                     f" {cond.get('lastTransitionTime') or ''}: {cond.get('message') or ''}"
                     .rstrip(": "))
    try:
        events = cluster.list_events(namespace, name)
    except KubeError as err:
        lines.append(f"Events: not shown ({refused(err, 'list', 'events', namespace)})")
        events = []
    else:
        lines.append("Events:" if events else "Events: none (events expire after an hour)")
    for ev in sorted(events, key=lambda e: str(e.get("time"))):
        count = f" (x{ev['count']})" if int(ev.get("count") or 1) > 1 else ""
        lines.append(f"  {ev.get('time')} {ev.get('type')} {ev.get('reason')}: "
                     f"{ev.get('message')}{count}")
    lines.append(f"The VM's bootstrap and agent logs: kubectl ws logs {name} --vm (SSH; needs "
                 "spec.sshKeys)")
    return "\n".join(lines)


# -- ssh -----------------------------------------------------------------------------------

def ssh_argv(ws: Mapping[str, Any], user: str | None, extra: Sequence[str]) -> list[str]:
    """`ssh user@address ...` for a running workspace whose spec lists SSH keys."""
    name = ws["metadata"]["name"]
    if not (ws.get("spec") or {}).get("sshKeys"):
        raise CliError(f"{name} has no spec.sshKeys, so its VM admits no SSH login: add your "
                       f"public key (kubectl edit ws {name}); it applies from the next start")
    server = _status(ws).get("server") or {}
    address = server.get("ipv4") or server.get("ipv6")
    if not address:
        raise CliError(f"{name} has no server now (phase "
                       f"{_status(ws).get('phase') or 'unknown'}): kubectl ws start {name} "
                       f"or kubectl ws wake {name}")
    return ["ssh", f"{user or DEFAULT_SSH_USER}@{address}", *extra]


def vm_log_argv(ws: Mapping[str, Any], user: str | None, lines: int) -> list[str]:
    command = VM_LOG_COMMAND.format(lines=int(lines))
    if (user or DEFAULT_SSH_USER) != "root":
        command = "; ".join(f"sudo -n {part.strip()}" for part in command.split(";"))
    return ssh_argv(ws, user, ["--", command])


def now_utc() -> datetime:
    return datetime.now(UTC)
