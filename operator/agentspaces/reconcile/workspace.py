"""The workspace state machine: one level-based reconcile, one finalizer.

Every trigger (create, spec or annotation change, restart, the poll timer) runs the
same `reconcile`: resolve credentials, decide whether the workspace should run, then
walk the steps (server -> DNS -> agent) or the stop sequence (backup -> server ->
DNS). Each step records its condition and either finishes or asks to be called again
later; nothing here waits in a loop.
"""

from __future__ import annotations

from agentspaces.api import conditions as C
from agentspaces.reconcile import (
    agent_step,
    backup_step,
    class_policy,
    dns_step,
    firewall_step,
    host_claim,
)
from agentspaces.reconcile.credentials import CredentialsProblem, resolve
from agentspaces.reconcile.lifecycle import decide_intent, wants_force_stop
from agentspaces.reconcile.owned_secrets import ensure_access, ensure_agent_credentials
from agentspaces.reconcile.scope import Outcome, Scope
from agentspaces.reconcile.secret_ownership import SecretConflict
from agentspaces.reconcile.server_step import delete_server, ensure_server
from agentspaces.reconcile.status import StatusDraft, iso
from agentspaces.vmconfig.userdata import UserDataTooLarge, render_user_data

CREDENTIALS_RETRY = 30.0
USER_DATA_RETRY_POLLS = 10  # only a spec change helps; each retry costs one lookup

# ServerReady reasons a retry cannot fix: the user has to change something.
_FAILED_REASONS = {C.SERVER_NAME_TAKEN, C.INVALID_INPUT, C.SERVER_TYPE_NOT_FOUND,
                   C.LOCATION_NOT_FOUND, C.IMAGE_NOT_FOUND, C.RESOURCE_LIMIT_EXCEEDED,
                   C.USER_DATA_TOO_LARGE}


async def reconcile(scope: Scope) -> Outcome:
    status = scope.status
    status.init_conditions()
    status.set("observedGeneration", scope.ref.generation)
    claimed = await host_claim.ensure(scope)  # before any cloud call, stopped or not
    if claimed is not None:
        return claimed

    intent = decide_intent(scope.spec_raw, status.data, scope.annotations)
    if _settled_stop(status, intent.running):
        # Stopped with nothing left in any cloud: the poll costs no API call at all.
        status.set("stoppedBy", intent.stopped_by)
        status.set("wakeHandled", intent.wake_handled)
        return Outcome.done()

    resolved = await resolve(scope.runtime.kube, scope.spec_raw, scope.ref.namespace,
                             scope.runtime.settings.namespace)
    if isinstance(resolved, CredentialsProblem):
        return _credentials_missing(scope, resolved)
    scope.creds = resolved
    status.condition(C.CREDENTIALS_AVAILABLE, True, C.CREDENTIALS_FOUND,
                     f"WorkspaceClass {resolved.klass.name} and its Secrets are readable")
    status.set("hostname", scope.label)
    status.set("wakeHandled", intent.wake_handled)
    if intent.woke:
        scope.emit("Normal", "Waking", "woken by the agentspaces.dev/wake annotation")
        status.set("stoppedBy", None)
    if not _class_allows(scope, intent.running):
        # No cloud call was made: check again at the poll, e.g. for a relaxed class.
        return Outcome.after(scope.runtime.settings.poll_interval, C.NOT_ALLOWED_BY_CLASS)
    try:
        if intent.running:
            status.set("stoppedBy", None)
            outcome = await _ensure_running(scope)
        else:
            assert intent.stopped_by is not None
            outcome = await _ensure_stopped(scope, intent.stopped_by, backup=True)
    except SecretConflict as conflict:
        return _secret_conflict(scope, conflict)
    _summarize(scope)
    return outcome


async def finalize(scope: Scope) -> Outcome:
    """Tear everything down; the finalizer is released when this returns done."""
    status = scope.status
    resolved = await resolve(scope.runtime.kube, scope.spec_raw, scope.ref.namespace,
                             scope.runtime.settings.namespace)
    if isinstance(resolved, CredentialsProblem):
        if status.get("server", "id") is None and not status.get("dns", "records"):
            await host_claim.release(scope)
            return Outcome.done()  # nothing was ever created
        # Without credentials we cannot clean up; deleting anyway would leak a billed
        # server, so the Workspace stays Terminating and says why.
        _credentials_missing(scope, resolved)
        scope.emit("Warning", resolved.reason,
                   f"cannot clean up until credentials are back: {resolved.message}")
        return Outcome.after(CREDENTIALS_RETRY, "credentials missing during delete")
    scope.creds = resolved
    status.set("phase", "Deleting")
    retain = resolved.spec.persistence_on_delete == "Retain"
    try:
        outcome = await _ensure_stopped(scope, status.get("stoppedBy") or "user",
                                        backup=retain)
    except SecretConflict as conflict:
        return _secret_conflict(scope, conflict)
    if outcome.requeue is not None:
        return outcome
    outcome = await backup_step.on_delete(scope)
    if outcome.requeue is not None:
        return outcome
    await host_claim.release(scope)  # last: the name stays ours until all is gone
    scope.emit("Normal", "Deleted", "server, DNS records and owned objects cleaned up")
    return Outcome.done()


def _settled_stop(status: StatusDraft, running: bool) -> bool:
    return (not running and status.get("phase") == "Stopped"
            and status.get("server", "id") is None and not status.get("dns")
            and status.is_true(C.CREDENTIALS_AVAILABLE))


def _class_allows(scope: Scope, running: bool) -> bool:
    """Record Accepted; False when a server would have to be created against the
    class's limits (a running one is kept, see docs/design-decisions.md)."""
    assert scope.creds is not None
    status = scope.status
    verdict = class_policy.check(scope.creds.spec, scope.creds.klass)
    has_server = status.get("server", "id") is not None
    ok, reason, message = class_policy.accepted_condition(verdict, scope.creds.klass.name,
                                                          has_server)
    if not ok and status.reason(C.ACCEPTED) != reason:
        scope.emit("Warning", reason, message)
    status.condition(C.ACCEPTED, ok, reason, message)
    if verdict.allowed or not running or has_server:
        return True
    status.condition(C.READY, False, reason, message)
    status.set("phase", "Failed")
    return False


def _credentials_missing(scope: Scope, problem: CredentialsProblem) -> Outcome:
    status = scope.status
    status.condition(C.CREDENTIALS_AVAILABLE, False, problem.reason, problem.message)
    status.condition(C.READY, False, problem.reason, problem.message)
    if status.get("server", "id") is None:
        status.set("phase", "Pending")
    return Outcome.after(CREDENTIALS_RETRY, problem.reason)


def _secret_conflict(scope: Scope, conflict: SecretConflict) -> Outcome:
    """Someone else's Secret sits at one of our names: stop here and say so."""
    status = scope.status
    status.condition(C.READY, False, C.SECRET_CONFLICT, str(conflict))
    if status.get("server", "id") is None:
        status.set("phase", "Failed")
    scope.emit("Warning", C.SECRET_CONFLICT, str(conflict))
    return Outcome.after(CREDENTIALS_RETRY, C.SECRET_CONFLICT)


async def _ensure_running(scope: Scope) -> Outcome:
    assert scope.creds is not None
    status = scope.status
    access = await ensure_access(scope)
    agent_creds = await ensure_agent_credentials(scope)
    data_key = await backup_step.ensure_data_key(scope)
    if data_key is None and backup_step.enabled(scope):
        # Backups cannot be read or written: do not start (and pay for) a server that
        # would come up on empty data. BackupRestored says why.
        cond = status.reason(C.BACKUP_RESTORED) or C.DATA_KEY_MISSING
        status.condition(C.READY, False, cond, "the backup data key cannot be used")
        if status.get("server", "id") is None:
            status.set("phase", "Failed")
        return Outcome.after(backup_step.FAILED_RETRY, "data key unusable")
    if data_key is not None and status.get("server", "id") is None:
        # A tampered or rolled-back backup refuses the start: find out before paying
        # for a server (the agent step builds the plan it sends again, fresh).
        refused = await backup_step.restore_plan(scope, data_key)
        if isinstance(refused, Outcome):
            cond = status.reason(C.BACKUP_RESTORED) or C.RESTORE_FAILED
            status.condition(C.READY, False, cond, "the backups cannot be restored")
            status.set("phase", "Failed")
            return refused
    if status.get("phase") in (None, "Pending", "Stopped", "Failed"):
        status.set("phase", "Creating")
        status.set("stoppedAt", None)

    outcome = await firewall_step.ensure(scope)  # before a server could exist unprotected
    if outcome is not None:
        return outcome
    try:
        server = await ensure_server(scope, lambda fresh: render_user_data(
            scope.ref, scope.creds.spec, scope.creds.klass,  # type: ignore[union-attr]
            host=scope.host, agent_credentials=fresh))
    except UserDataTooLarge as err:
        # Rendered just before the create call: nothing was created.
        if status.reason(C.SERVER_READY) != C.USER_DATA_TOO_LARGE:
            scope.emit("Warning", C.USER_DATA_TOO_LARGE, str(err))
        status.condition(C.SERVER_READY, False, C.USER_DATA_TOO_LARGE, str(err))
        return Outcome.after(scope.runtime.settings.poll_interval * USER_DATA_RETRY_POLLS,
                             C.USER_DATA_TOO_LARGE)
    if isinstance(server, Outcome):
        return server

    outcome = await dns_step.ensure(scope, server)
    if outcome is not None:
        return outcome

    outcome = await agent_step.ensure(scope, server, access, agent_creds, data_key)
    if outcome is not None:
        return outcome

    stop = agent_step.idle_stop(scope)
    if stop is not None:
        status.set("stoppedBy", stop)
        scope.emit("Normal", "Stopping", f"stopping: {status.reason(C.IDLE)}")
        return await _ensure_stopped(scope, stop, backup=True)
    if data_key is not None and backup_step.scheduled_backup_due(scope):
        outcome = await backup_step.run_backup(scope, data_key)
        if outcome is not None:
            return outcome
    return Outcome.done()


async def _ensure_stopped(scope: Scope, stopped_by: str, backup: bool) -> Outcome:
    """Back up, delete the server, remove DNS; idempotent when already stopped."""
    status = scope.status
    has_server = status.get("server", "id") is not None
    if status.get("phase") == "Stopped" and not has_server and not status.get("dns"):
        status.set("stoppedBy", stopped_by)  # e.g. an idle stop the user now confirms
        return Outcome.done()  # already stopped: no cloud calls at all
    if has_server:
        status.set("phase", "Stopping")
        status.set("stoppedBy", stopped_by)
        backup_step.stopping_started(scope)
        if backup and not wants_force_stop(scope.annotations):
            scope.agent_credentials = await ensure_agent_credentials(scope)
            outcome = await backup_step.backup_before_stop(scope)
            if outcome is not None:
                return outcome
    outcome = await delete_server(scope)
    if outcome is not None:
        return outcome
    outcome = await dns_step.remove(scope)
    if outcome is not None:
        return outcome

    if status.get("phase") != "Stopped" or has_server:
        status.set("stoppedAt", iso(scope.runtime.clock()))
        scope.emit("Normal", "Stopped", f"workspace stopped ({stopped_by})")
    status.set("phase", "Stopped")
    status.set("stoppedBy", stopped_by)
    status.set("secretsVersion", None)
    status.set("agentEndpoint", None)
    status.set("failedAgentPolls", None)
    status.set("startedAt", None)
    status.set("stoppingSince", None)
    if status.get("urls"):
        status.update("urls", state="stopped")
    status.condition(C.SERVER_READY, False, C.STOPPED, "no server while stopped")
    status.condition(C.AGENT_READY, False, C.STOPPED, "no agent while stopped")
    activity = status.get("activity") or {}
    if activity:
        status.update("activity", agentState="absent")
    return Outcome.done()


def _summarize(scope: Scope) -> None:
    """Ready and phase from the step conditions (phase is only a human summary)."""
    status = scope.status
    phase = status.get("phase")
    if phase in ("Stopped", "Stopping", "Deleting"):
        status.condition(C.READY, False, C.NOT_RUNNING,
                         f"workspace is {phase.lower()}"
                         + (f" ({status.get('stoppedBy')})" if status.get("stoppedBy") else ""))
        return
    if phase == "Failed" and status.get("server", "id") is None:
        return  # refused before any server (the data key, restore-from): Ready says why
    parts = (C.SERVER_READY, C.DNS_READY, C.AGENT_READY)
    if all(status.is_true(t) for t in parts):
        url = status.get("urls", "workspace") or scope.host
        status.condition(C.READY, True, C.READY_REASON, f"{url} is ready")
        status.set("phase", "Running")
        return
    for type_ in parts:
        if not status.is_true(type_):
            reason = status.reason(type_) or C.PROGRESSING
            cond = next(c for c in status.data["conditions"] if c["type"] == type_)
            status.condition(C.READY, False, reason, f"{type_}: {cond.get('message', '')}")
            if type_ == C.SERVER_READY and reason in _FAILED_REASONS:
                status.set("phase", "Failed")
            elif status.get("server", "id") is None:
                status.set("phase", "Creating")
            else:
                status.set("phase", "Starting")
            return
