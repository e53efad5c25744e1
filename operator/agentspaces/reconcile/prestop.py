"""The pre-stop save as a pure policy: should the agent commit uncommitted work before
this stop, when is its time up, and what does its answer mean for status and events.

Rules (docs/idle.md, "Before an automatic stop"):

1. Only automatic stops save (`stoppedBy` inactivity or lifetime: nobody chose to stop,
   so nobody had the chance to commit). A user's `running: false` and a delete do not:
   the person was there, and an unexpected branch on their remote for every stop they
   asked for would be noise. The backup still happens as always.
2. `lifecycle.preStop: none` never saves; nor does a server whose agent never finished
   starting (there is no clone with the user's work yet).
3. `commit` without persistence saves nothing: the commit would be deleted with the
   server. `commit-and-push` still pushes.
4. The save's time is `preStopTimeout` (the agent kills git when it runs out) plus
   `MARGIN` for polling; past that the operator stops waiting, whatever the agent does.
   A save that fails, times out or cannot even start never holds the stop: the backup
   and the stop follow in every case.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from agentspaces.api.enums import PreStopOutcome, Reason, StoppedBy
from agentspaces.api.model import PreStopMode
from agentspaces.reconcile.lifecycle import AUTOMATIC_STOPS
from agentspaces_vm.contracts import SaveMode, SaveOutcome, SaveResult

MARGIN = timedelta(seconds=15)
"""Beyond the save's own timeout: the agent's kill, its answer and the next poll."""


@dataclass(frozen=True)
class PreStopInputs:
    mode: PreStopMode
    stopped_by: StoppedBy
    persistence_enabled: bool
    agent_ready: bool
    """The server's agent finished booting (its clone holds the user's work)."""


@dataclass(frozen=True)
class Skip:
    message: str


@dataclass(frozen=True)
class Save:
    mode: SaveMode


def decide(inputs: PreStopInputs) -> Skip | Save:
    """Rules 1-3 of the module docstring."""
    if inputs.mode == "none":
        return Skip("lifecycle.preStop is none")
    if inputs.stopped_by not in AUTOMATIC_STOPS:
        return Skip(f"stopped by the {inputs.stopped_by}: only idle and lifetime stops "
                    "save uncommitted work first")
    if not inputs.agent_ready:
        return Skip("the workspace never finished starting: no work to save")
    if inputs.mode == "commit" and not inputs.persistence_enabled:
        return Skip("persistence is off, so a commit would be deleted with the server "
                    "(commit-and-push would push it)")
    return Save(SaveMode(inputs.mode))


def overdue(started_at: datetime, now: datetime, timeout: timedelta) -> bool:
    """Rule 4: the operator stops waiting for the save."""
    return now >= started_at + timeout + MARGIN


@dataclass(frozen=True)
class Verdict:
    """What status.preStop and the event say about one save."""

    outcome: PreStopOutcome
    message: str
    event_type: str  # Normal | Warning
    event_reason: Reason
    branch: str | None = None
    commit: str | None = None
    pushed: bool | None = None

    @property
    def event_message(self) -> str:
        tail = "" if self.event_type == "Normal" else "; the backup and the stop go on"
        return f"pre-stop save: {self.message}{tail}"


def skipped(message: str) -> Verdict:
    return Verdict(PreStopOutcome.SKIPPED, message, "Normal", Reason.PRE_STOP_SKIPPED)


def failed(message: str) -> Verdict:
    return Verdict(PreStopOutcome.FAILED, message, "Warning", Reason.PRE_STOP_FAILED)


def timed_out(message: str) -> Verdict:
    return Verdict(PreStopOutcome.TIMED_OUT, message, "Warning", Reason.PRE_STOP_FAILED)


def verdict(result: SaveResult) -> Verdict:
    """The agent's answer. A commit that was to be pushed and was not (`push_error`) is
    still a save (it is in the backup), reported as a Warning."""
    match result.outcome:
        case SaveOutcome.SAVED:
            unpushed = result.push_error is not None
            return Verdict(PreStopOutcome.SAVED, result.message,
                           "Warning" if unpushed else "Normal", Reason.PRE_STOP_SAVED,
                           branch=result.branch, commit=result.commit, pushed=result.pushed)
        case SaveOutcome.NOTHING_TO_SAVE:
            return Verdict(PreStopOutcome.NOTHING_TO_SAVE, result.message, "Normal",
                           Reason.PRE_STOP_SKIPPED)
        case SaveOutcome.NO_REPOSITORY:
            return skipped(result.message)
        case SaveOutcome.TIMED_OUT:
            return timed_out(result.message)
        case _:
            return failed(result.message or "the agent gave no reason")
