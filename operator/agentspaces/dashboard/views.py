"""What the pages show, built from a Workspace through the product's own typed models
(api.model for spec, api.status for status). Pure: no I/O, easy to test."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agentspaces.api.enums import AgentState
from agentspaces.api.model import WorkspaceSpecModel
from agentspaces.api.status import Condition, WorkspaceStatus

WAKE_ANNOTATION = "agentspaces.dev/wake"
# The words for what the agent is doing; "absent" is nobody at the session.
AGENT_WORDS = {AgentState.WORKING: "working", AgentState.WAITING: "waiting",
               AgentState.IDLE: "idle", AgentState.ABSENT: "gone",
               AgentState.UNKNOWN: "unknown"}


def ago(when: datetime | None, now: datetime) -> str:
    """kubectl-style age: 45s, 12m, 3h, 2d."""
    if when is None:
        return ""
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _time(raw: Any) -> datetime | None:
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class PortView:
    port: int
    visibility: str
    url: str


@dataclass(frozen=True)
class WorkspaceView:
    namespace: str
    name: str
    phase: str
    url: str
    ui_url: str
    idle: str
    agent: str
    age: str
    cost: str
    running: bool
    created: str
    spec_error: str = ""
    status: WorkspaceStatus = field(default_factory=WorkspaceStatus)
    spec: WorkspaceSpecModel | None = None
    ports: tuple[PortView, ...] = ()
    conditions: tuple[Condition, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def stopped(self) -> bool:
        return self.phase == "Stopped"


def _idle(status: WorkspaceStatus, now: datetime) -> str:
    activity = status.activity
    if activity is None or activity.idle is None:
        return ""
    if activity.idle:
        return f"idle {ago(activity.idle_since, now)}".strip()
    return "active"


def _cost(status: WorkspaceStatus) -> str:
    parts = []
    if status.usage and status.usage.estimated_cost:
        parts.append(f"tokens {status.usage.estimated_cost} {status.usage.currency or 'USD'}")
    if status.vm_cost and status.vm_cost.summary:
        parts.append(f"VM {status.vm_cost.summary}")
    return " · ".join(parts)


def _ports(spec: WorkspaceSpecModel | None, status: WorkspaceStatus) -> tuple[PortView, ...]:
    if spec is None:
        return ()
    pattern = (status.urls.ports if status.urls else None) or ""
    return tuple(PortView(p.port, p.visibility,
                          pattern.replace("{port}", str(p.port)) if pattern else "")
                 for p in spec.access.ports)


def workspace_view(obj: dict[str, Any], now: datetime | None = None) -> WorkspaceView:
    now = now or datetime.now(UTC)
    meta = obj.get("metadata") or {}
    try:
        status = WorkspaceStatus.model_validate(obj.get("status") or {})
    except ValueError:
        status = WorkspaceStatus()
    spec: WorkspaceSpecModel | None
    spec_error = ""
    try:
        spec = WorkspaceSpecModel.parse(obj.get("spec") or {})
    except ValueError as err:
        spec, spec_error = None, str(err)
    created = _time(meta.get("creationTimestamp"))
    agent = ""
    if status.activity and status.activity.agent_state:
        agent = AGENT_WORDS.get(status.activity.agent_state, str(status.activity.agent_state))
    urls = status.urls
    return WorkspaceView(
        namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
        phase=str(status.phase or ("Deleting" if meta.get("deletionTimestamp") else "Pending")),
        url=(urls.workspace or "") if urls else "", ui_url=(urls.ui or "") if urls else "",
        idle=_idle(status, now), agent=agent, age=ago(created, now), cost=_cost(status),
        running=spec.running if spec else True,
        created=created.isoformat() if created else "", spec_error=spec_error,
        status=status, spec=spec, ports=_ports(spec, status),
        conditions=tuple(status.conditions),
        annotations=dict(meta.get("annotations") or {}))


def when(value: datetime | str | None, now: datetime | None = None) -> str:
    """A time as 2026-12-01 10:00:05 UTC (3m ago)."""
    moment = _time(value) if isinstance(value, str) else value
    if moment is None:
        return ""
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({ago(moment, now or datetime.now(UTC))} ago)"


def sort_key(view: WorkspaceView) -> tuple[str, str]:
    return view.namespace, view.name


def human_size(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
