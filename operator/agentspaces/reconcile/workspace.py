"""The workspace state machine: one level-based reconcile, one finalizer.

Every trigger (create, spec or annotation change, restart, the poll timer) runs the
same `reconcile`: resolve credentials, decide whether the workspace should run, then
walk the steps (server -> DNS -> agent) or the stop sequence (backup -> server ->
DNS, pointed at the wake gateway or removed). Each step records its condition and
either finishes or asks to be called again later; nothing here waits in a loop.
"""

from __future__ import annotations

from agentspaces import metrics
from agentspaces.api.enums import AgentState, Phase, Reason, StoppedBy, UrlState
from agentspaces.api.enums import ConditionType as T
from agentspaces.api.types import wants_running
from agentspaces.clouds import budget
from agentspaces.reconcile import (
    agent_step,
    backup_step,
    class_access_step,
    class_policy,
    class_protection,
    dns_step,
    firewall_step,
    host_claim,
    owned_secrets,
    prestop_step,
    quota_step,
    secret_ownership,
    server_step,
    vm_cost,
)
from agentspaces.reconcile.credentials import CredentialsProblem, resolve
from agentspaces.reconcile.lifecycle import (
    AUTOMATIC_STOPS,
    Intent,
    decide_intent,
    wakes_on_request,
    wants_force_stop,
)
from agentspaces.reconcile.outcome import Outcome, Wait
from agentspaces.reconcile.scope import Scope, Visit
from agentspaces.reconcile.secret_ownership import SecretConflict
from agentspaces.reconcile.step import Step

# ServerReady reasons a retry cannot fix: the user has to change something.
_FAILED_REASONS = {Reason.SERVER_NAME_TAKEN, Reason.INVALID_INPUT, Reason.SERVER_TYPE_NOT_FOUND,
                   Reason.LOCATION_NOT_FOUND, Reason.IMAGE_NOT_FOUND,
                   Reason.RESOURCE_LIMIT_EXCEEDED, Reason.USER_DATA_TOO_LARGE}


async def reconcile(visit: Visit) -> Outcome:
    with budget.caller(visit.ref.uid):  # one place in the cloud budgets' queues
        outcome = await _reconcile(visit)
    vm_cost.settle(visit.status, visit.now())  # whichever way the reconcile went
    return outcome


async def _reconcile(visit: Visit) -> Outcome:
    status = visit.status
    status.init_conditions()
    seen_generation = status.observed_generation
    status.observed_generation = visit.ref.generation
    claimed = await host_claim.ensure(visit)  # before any cloud call, stopped or not
    if claimed is not None:
        return claimed

    intent = decide_intent(wants_running(visit.spec_raw), status, visit.annotations)
    if _settled_stop(visit, intent, seen_generation):
        # Stopped with nothing left in any cloud: the poll costs no API call at all.
        status.stopped_by = intent.stopped_by
        status.wake_handled = intent.wake_handled
        return Outcome.done()

    # A start or a stop reads the class and its Secrets afresh (a class edited just
    # before a restart shapes the new server); only the polls of a workspace that stays
    # as it is reuse what was read moments ago.
    fresh = visit.fresh_inputs or intent.running != status.has_server
    resolved = await resolve(visit.runtime.kube, visit.spec_raw, visit.ref.namespace,
                             visit.runtime.settings.namespace, for_cleanup=not intent.running,
                             shared=visit.runtime.class_inputs, fresh=fresh)
    if isinstance(resolved, CredentialsProblem):
        return _credentials_missing(visit, resolved)
    scope = Scope.resolved(visit, resolved)
    status.condition(T.CREDENTIALS_AVAILABLE, True, Reason.CREDENTIALS_FOUND,
                     f"{resolved.klass.title} and its Secrets are readable")
    status.hostname = scope.label
    status.wake_handled = intent.wake_handled
    if intent.woke:
        scope.emit("Normal", "Woken", "woken by the agentspaces.dev/wake annotation"
                   + (f" ({intent.woken_by})" if intent.woken_by else ""))
        status.stopped_by = None
    if intent.running and not status.has_server:  # a server is about to be created
        refused = await class_access_step.refused(scope)
        if refused is not None:
            return refused
        # A tenant's class and its Secrets stay until the server is gone again.
        unprotected = await class_protection.hold(scope)
        if unprotected is not None:
            return unprotected
    if not _class_allows(scope, intent.running):
        # No cloud call was made: check again at the poll, e.g. for a relaxed class.
        return Outcome.after(scope.runtime.settings.poll_interval,
                             Reason.NOT_ALLOWED_BY_CLASS)
    if intent.running and not status.has_server:  # the namespace's quotas, last
        waiting = await quota_step.refused(scope)
        if waiting is not None:
            return waiting
    try:
        if intent.running:
            status.stopped_by = None
            outcome = await _ensure_running(scope)
        else:
            assert intent.stopped_by is not None
            # The wake gateway checks share links against the access Secret while the
            # workspace is stopped: a revoke must take effect now, not at the next start.
            await owned_secrets.ensure_access_and_share_links(scope)
            outcome = await _ensure_stopped(scope, intent.stopped_by, backup=True)
    except SecretConflict as conflict:
        return _secret_conflict(scope, conflict)
    _summarize(scope)
    return outcome


async def finalize(visit: Visit) -> Outcome:
    """Tear everything down; the finalizer is released when this returns done, after
    the Secrets kept for the cleanup are let go."""
    outcome = await _finalize(visit)
    if outcome.requeue is None:
        await secret_ownership.release_kept(visit)
    return outcome


async def _finalize(visit: Visit) -> Outcome:
    status = visit.status
    resolved = await resolve(visit.runtime.kube, visit.spec_raw, visit.ref.namespace,
                             visit.runtime.settings.namespace, for_cleanup=True,
                             shared=visit.runtime.class_inputs, fresh=visit.fresh_inputs)
    if isinstance(resolved, CredentialsProblem):
        if not status.has_server and not (status.dns and status.dns.records):
            await host_claim.release(visit)
            return Outcome.done()  # nothing was ever created
        # Without credentials we cannot clean up; deleting anyway would leak a billed
        # server, so the Workspace stays Terminating and says why.
        _credentials_missing(visit, resolved)
        visit.emit("Warning", resolved.reason,
                   f"cannot clean up until credentials are back: {resolved.message}")
        return Outcome.after(Wait.CREDENTIALS, "credentials missing during delete")
    scope = Scope.resolved(visit, resolved)
    status.phase = Phase.DELETING
    retain = resolved.spec.persistence_on_delete == "Retain"
    try:
        outcome = await _ensure_stopped(scope, status.stopped_by or StoppedBy.USER,
                                        backup=retain, deleting=True)
    except SecretConflict as conflict:
        return _secret_conflict(scope, conflict)
    if outcome.requeue is not None:
        return outcome
    recorded = await quota_step.record_deleted(scope)  # its spend outlives it this month
    if recorded is not None:
        return recorded
    removed = await backup_step.delete(scope)
    if removed is not None:
        return removed
    await host_claim.release(scope)  # last: the name stays ours until all is gone
    scope.emit("Normal", "Deleted", "server, DNS records and owned objects cleaned up")
    return Outcome.done()


def _settled_stop(visit: Visit, intent: Intent, seen_generation: int | None) -> bool:
    """Stopped, no server, no records, and nothing that could want records at the wake
    gateway: a stop that no request may end, or one whose last full look (same spec)
    found no gateway to point at. Records at the gateway take the full path: it compares
    them with the class's gateway, reading only Kubernetes."""
    status = visit.status
    if (intent.running or status.phase != Phase.STOPPED or status.has_server
            or status.dns is not None or not status.is_true(T.CREDENTIALS_AVAILABLE)):
        return False
    if intent.stopped_by not in AUTOMATIC_STOPS or not wakes_on_request(visit.spec_raw):
        return True
    return (seen_generation == visit.ref.generation
            and status.reason(T.DNS_READY) in _SETTLED_DNS_REASONS)


# DNSReady reasons of a stop that left no records: removed, or not ours to point.
_SETTLED_DNS_REASONS = (Reason.DNS_RECORDS_REMOVED, Reason.DNS_NAME_TAKEN)


def _class_allows(scope: Scope, running: bool) -> bool:
    """Record Accepted; False when a server would have to be created against the
    class's limits (a running one is kept, see docs/design-decisions.md)."""
    status = scope.status
    verdict = class_policy.check(scope.spec, scope.klass)
    ok, reason, message = class_policy.accepted_condition(verdict, scope.klass.name,
                                                          status.has_server)
    if not ok and status.reason(T.ACCEPTED) != reason:
        scope.emit("Warning", reason, message)
    status.condition(T.ACCEPTED, ok, reason, message)
    if verdict.allowed or not running or status.has_server:
        return True
    status.condition(T.READY, False, reason, message)
    status.phase = Phase.FAILED
    return False


def _credentials_missing(visit: Visit, problem: CredentialsProblem) -> Outcome:
    status = visit.status
    status.condition(T.CREDENTIALS_AVAILABLE, False, problem.reason, problem.message)
    status.condition(T.READY, False, problem.reason, problem.message)
    if not status.has_server:
        status.phase = Phase.PENDING
    return Outcome.after(Wait.CREDENTIALS, problem.reason)


def _secret_conflict(scope: Scope, conflict: SecretConflict) -> Outcome:
    """Someone else's Secret sits at one of our names: stop here and say so."""
    status = scope.status
    status.condition(T.READY, False, Reason.SECRET_CONFLICT, str(conflict))
    if not status.has_server:
        status.phase = Phase.FAILED
    scope.emit("Warning", Reason.SECRET_CONFLICT, str(conflict))
    return Outcome.after(Wait.CREDENTIALS, Reason.SECRET_CONFLICT)


# The running workspace, in order: the firewall before a server could exist
# unprotected, the server (and its price), its DNS, then its agent (secrets, boot,
# polling).
RUNNING_STEPS: tuple[Step, ...] = (firewall_step, server_step, vm_cost, dns_step,
                                   agent_step)


async def _walk(scope: Scope, steps: tuple[Step, ...]) -> Outcome | None:
    for step in steps:
        outcome = await step.reconcile(scope)
        if outcome is not None:
            return outcome
    return None


async def _ensure_running(scope: Scope) -> Outcome:
    status = scope.status
    await owned_secrets.ensure(scope)
    outcome = await backup_step.prepare(scope)
    if outcome is not None:
        return outcome
    if status.phase in (None, Phase.PENDING, Phase.STOPPED, Phase.FAILED):
        status.phase = Phase.CREATING
        status.stopped_at = None

    outcome = await _walk(scope, RUNNING_STEPS)
    if outcome is not None:
        return outcome
    stop = agent_step.idle_stop(scope)
    if stop is not None:
        metrics.IDLE_STOPS.labels(str(stop)).inc()
        status.stopped_by = stop
        return await _ensure_stopped(scope, stop, backup=True)
    return await backup_step.reconcile(scope) or Outcome.done()


async def _ensure_stopped(scope: Scope, stopped_by: StoppedBy, backup: bool, *,
                          deleting: bool = False) -> Outcome:
    """Back up, delete the server, then point the names at the wake gateway or remove
    them (always on delete); idempotent when already stopped."""
    status = scope.status
    had_server = status.has_server
    names_settled = (status.dns is None if deleting
                     else dns_step.stopped_settled(scope, stopped_by))
    if status.phase == Phase.STOPPED and not had_server and names_settled:
        status.stopped_by = stopped_by  # e.g. an idle stop the user now confirms
        return Outcome.done()  # already stopped: no cloud calls at all
    if had_server:
        if status.phase != Phase.STOPPING and not deleting:
            why = (status.reason(T.IDLE) if stopped_by is not StoppedBy.USER
                   else "spec.running is false")
            scope.emit("Normal", "Stopping", f"stopping ({stopped_by}): {why}")
        status.phase = Phase.STOPPING
        status.stopped_by = stopped_by
        if backup and not wants_force_stop(scope.annotations):
            scope.agent_credentials = await owned_secrets.ensure_agent_credentials(scope)
            # Uncommitted work onto a WIP branch first, so the backup holds it too.
            outcome = await prestop_step.before_stop(scope, stopped_by)
            if outcome is not None:
                return outcome
            outcome = await backup_step.before_stop(scope)
            if outcome is not None:
                return outcome
    # The server goes first (after its backup), then its records; their cloud calls
    # go ahead of creates in the request budget.
    with budget.teardown():
        outcome = await server_step.delete(scope)
        if outcome is None:
            outcome = await (dns_step.delete(scope) if deleting
                             else dns_step.stop(scope, stopped_by))
    if outcome is not None:
        return outcome

    if status.phase != Phase.STOPPED or had_server:
        status.stopped_at = scope.now()
        scope.emit("Normal", "Stopped", f"workspace stopped ({stopped_by})")
    status.phase = Phase.STOPPED
    status.stopped_by = stopped_by
    status.secrets_version = None
    status.agent_endpoint = None
    status.failed_agent_polls = None
    status.started_at = None
    status.stopping_since = None
    if status.urls is not None:
        status.urls.state = (UrlState.GATEWAY if dns_step.at_gateway(status)
                             else UrlState.STOPPED)
    status.condition(T.SERVER_READY, False, Reason.STOPPED, "no server while stopped")
    status.condition(T.AGENT_READY, False, Reason.STOPPED, "no agent while stopped")
    if status.activity is not None:
        status.activity.agent_state = AgentState.ABSENT
    return Outcome.done()


def _summarize(scope: Scope) -> None:
    """Ready and phase from the step conditions (phase is only a human summary)."""
    status = scope.status
    phase = status.phase
    if phase in (Phase.STOPPED, Phase.STOPPING, Phase.DELETING):
        assert phase is not None
        status.condition(T.READY, False, Reason.NOT_RUNNING,
                         f"workspace is {phase.lower()}"
                         + (f" ({status.stopped_by})" if status.stopped_by else ""))
        return
    if phase == Phase.FAILED and not status.has_server:
        return  # refused before any server (the data key, restore-from): Ready says why
    parts = (T.SERVER_READY, T.DNS_READY, T.AGENT_READY)
    if all(status.is_true(t) for t in parts):
        url = (status.urls.workspace if status.urls else None) or scope.host
        status.condition(T.READY, True, Reason.READY, f"{url} is ready")
        status.phase = Phase.RUNNING
        return
    for type_ in parts:
        if not status.is_true(type_):
            reason = status.reason(type_) or Reason.PROGRESSING
            status.condition(T.READY, False, reason, f"{type_}: {status.message(type_)}")
            if type_ == T.SERVER_READY and reason in _FAILED_REASONS:
                status.phase = Phase.FAILED
            elif not status.has_server:
                status.phase = Phase.CREATING
            else:
                status.phase = Phase.STARTING
            return
