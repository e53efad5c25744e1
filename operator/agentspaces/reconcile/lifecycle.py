"""Should this workspace be running? A pure decision over spec, status and annotations.

The operator never writes spec (GitOps owns it). `spec.running` is the user's intent;
an idle or lifetime stop is recorded in `status.stoppedBy` and holds until the user
wakes the workspace with a new value of the `agentspaces.dev/wake` annotation (or
toggles `running`). `status.wakeHandled` remembers the last wake value acted on, so an
old annotation never wakes a workspace twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agentspaces.api.enums import StoppedBy
from agentspaces.api.status import WorkspaceStatus

WAKE_ANNOTATION = "agentspaces.dev/wake"
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
            return Intent(running=True, stopped_by=None, wake_handled=wake, woke=True)
        return Intent(running=False, stopped_by=stopped_by, wake_handled=handled)
    # Running is wanted; remember the current wake value so it cannot fire later.
    return Intent(running=True, stopped_by=None, wake_handled=wake)


def wants_force_stop(annotations: Mapping[str, str]) -> bool:
    """The user accepts losing changes since the last backup (e.g. the VM is dead)."""
    return annotations.get(FORCE_STOP_ANNOTATION, "").lower() in ("true", "yes", "1")
