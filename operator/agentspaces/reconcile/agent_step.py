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
from typing import Any

from agentspaces.agent_client import (
    AgentAuthError,
    AgentCertificateMismatch,
    AgentError,
    AgentUnreachable,
)
from agentspaces.api import conditions as C
from agentspaces.clouds.hetzner import ServerInfo
from agentspaces.persistence.keys import DataKey
from agentspaces.pki import AgentCredentials
from agentspaces.reconcile import backup_step
from agentspaces.reconcile.idle import ActivityReport, IdleInputs, decide
from agentspaces.reconcile.owned_secrets import Access
from agentspaces.reconcile.scope import Outcome, Scope
from agentspaces.reconcile.status import iso, parse_time
from agentspaces.vmconfig.agent_bundle import load_agent_bundle

BOOTING_STAGES = ("waiting-for-start", "restoring", "cloning", "starting-devcontainer")
PERMANENT_WAIT = 300.0
ACTIVITY_RESOLUTION = timedelta(minutes=1)


def secrets_version(scope: Scope, access: Access) -> str:
    """A digest of everything delivered to the agent (salted, not reversible)."""
    assert scope.creds is not None
    digest = hashlib.sha256(scope.ref.uid.encode())
    digest.update(access.scrypt_hash.encode())
    digest.update(scope.creds.workspace_secrets_fingerprint().encode())
    digest.update(",".join(map(str, scope.creds.spec.public_ports)).encode())
    return digest.hexdigest()[:20]


def _unreachable(scope: Scope, err: Exception) -> Outcome | None:
    status = scope.status
    failures = int(status.get("failedAgentPolls") or 0) + 1
    status.set("failedAgentPolls", failures)
    if not status.is_true(C.AGENT_READY) and status.reason(C.AGENT_READY) != C.AGENT_UNREACHABLE:
        status.condition(C.AGENT_READY, False, C.AGENT_BOOTING,
                         "waiting for the workspace agent to come up")
        return Outcome.after(scope.runtime.settings.boot_poll, "agent booting")
    if failures >= scope.runtime.settings.unreachable_after:
        status.condition(C.AGENT_READY, False, C.AGENT_UNREACHABLE,
                         f"{failures} polls failed: {err}")
    return None


async def ensure(scope: Scope, server: ServerInfo, access: Access,
                 agent_creds: AgentCredentials, data_key: DataKey | None) -> Outcome | None:
    assert scope.creds is not None
    status = scope.status
    url = f"https://{server.ipv4}:{scope.creds.klass.agent_port}"
    status.set("agentEndpoint", {"url": url,
                                 "certificateSHA256": agent_creds.fingerprint_sha256})
    scope.agent_credentials = agent_creds
    client = scope.agent_client()
    try:
        async with scope.runtime.agent_slots:
            doc = await client.status()
            if doc.get("bootStage") == "awaiting-agent":
                # The VM's loader waits for the agent itself (too big for user-data).
                await client.put_agent_bundle(load_agent_bundle().data)
                status.condition(C.AGENT_READY, False, C.AGENT_BOOTING,
                                 "agent delivered to the VM")
                return Outcome.after(scope.runtime.settings.boot_poll, "agent delivered")
            version = secrets_version(scope, access)
            if (doc.get("secrets") or {}).get("version") != version:
                await client.put_secrets(
                    version=version, basic_auth_username=access.username,
                    basic_auth_scrypt_hash=access.scrypt_hash,
                    anthropic_api_key=scope.creds.anthropic_api_key,
                    repository_token=scope.creds.repository_token)
                await client.put_config(scope.creds.spec.public_ports)
                status.set("secretsVersion", version)
                scope.emit("Normal", "SecretsDelivered", "workspace secrets delivered to "
                           "the agent")
            if doc.get("bootStage") == "waiting-for-start":
                return await _start(scope, data_key)
    except AgentCertificateMismatch as err:
        status.condition(C.AGENT_READY, False, C.AGENT_CERTIFICATE_MISMATCH, str(err))
        scope.emit("Warning", C.AGENT_CERTIFICATE_MISMATCH, str(err))
        return Outcome.after(PERMANENT_WAIT, "certificate mismatch")
    except AgentAuthError as err:
        status.condition(C.AGENT_READY, False, C.CREDENTIALS_INVALID, str(err))
        return Outcome.after(PERMANENT_WAIT, "agent refused the token")
    except AgentUnreachable as err:
        return _unreachable(scope, err)
    except AgentError as err:
        status.condition(C.AGENT_READY, False, C.AGENT_UNREACHABLE, str(err))
        return Outcome.after(scope.runtime.settings.boot_poll * 2, "agent error")

    status.set("failedAgentPolls", None)
    return _observe(scope, doc)


async def _start(scope: Scope, data_key: DataKey | None) -> Outcome:
    plan = await backup_step.restore_plan(scope, data_key)
    if isinstance(plan, Outcome):
        scope.status.condition(C.AGENT_READY, False, C.AGENT_BOOTING,
                               "not started: the backup to restore is unusable "
                               f"({scope.status.reason(C.BACKUP_RESTORED)})")
        return plan
    await scope.agent_client().start(plan)
    scope.status.condition(C.AGENT_READY, False, C.AGENT_BOOTING,
                           "restoring the backup" if plan else "starting")
    return Outcome.after(scope.runtime.settings.boot_poll, "agent starting")


def _observe(scope: Scope, doc: dict[str, Any]) -> Outcome | None:
    status = scope.status
    stage = doc.get("bootStage")
    restore = doc.get("restore") or {}
    if restore.get("state") == "succeeded" and status.reason(C.BACKUP_RESTORED) != C.RESTORED:
        status.condition(C.BACKUP_RESTORED, True, C.RESTORED,
                         f"restored {status.get('restore', 'object') or 'the last backup'}")
    devcontainer = doc.get("devcontainer") or {}
    _devcontainer_trust(scope, devcontainer)
    if stage == "failed" and devcontainer.get("state") == "refused":
        status.condition(C.AGENT_READY, False, C.DEVCONTAINER_REFUSED,
                         devcontainer.get("message") or "the repository's devcontainer.json "
                         "needs a class that trusts the repository")
        return Outcome.after(PERMANENT_WAIT, "devcontainer refused")
    if stage == "failed":
        if restore.get("state") == "failed":
            reason = restore.get("reason") or C.RESTORE_FAILED
            message = f"restore refused: {restore.get('error') or reason}"
            status.condition(C.BACKUP_RESTORED, False, reason, message)
            scope.emit("Warning", reason, message)
        message = doc.get("bootMessage") or "the workspace failed to start"
        status.condition(C.AGENT_READY, False, "BootFailed", message)
        return Outcome.after(PERMANENT_WAIT, "boot failed")
    if stage in BOOTING_STAGES:
        status.condition(C.AGENT_READY, False, C.AGENT_BOOTING, f"boot stage: {stage}")
        return Outcome.after(scope.runtime.settings.boot_poll, "agent booting")
    simulated = bool(doc.get("simulated"))
    status.condition(C.AGENT_READY, True, C.AGENT_SIMULATED if simulated
                     else C.AGENT_READY_REASON,
                     "agent ready (simulated VM: no devcontainer)" if simulated
                     else "agent ready, devcontainer running")
    _record_activity(scope, doc.get("activity") or {})
    return None


def _devcontainer_trust(scope: Scope, devcontainer: dict[str, Any]) -> None:
    """DevcontainerRestricted from what the agent vetted (nothing until it has)."""
    policy = devcontainer.get("policy")
    removed = [str(k) for k in devcontainer.get("removed") or []]
    if devcontainer.get("state") == "refused":
        scope.status.condition(C.DEVCONTAINER_RESTRICTED, True, C.DEVCONTAINER_REFUSED,
                               str(devcontainer.get("message") or "refused"))
    elif policy == "restricted" and removed:
        shown = ", ".join(removed[:20]) + (f" and {len(removed) - 20} more"
                                           if len(removed) > 20 else "")
        scope.status.condition(C.DEVCONTAINER_RESTRICTED, True, C.KEYS_REMOVED,
                               "removed from the repository's devcontainer.json (the class "
                               f"does not trust the repository): {shown}")
    elif policy == "restricted":
        scope.status.condition(C.DEVCONTAINER_RESTRICTED, False, C.NOTHING_REMOVED,
                               "the repository's devcontainer.json asks for nothing outside "
                               "the container")
    elif policy == "trusted":
        scope.status.condition(C.DEVCONTAINER_RESTRICTED, False, C.REPOSITORY_TRUSTED,
                               "the class trusts the repository's devcontainer.json")
    elif policy == "generated":
        scope.status.condition(C.DEVCONTAINER_RESTRICTED, False, C.NOT_FROM_REPOSITORY,
                               "the devcontainer config is generated, not the repository's")


def _record_activity(scope: Scope, activity: dict[str, Any]) -> None:
    try:
        scope.activity = ActivityReport.from_status(activity)
    except ValueError:
        scope.activity = None
        return
    report = scope.activity
    last = report.last_activity
    known = parse_time(scope.status.get("activity", "lastActivityTime"))
    if last is not None and known is not None and \
            timedelta(0) <= last - known < ACTIVITY_RESOLUTION:
        last = known  # finer than a minute is noise, and a status write per poll
    scope.status.update(
        "activity", agentState=report.agent_state,
        agentStateSince=iso(report.agent_state_since),
        lastActivityTime=iso(last),
        reasons=sorted(report.reasons) or None)


def idle_stop(scope: Scope) -> str | None:
    """Run the idle policy on the latest report; the stoppedBy value when it says stop."""
    assert scope.creds is not None
    status = scope.status
    started = parse_time(status.get("startedAt")) or scope.runtime.clock()
    spec = scope.creds.spec
    decision = decide(IdleInputs(
        now=scope.runtime.clock(), started_at=started, report=scope.activity,
        failed_polls=int(status.get("failedAgentPolls") or 0),
        timeout=spec.idle.timeout, grace=spec.idle.grace,
        agent_busy_cap=spec.idle.agent_busy_cap, lifetime_max=spec.lifetime_max,
        unreachable_after=scope.runtime.settings.unreachable_after,
        min_quiet=min(timedelta(minutes=2), spec.idle.timeout / 2)))
    if decision.stop:
        message = decision.message
    elif decision.idle and decision.idle_since is not None:
        # Stable between polls (no elapsed counters), so an idle workspace's status is
        # written once, not on every poll.
        message = (f"idle since {iso(decision.idle_since)}; stops at "
                   f"{iso(decision.idle_since + spec.idle.timeout)} unless there is activity")
    elif decision.reason == C.AGENT_WORKING and scope.activity is not None:
        message = f"agent working since {iso(scope.activity.agent_state_since)}"
    else:
        message = decision.message if decision.agent_unreachable else "active"
    status.condition(C.IDLE, "Unknown" if decision.agent_unreachable else decision.idle,
                     decision.reason, message)
    status.update("activity", idle=decision.idle, idleSince=iso(decision.idle_since))
    return decision.stopped_by if decision.stop else None


# --- step contract -------------------------------------------------------------------

async def reconcile(scope: Scope) -> Outcome | None:
    assert scope.server is not None and scope.access is not None
    assert scope.agent_credentials is not None
    return await ensure(scope, scope.server, scope.access, scope.agent_credentials,
                        scope.data_key)


async def delete(scope: Scope) -> Outcome | None:
    """The agent goes with its server: nothing of its own to remove."""
    return None
