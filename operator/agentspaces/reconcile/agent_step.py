"""The workspace agent: deliver secrets, start the boot (with restore), and poll it.

Every poll is one HTTPS request to the VM over a pinned certificate and costs no
Hetzner call. Secrets are re-delivered whenever what the agent reports as its secrets
version differs from the current one, so a rotated Secret reaches the VM within one
poll interval and a rebooted agent is refilled. Activity goes to status only when it
changed; the idle policy decides on it.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from agentspaces.agent_client import (
    AgentAuthError,
    AgentCertificateMismatch,
    AgentError,
    AgentUnreachable,
)
from agentspaces.api.enums import ConditionStatus, Reason, StoppedBy
from agentspaces.api.enums import ConditionType as T
from agentspaces.api.status import ActivityStatus, AgentEndpointStatus
from agentspaces.reconcile import backup_step, token_usage
from agentspaces.reconcile.idle import ActivityReport, IdleInputs, decide
from agentspaces.reconcile.outcome import Outcome, Wait
from agentspaces.reconcile.owned_secrets import Access
from agentspaces.reconcile.scope import Scope
from agentspaces.vmconfig.agent_bundle import load_agent_bundle
from agentspaces.vmconfig.claim import render_claim
from agentspaces.vmconfig.trust import ca_bundle_digest, vm_ca_bundle
from agentspaces_vm.contracts import (
    AgentStatus,
    BootStage,
    DevcontainerReport,
    RestoreState,
    format_time,
)

ACTIVITY_RESOLUTION = timedelta(minutes=1)
"""Newer activity times closer than this to the recorded one are not written: finer
is noise, and would be a status write on every poll."""


def secrets_version(scope: Scope, access: Access, *, share_links: bool = False) -> str:
    """A digest of everything delivered to the agent (salted, not reversible).
    `share_links`: the agent takes the share-link and session keys and link ports."""
    digest = hashlib.sha256(scope.ref.uid.encode())
    digest.update(access.scrypt_hash.encode())
    digest.update(scope.creds.workspace_secrets_fingerprint().encode())
    digest.update(",".join(map(str, scope.spec.public_ports)).encode())
    if share_links:  # a new link key (revoking every link) goes out at once
        digest.update(f"\nkeys:{access.share_link_key}:{access.session_key}".encode())
        digest.update(("\nlink:" + ",".join(map(str, scope.spec.link_ports))).encode())
    bundle = ca_bundle_digest(scope.klass.ca_bundle)
    if bundle:  # only then: versions of classes without one stay as they were
        digest.update(bundle.encode())
    return digest.hexdigest()[:20]


# --- step contract -----------------------------------------------------------------------

async def reconcile(scope: Scope) -> Outcome | None:
    """Deliver the agent, its secrets and the start, then observe it: None once the
    agent is ready (its activity on `scope.activity`), else the Outcome to wait for."""
    server, access, credentials = scope.server, scope.access, scope.agent_credentials
    assert server is not None and access is not None and credentials is not None, \
        "runs after owned_secrets.ensure and the server step"
    status = scope.status
    status.agent_endpoint = AgentEndpointStatus(
        url=f"https://{server.ipv4}:{scope.klass.agent_port}",
        certificate_sha256=credentials.fingerprint_sha256)
    client = scope.agent()
    try:
        async with scope.runtime.agent_slots:
            doc: AgentStatus = await client.agent_status()
            if doc.boot_stage is BootStage.AWAITING_CLAIM:
                # A warm-pool server this workspace claimed: it learns whose it is, then
                # waits for the agent like any new server.
                await client.claim(render_claim(scope.ref, scope.spec, scope.klass,
                                                host=scope.host))
                scope.emit("Normal", "ServerClaimed", f"server {server.id} now runs this "
                           "workspace")
                doc = await client.agent_status()
            if doc.boot_stage is BootStage.AWAITING_AGENT:
                # The VM's loader waits for the agent itself (too big for user-data).
                await client.put_agent_bundle(load_agent_bundle().data)
                status.condition(T.AGENT_READY, False, Reason.AGENT_BOOTING,
                                 "agent delivered to the VM")
                return Outcome.after(scope.runtime.settings.boot_poll, "agent delivered")
            # An agent from before share links refuses their fields: it gets none.
            keys = doc.share_links
            version = secrets_version(scope, access, share_links=keys)
            if doc.secrets_version != version:
                # The config first: the secrets' version, written last, says "applied".
                await client.put_config(scope.spec.public_ports,
                                        ca_bundle=vm_ca_bundle(scope.klass.ca_bundle),
                                        link_ports=scope.spec.link_ports if keys else ())
                await client.put_secrets(
                    version=version, basic_auth_username=access.username,
                    basic_auth_scrypt_hash=access.scrypt_hash,
                    anthropic_api_key=scope.creds.anthropic_api_key,
                    repository_token=scope.creds.repository_token,
                    registry_config=scope.creds.registry_config,
                    claude_oauth_token=scope.creds.claude_oauth_token,
                    gateway=scope.creds.gateway_delivery(),
                    share_link_key=access.share_link_key if keys else None,
                    session_key=access.session_key if keys else None)
                status.secrets_version = version
                scope.emit("Normal", "SecretsDelivered", "workspace secrets delivered to "
                           "the agent")
            if doc.boot_stage is BootStage.WAITING_FOR_START:
                return await _start(scope)
    except AgentCertificateMismatch as err:
        status.condition(T.AGENT_READY, False, Reason.AGENT_CERTIFICATE_MISMATCH, str(err))
        scope.emit("Warning", Reason.AGENT_CERTIFICATE_MISMATCH, str(err))
        return Outcome.after(Wait.PERMANENT, "certificate mismatch")
    except AgentAuthError as err:
        status.condition(T.AGENT_READY, False, Reason.CREDENTIALS_INVALID, str(err))
        return Outcome.after(Wait.PERMANENT, "agent refused the token")
    except AgentUnreachable as err:
        return _unreachable(scope, err)
    except AgentError as err:
        status.condition(T.AGENT_READY, False, Reason.AGENT_UNREACHABLE, str(err))
        return Outcome.after(scope.runtime.settings.boot_poll * 2, "agent error")

    status.failed_agent_polls = None
    return _observe(scope, doc)


async def delete(scope: Scope) -> Outcome | None:
    """The agent goes with its server: nothing of its own to remove."""
    return None


def idle_stop(scope: Scope) -> StoppedBy | None:
    """Run the idle policy on the agent's latest report; why to stop, when it says so.

    A poll the agent did not answer (fewer than `unreachable_after` in a row) decides on
    the report last recorded in status, not on "no report": a missed poll is not
    evidence that nobody is there.
    """
    status = scope.status
    now = scope.now()
    spec = scope.spec
    report = scope.activity or ActivityReport.from_status(status.activity)
    decision = decide(IdleInputs(
        now=now, started_at=status.started_at or now, report=report,
        failed_polls=status.failed_agent_polls or 0,
        timeout=spec.idle.timeout, grace=spec.idle.grace,
        agent_busy_cap=spec.idle.agent_busy_cap, lifetime_max=spec.lifetime_max,
        unreachable_after=scope.runtime.settings.unreachable_after,
        min_quiet=min(timedelta(minutes=2), spec.idle.timeout / 2)))
    if decision.stop:
        message = decision.message
    elif decision.idle and decision.idle_since is not None:
        # Stable between polls (no elapsed counters), so an idle workspace's status is
        # written once, not on every poll.
        message = (f"idle since {format_time(decision.idle_since)}; stops at "
                   f"{format_time(decision.idle_since + spec.idle.timeout)} unless there "
                   "is activity")
    elif decision.reason is Reason.AGENT_WORKING and report is not None:
        message = f"agent working since {format_time(report.agent_state_since)}"
    else:
        message = decision.message if decision.agent_unreachable else "active"
    status.condition(T.IDLE, ConditionStatus.UNKNOWN if decision.agent_unreachable
                     else decision.idle, decision.reason, message)
    activity = status.activity = status.activity or ActivityStatus()
    activity.idle = decision.idle
    activity.idle_since = decision.idle_since
    return decision.stopped_by


# --- one poll ----------------------------------------------------------------------------

def _unreachable(scope: Scope, err: Exception) -> Outcome | None:
    status = scope.status
    failures = (status.failed_agent_polls or 0) + 1
    status.failed_agent_polls = failures
    if not status.is_true(T.AGENT_READY) and \
            status.reason(T.AGENT_READY) != Reason.AGENT_UNREACHABLE:
        status.condition(T.AGENT_READY, False, Reason.AGENT_BOOTING,
                         "waiting for the workspace agent to come up")
        return Outcome.after(scope.runtime.settings.boot_poll, "agent booting")
    if failures >= scope.runtime.settings.unreachable_after:
        status.condition(T.AGENT_READY, False, Reason.AGENT_UNREACHABLE,
                         f"{failures} polls failed: {err}")
    return None


async def _start(scope: Scope) -> Outcome:
    plan = await backup_step.restore_plan(scope, scope.data_key)
    if isinstance(plan, Outcome):
        scope.status.condition(T.AGENT_READY, False, Reason.AGENT_BOOTING,
                               "not started: the backup to restore is unusable "
                               f"({scope.status.reason(T.BACKUP_RESTORED)})")
        return plan
    await scope.agent().start(plan)
    scope.status.condition(T.AGENT_READY, False, Reason.AGENT_BOOTING,
                           "restoring the backup" if plan else "starting")
    return Outcome.after(scope.runtime.settings.boot_poll, "agent starting")


def _observe(scope: Scope, doc: AgentStatus) -> Outcome | None:
    status = scope.status
    restore = doc.restore
    if restore.state is RestoreState.SUCCEEDED and \
            status.reason(T.BACKUP_RESTORED) != Reason.RESTORED:
        restored = (status.restore.object if status.restore else None) or "the last backup"
        status.condition(T.BACKUP_RESTORED, True, Reason.RESTORED, f"restored {restored}")
        scope.emit("Normal", Reason.RESTORED, f"restored {restored}")
    _devcontainer_trust(scope, doc.devcontainer)
    if doc.boot_stage is BootStage.FAILED and doc.devcontainer.state == "refused":
        status.condition(T.AGENT_READY, False, Reason.DEVCONTAINER_REFUSED,
                         doc.devcontainer.message or "the repository's devcontainer.json "
                         "needs a class that trusts the repository")
        return Outcome.after(Wait.PERMANENT, "devcontainer refused")
    if doc.boot_stage is BootStage.FAILED:
        if restore.state is RestoreState.FAILED:
            # The agent names the reason (one CamelCase word, e.g. BackupCorrupt).
            reason = restore.reason or Reason.RESTORE_FAILED
            message = f"restore refused: {restore.error or reason}"
            status.condition(T.BACKUP_RESTORED, False, reason, message)
            scope.emit("Warning", reason, message)
        status.condition(T.AGENT_READY, False, Reason.BOOT_FAILED,
                         doc.boot_message or "the workspace failed to start")
        return Outcome.after(Wait.PERMANENT, "boot failed")
    if doc.boot_stage.booting:
        status.condition(T.AGENT_READY, False, Reason.AGENT_BOOTING,
                         f"boot stage: {doc.boot_stage}")
        return Outcome.after(scope.runtime.settings.boot_poll, "agent booting")
    if not status.is_true(T.AGENT_READY):
        scope.emit("Normal", "Ready", f"agent ready at boot stage {doc.boot_stage}")
    if doc.simulated:
        status.condition(T.AGENT_READY, True, Reason.AGENT_SIMULATED,
                         "agent ready (simulated VM: no devcontainer)")
    else:
        status.condition(T.AGENT_READY, True, Reason.AGENT_READY,
                         "agent ready, devcontainer running")
    _record_activity(scope, doc)
    status.usage = token_usage.record(status.usage, doc.usage, scope.klass.token_prices)
    return None


def _devcontainer_trust(scope: Scope, devcontainer: DevcontainerReport) -> None:
    """DevcontainerRestricted from what the agent vetted (nothing until it has)."""
    status = scope.status
    policy, removed = devcontainer.policy, devcontainer.removed
    if devcontainer.state == "refused":
        status.condition(T.DEVCONTAINER_RESTRICTED, True, Reason.DEVCONTAINER_REFUSED,
                         devcontainer.message or "refused")
    elif policy == "restricted" and removed:
        shown = ", ".join(removed[:20]) + (f" and {len(removed) - 20} more"
                                           if len(removed) > 20 else "")
        status.condition(T.DEVCONTAINER_RESTRICTED, True, Reason.KEYS_REMOVED,
                         "removed from the repository's devcontainer.json (the class "
                         f"does not trust the repository): {shown}")
    elif policy == "restricted":
        status.condition(T.DEVCONTAINER_RESTRICTED, False, Reason.NOTHING_REMOVED,
                         "the repository's devcontainer.json asks for nothing outside "
                         "the container")
    elif policy == "trusted":
        status.condition(T.DEVCONTAINER_RESTRICTED, False, Reason.REPOSITORY_TRUSTED,
                         "the class trusts the repository's devcontainer.json")
    elif policy == "generated":
        status.condition(T.DEVCONTAINER_RESTRICTED, False, Reason.NOT_FROM_REPOSITORY,
                         "the devcontainer config is generated, not the repository's")


def _record_activity(scope: Scope, doc: AgentStatus) -> None:
    """The agent's report on the scope (for the idle policy) and, when it changed, in
    status.activity; idle and idleSince there belong to idle_stop."""
    if doc.activity is None:  # the tracker has no report yet
        scope.activity = None
        return
    report = scope.activity = ActivityReport.from_agent(doc.activity)
    activity = scope.status.activity = scope.status.activity or ActivityStatus()
    last, known = report.last_activity, activity.last_activity_time
    if last is not None and known is not None and \
            timedelta(0) <= last - known < ACTIVITY_RESOLUTION:
        last = known
    activity.agent_state = report.agent_state
    activity.agent_state_since = report.agent_state_since
    activity.last_activity_time = last
    activity.reasons = sorted(report.reasons)
