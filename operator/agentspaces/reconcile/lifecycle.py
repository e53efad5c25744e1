"""Should this workspace be running? A pure decision over spec, status and annotations.

The operator never writes spec (GitOps owns it). `spec.running` is the user's intent;
an idle or lifetime stop is recorded in `status.stoppedBy` and holds until the user
wakes the workspace with a new value of the `agentspaces.dev/wake` annotation (or
toggles `running`). `status.wakeHandled` remembers the last wake value acted on, so an
old annotation never wakes a workspace twice. Whoever sets a wake value may say who or
what it is in `agentspaces.dev/woken-by` (the wake gateway does); that text only goes
into the wake's event, so a change of it alone does nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentspaces.api.enums import StoppedBy
from agentspaces.api.status import WorkspaceStatus

WAKE_ANNOTATION = "agentspaces.dev/wake"
WOKEN_BY_ANNOTATION = "agentspaces.dev/woken-by"
WOKEN_BY_MAX = 200
FORCE_STOP_ANNOTATION = "agentspaces.dev/skip-backup"

AUTOMATIC_STOPS = (StoppedBy.INACTIVITY, StoppedBy.LIFETIME)


@dataclass(frozen=True)
class Intent:
    running: bool
    stopped_by: StoppedBy | None
    """Why it is (to be) stopped; None when running."""
    wake_handled: str | None
    """The value to record in status.wakeHandled."""
    woke: bool = False
    woken_by: str | None = None
    """Who or what asked for the wake (sanitised woken-by annotation), when it woke."""


def decide_intent(spec_running: bool, status: WorkspaceStatus,
                  annotations: Mapping[str, str]) -> Intent:
    """`spec_running` is spec.running; status holds stoppedBy and wakeHandled."""
    wake = annotations.get(WAKE_ANNOTATION)
    handled = status.wake_handled
    stopped_by = status.stopped_by

    if not spec_running:
        return Intent(running=False, stopped_by=StoppedBy.USER, wake_handled=wake)
    if stopped_by in AUTOMATIC_STOPS:
        if wake is not None and wake != handled:
            return Intent(running=True, stopped_by=None, wake_handled=wake, woke=True,
                          woken_by=woken_by(annotations))
        return Intent(running=False, stopped_by=stopped_by, wake_handled=handled)
    # Running is wanted; remember the current wake value so it cannot fire later.
    return Intent(running=True, stopped_by=None, wake_handled=wake)


def wakes_on_request(spec: Mapping[str, Any]) -> bool:
    """spec.wake.onRequest (default true), read from the raw spec like spec.running."""
    wake = spec.get("wake")
    return not (isinstance(wake, Mapping) and wake.get("onRequest") is False)


def wants_force_stop(annotations: Mapping[str, str]) -> bool:
    """The user accepts losing changes since the last backup (e.g. the VM is dead)."""
    return annotations.get(FORCE_STOP_ANNOTATION, "").lower() in ("true", "yes", "1")


def woken_by(annotations: Mapping[str, str]) -> str | None:
    """The woken-by annotation fit for an event: printable characters only (controls
    and line breaks become spaces, runs of spaces one), at most WOKEN_BY_MAX of them."""
    raw = annotations.get(WOKEN_BY_ANNOTATION)
    if not raw:
        return None
    text = " ".join("".join(c if c.isprintable() else " " for c in raw[:4 * WOKEN_BY_MAX])
                    .split())
    if len(text) > WOKEN_BY_MAX:
        text = text[:WOKEN_BY_MAX - 1] + "…"
    return text or None
