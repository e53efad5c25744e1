"""The pre-stop save in the stop sequence: ask the agent to commit uncommitted work to a
WIP branch (POST /v1/save), follow it (GET /v1/save) and record how it ended in
`status.preStop` and an event, before the backup (so the backup holds the commit).

Policy in `reconcile/prestop.py`. The save is a job on the agent, polled by requeue like
a backup, so no reconcile waits on git. Whatever happens (the agent refuses, breaks
off, dies, or takes too long) the step returns None within the save's timeout plus a
margin, and the stop goes on to the backup.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta

from agentspaces.agent_client import AgentCertificateMismatch, AgentError, AgentUnreachable
from agentspaces.api.enums import ConditionType, PreStopOutcome, Reason, StoppedBy
from agentspaces.api.status import PreStopStatus
from agentspaces.reconcile import backup_step, prestop
from agentspaces.reconcile.outcome import Outcome, Wait
from agentspaces.reconcile.scope import Scope
from agentspaces_vm.contracts import JobState, SaveMode, SaveOutcome, SaveRequest, SaveResult

log = logging.getLogger(__name__)
_AGENT_TROUBLE = (AgentUnreachable, AgentError, AgentCertificateMismatch)


async def before_stop(scope: Scope, stopped_by: StoppedBy) -> Outcome | None:
    """None once the save of this stop has ended (or was never to happen)."""
    if (outcome := backup_step.stopping_started(scope)) is not None:
        return outcome
    record = _this_stops(scope)
    if record is not None:
        if record.outcome is PreStopOutcome.RUNNING:
            return await _follow(scope, record)
        return None
    status = scope.status
    plan = prestop.decide(prestop.PreStopInputs(
        mode=scope.spec.pre_stop, stopped_by=stopped_by,
        persistence_enabled=backup_step.enabled(scope),
        agent_ready=status.agent_endpoint is not None and (
            status.is_true(ConditionType.AGENT_READY)
            or status.reason(ConditionType.AGENT_READY) == Reason.AGENT_UNREACHABLE)))
    if isinstance(plan, prestop.Skip):
        _record(scope, prestop.skipped(plan.message), scope.now().replace(microsecond=0))
        return None
    return await _begin(scope, plan.mode, stopped_by)


def _this_stops(scope: Scope) -> PreStopStatus | None:
    """status.preStop when it belongs to the stop under way (not an earlier one)."""
    record, since = scope.status.pre_stop, scope.status.stopping_since
    if record is None or record.started_at is None or since is None:
        return None
    return record if record.started_at >= since else None


async def _begin(scope: Scope, mode: SaveMode, stopped_by: StoppedBy) -> Outcome | None:
    now = scope.now().replace(microsecond=0)
    timeout = scope.spec.pre_stop_timeout
    request = SaveRequest(save_id=f"prestop-{now:%Y%m%dT%H%M%SZ}", mode=mode,
                          timeout_seconds=int(timeout.total_seconds()),
                          reason=stopped_by.value)
    try:
        save_id = await scope.agent().start_save(request)
    except AgentError as err:
        running = err.body.get("id") if isinstance(err.body, Mapping) else None
        if err.status == 409 and isinstance(running, str):
            save_id = running  # ours, started before a restart lost the record
        elif err.status == 404:
            _record(scope, prestop.skipped("the agent has no pre-stop save (an older "
                                           "agent)"), now)
            return None
        else:
            _record(scope, prestop.failed(f"the agent refused the save: {err}"), now)
            return None
    except (AgentUnreachable, AgentCertificateMismatch) as err:
        _record(scope, prestop.failed(f"cannot reach the agent: {err}"), now)
        return None
    scope.status.pre_stop = PreStopStatus(
        outcome=PreStopOutcome.RUNNING, started_at=now, time=now, id=save_id,
        message=f"saving uncommitted work ({mode.value}, at most {_seconds(timeout)})")
    return Outcome.after(Wait.PRE_STOP_POLL, "pre-stop save running")


async def _follow(scope: Scope, record: PreStopStatus) -> Outcome | None:
    started = record.started_at
    assert started is not None
    timeout = scope.spec.pre_stop_timeout
    overdue = prestop.overdue(started, scope.now(), timeout)
    try:
        job = await scope.agent().save_status()
    except _AGENT_TROUBLE as err:
        if overdue:
            _record(scope, prestop.timed_out(f"no answer from the agent within "
                                             f"{_seconds(timeout)} ({err})"), started, record.id)
            return None
        return Outcome.after(Wait.PRE_STOP_POLL, "pre-stop save: agent did not answer")
    if job.save_id != record.id or job.state is JobState.IDLE:
        _record(scope, prestop.failed("the agent lost the save (did it restart?)"), started,
                record.id)
        return None
    if job.state is JobState.RUNNING:
        if overdue:
            _record(scope, prestop.timed_out(f"the agent did not finish within "
                                             f"{_seconds(timeout)}"), started, record.id)
            return None
        return Outcome.after(Wait.PRE_STOP_POLL, "pre-stop save running")
    result = job.result or SaveResult(SaveOutcome.FAILED, "the agent reported no result")
    _record(scope, prestop.verdict(result), started, record.id)
    return None


def _record(scope: Scope, verdict: prestop.Verdict, started_at: datetime,
            save_id: str | None = None) -> None:
    """status.preStop and the event (no secrets: the agent scrubs git's output)."""
    scope.status.pre_stop = PreStopStatus(
        outcome=verdict.outcome, message=verdict.message[:1024], branch=verdict.branch,
        commit=verdict.commit, pushed=verdict.pushed, time=scope.now().replace(microsecond=0),
        started_at=started_at, id=save_id)
    scope.emit(verdict.event_type, verdict.event_reason, verdict.event_message[:1024])
    log.info("%s/%s: %s", scope.ref.namespace, scope.ref.name, verdict.event_message)


def _seconds(delta: timedelta) -> str:
    return f"{delta.total_seconds():.0f}s"
