"""Backups in the workspace lifecycle: data key, backup before stop, restore on start,
scheduled backups, and what happens to backups when the Workspace is deleted.

The operator holds the R2 credentials and the class key; the VM gets only presigned
URLs and the unwrapped data key of its own workspace, over the pinned agent channel.
A backup in flight is recorded in `status.pendingBackup` (no secrets), so an operator
restart picks it up instead of starting over. A stop never deletes a server whose
data could not be backed up, unless the user says so with the
`agentspaces.dev/skip-backup` annotation.

The step (reconcile/step.py): `prepare` puts the data key on the scope before a server
exists, `reconcile` takes scheduled backups while running, `before_stop` backs up
before the server goes, `delete` deletes or retains the backups with the Workspace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import timedelta

from agentspaces import metrics
from agentspaces.agent_client import AgentError, AgentUnreachable
from agentspaces.api.enums import ConditionType, Phase, Reason
from agentspaces.api.status import BackupStatus, RestoreStatus
from agentspaces.clouds.r2 import ObjectStore, ObjectStoreError
from agentspaces.persistence import backups, keys
from agentspaces.reconcile import restore_source
from agentspaces.reconcile.outcome import Outcome, Wait, cloud_failure
from agentspaces.reconcile.scope import Scope
from agentspaces.reconcile.secret_ownership import (
    KEPT_UNTIL_FINALIZED,
    RETAINED_LABEL,
    Ownership,
    ours_or_none,
    ownership,
    why_foreign,
    workspace_labels,
)
from agentspaces_vm.backup_format import DataKeyMismatch
from agentspaces_vm.contracts import JobState, RestorePlan

log = logging.getLogger(__name__)

T = ConditionType
KEY_SUFFIX = "backup-key"
RESTORE_FROM_ANNOTATION = "agentspaces.dev/restore-from"
BACKUP_PREFIX_ANNOTATION = "agentspaces.dev/backup-prefix"
ACCEPT_ROLLBACK_ANNOTATION = "agentspaces.dev/accept-rollback"
# On a retained key Secret: the last backup the deleted Workspace committed.
LAST_BACKUP_ANNOTATION = "agentspaces.dev/last-backup"


def enabled(scope: Scope) -> bool:
    return bool(scope.spec.persistence_enabled and scope.klass.storage is not None)


def store(scope: Scope) -> ObjectStore:
    storage = scope.klass.storage
    assert storage is not None
    return scope.runtime.store(storage.endpoint, storage.bucket, storage.region,
                               storage.addressing_style, scope.creds.storage_access_key or "",
                               scope.creds.storage_secret_key or "", storage.vm_endpoint)


def location(scope: Scope) -> backups.BackupLocation:
    """Where this workspace's own backups go."""
    assert scope.klass.storage is not None
    return backups.BackupLocation.for_workspace(scope.klass.storage.prefix,
                                                scope.ref.namespace, scope.ref.name,
                                                scope.ref.uid)


def restore_location(scope: Scope) -> backups.BackupLocation:
    """Where to restore from: a retained workspace's backups until this one has its own
    (see docs/backup-format.md, "Restoring a retained backup"), else its own."""
    restore = scope.status.restore
    if restore is not None and restore.prefix and scope.status.backup is None:
        return backups.BackupLocation.from_prefix(restore.prefix)
    return location(scope)


def _restore_section(scope: Scope) -> RestoreStatus:
    if scope.status.restore is None:
        scope.status.restore = RestoreStatus()
    return scope.status.restore


# --- the step -----------------------------------------------------------------------------

async def prepare(scope: Scope) -> Outcome | None:
    """The data key on the scope, and no start over backups that cannot be restored."""
    status = scope.status
    scope.data_key = await ensure_data_key(scope)
    if scope.data_key is None and enabled(scope):
        # Backups cannot be read or written: do not start (and pay for) a server that
        # would come up on empty data. BackupRestored says why.
        cond = status.reason(T.BACKUP_RESTORED) or Reason.DATA_KEY_MISSING
        status.condition(T.READY, False, cond, "the backup data key cannot be used")
        if not status.has_server:
            status.phase = Phase.FAILED
        return Outcome.after(Wait.BACKUP_FAILED, "data key unusable")
    if scope.data_key is not None and not status.has_server:
        # A tampered or rolled-back backup refuses the start: find out before paying
        # for a server (the agent step builds the plan it sends again, fresh).
        refused = await restore_plan(scope, scope.data_key)
        if isinstance(refused, Outcome):
            cond = status.reason(T.BACKUP_RESTORED) or Reason.RESTORE_FAILED
            status.condition(T.READY, False, cond, "the backups cannot be restored")
            status.phase = Phase.FAILED
            return refused
    return None


async def reconcile(scope: Scope) -> Outcome | None:
    """A scheduled backup while running, when one is due."""
    if scope.data_key is not None and scheduled_backup_due(scope):
        return await run_backup(scope, scope.data_key)
    return None


async def before_stop(scope: Scope) -> Outcome | None:
    """Back up before the server goes; None when it may be deleted."""
    if (outcome := stopping_started(scope)) is not None:
        return outcome
    if not enabled(scope):
        return None
    if not _agent_ever_ready(scope):
        return None  # it never got past boot: nothing new to save
    if scope.data_key is None:
        scope.data_key = await ensure_data_key(scope)
    if scope.data_key is None:
        scope.status.condition(T.BACKUP_SUCCEEDED, False, Reason.DATA_KEY_MISSING,
                               "cannot back up without the data key; the server is kept "
                               "(annotate agentspaces.dev/skip-backup=true to stop anyway)")
        return Outcome.after(Wait.BACKUP_FAILED, "no data key")
    if scope.status.pending_backup is None and _fresh_backup_exists(scope):
        return None
    return await run_backup(scope, scope.data_key)


async def delete(scope: Scope) -> Outcome | None:
    """onDelete: Delete removes every backup and the data key (crypto-shredding);
    Retain keeps both and lets the key Secret outlive the Workspace."""
    if not enabled(scope):
        return None
    kube = scope.runtime.kube
    key_secret = scope.secret_name(KEY_SUFFIX)
    secret = await kube.read_secret(scope.ref.namespace, key_secret)
    if secret is not None and ownership(scope, secret, KEY_SUFFIX) is not Ownership.OURS:
        # Someone else's Secret at our name is neither deleted nor relabelled.
        scope.emit("Warning", Reason.SECRET_CONFLICT, f"Secret {key_secret} "
                   f"{why_foreign(scope, secret)}; left alone")
        secret = None
    if scope.spec.persistence_on_delete == "Delete":
        try:
            deleted = await asyncio.to_thread(backups.delete_all, store(scope),
                                              location(scope))
        except ObjectStoreError as err:
            return cloud_failure(scope, T.BACKUP_SUCCEEDED, err, "deleting the backups")
        if secret is not None:
            await kube.delete_secret(scope.ref.namespace, key_secret, uid=secret.uid or None)
        scope.emit("Normal", "BackupsDeleted", f"deleted {deleted} backup objects and the "
                   "data key")
    elif secret is not None:
        await kube.release_secret(
            scope.ref.namespace, key_secret, scope.ref.uid, {RETAINED_LABEL: "true"},
            {BACKUP_PREFIX_ANNOTATION: location(scope).prefix,
             "agentspaces.dev/retained-from": f"{scope.ref.namespace}/{scope.ref.name} "
                                              f"uid {scope.ref.uid}",
             **_last_backup_annotation(scope)})
        scope.emit("Normal", "BackupsRetained",
                   f"backups kept under {location(scope).prefix}; key Secret {key_secret} "
                   "kept (see docs/backup-format.md to restore)")
    return None


def stopping_started(scope: Scope) -> Outcome | None:
    """Remember when the stop began (a backup or pre-stop save begun since is this
    stop's own); None once it is recorded.

    Status times have second resolution, so a stop never begins in the second of an
    earlier backup or save: one that came before the stop would pass for its own, and
    the stop would skip a backup of what changed since (a stop, start and stop again
    inside one second).
    """
    status = scope.status
    if status.stopping_since is not None:
        return None
    now = scope.now().replace(microsecond=0)
    earlier = [t for t in (status.backup.time if status.backup is not None else None,
                           status.pre_stop.started_at if status.pre_stop is not None
                           else None) if t is not None]
    if earlier and max(earlier) >= now:
        return Outcome.after(Wait.NEXT_SECOND, "waiting out the second of the last backup")
    status.stopping_since = now
    return None


# --- the data key ------------------------------------------------------------------------

async def ensure_data_key(scope: Scope) -> keys.DataKey | None:
    """The workspace's unwrapped data key (created on first use), None without storage
    or when it cannot be used (BackupRestored says why).

    Keys wrapped with the class's previous key are re-wrapped with the current one
    (class-key rotation); the backups themselves are never touched.
    """
    if not enabled(scope):
        return None
    class_key = scope.creds.class_key
    assert class_key is not None
    name = scope.secret_name(KEY_SUFFIX)
    secret = await ours_or_none(scope, name, KEY_SUFFIX)  # anyone else's: SecretConflict
    if secret is None:
        if scope.status.backup is not None:
            # Backups exist but their key is gone: never silently start fresh.
            scope.status.condition(T.BACKUP_RESTORED, False, Reason.DATA_KEY_MISSING,
                                   f"Secret {name} with the backup data key is missing; "
                                   "existing backups cannot be decrypted")
            return None
        source = scope.annotations.get(RESTORE_FROM_ANNOTATION)
        if source:
            return await _adopt_retained_key(scope, name, source)
        data_key, wrapped = keys.create_data_key(class_key)
        await scope.runtime.kube.create_secret(
            scope.ref.namespace, name, keys.encode_key_secret(wrapped), scope.owner,
            workspace_labels(scope, KEY_SUFFIX), finalizers=KEPT_UNTIL_FINALIZED)
        return data_key
    try:
        return await _open_data_key(scope, name, secret.data)
    except (keys.ClassKeyMismatch, keys.InvalidKey) as err:
        scope.status.condition(T.BACKUP_RESTORED, False, Reason.WRONG_KEY,
                               f"Secret {name}: the class key cannot open the data key "
                               f"({type(err).__name__}); was the class key replaced without "
                               "previousKey?")
        return None


async def _open_data_key(scope: Scope, name: str, data: Mapping[str, str]) -> keys.DataKey:
    class_key = scope.creds.class_key
    assert class_key is not None
    stored = keys.decode_key_secret(data)
    previous = scope.creds.class_key_previous
    if stored.class_key_fingerprint != keys.key_fingerprint(class_key) and previous is not None:
        rotated = keys.rotate_key_secret(previous, class_key, data)
        if rotated is not None:
            await scope.runtime.kube.replace_secret_data(scope.ref.namespace, name, rotated)
            scope.emit("Normal", "KeyRewrapped", "backup data key re-wrapped with the new "
                       "class key")
            stored = keys.decode_key_secret(rotated)
    return keys.open_data_key(class_key, stored)


async def _adopt_retained_key(scope: Scope, name: str, source: str) -> keys.DataKey | None:
    """Copy a retained workspace's key Secret (same namespace only) and remember where
    its backups are, so the first start restores them."""
    class_key, storage = scope.creds.class_key, scope.klass.storage
    assert class_key is not None and storage is not None
    kube = scope.runtime.kube
    retained = await kube.read_secret(scope.ref.namespace, source)
    checked = restore_source.check(retained, source, scope.ref.namespace, storage.prefix,
                                   class_key)
    if isinstance(checked, restore_source.Refused):
        scope.status.condition(T.BACKUP_RESTORED, False, Reason.RESTORE_SOURCE_REFUSED,
                               f"{RESTORE_FROM_ANNOTATION}: {checked.why}")
        return None
    assert retained is not None
    await kube.create_secret(scope.ref.namespace, name, dict(retained.data), scope.owner,
                             workspace_labels(scope, KEY_SUFFIX),
                             {"agentspaces.dev/copied-from": source},
                             finalizers=KEPT_UNTIL_FINALIZED)
    _restore_section(scope).prefix = checked.prefix
    scope.emit("Normal", "RetainedBackupAdopted",
               f"will restore the retained backups under {checked.prefix}")
    return checked.data_key


# --- restore on start --------------------------------------------------------------------

async def restore_plan(scope: Scope, data_key: keys.DataKey | None
                       ) -> RestorePlan | Outcome | None:
    """The plan the agent restores from before its devcontainer starts.

    None when there is nothing to restore; an Outcome (and BackupRestored=False) when a
    backup exists but cannot be used, so the workspace never starts on empty data.
    """
    status = scope.status
    if not enabled(scope):
        status.condition(T.BACKUP_RESTORED, False, Reason.BACKUP_DISABLED,
                         "persistence is disabled")
        return None
    if data_key is None:  # ensure_data_key said why in BackupRestored
        return Outcome.after(Wait.BACKUP_FAILED, "data key missing")
    try:
        latest = await asyncio.to_thread(backups.latest_backup, store(scope),
                                          restore_location(scope))
        # Verifies the manifest's MAC first: a forged one is never "the newest".
        plan = None if latest is None else await asyncio.to_thread(
            backups.restore_plan, store(scope), latest, data_key,
            int(scope.runtime.settings.backup_url_ttl), scope.now())
        if _refuse_rollback(scope, latest, await _baseline(scope)):
            return Outcome.after(Wait.BACKUP_FAILED, "backup rolled back")
    except backups.ManifestTampered as err:
        status.condition(T.BACKUP_RESTORED, False, Reason.MANIFEST_TAMPERED,
                         f"restore refused: {err}")
        scope.emit("Warning", Reason.MANIFEST_TAMPERED, str(err))
        return Outcome.after(Wait.BACKUP_FAILED, "backup manifest tampered")
    except DataKeyMismatch as err:
        status.condition(T.BACKUP_RESTORED, False, Reason.WRONG_KEY, str(err))
        scope.emit("Warning", Reason.WRONG_KEY, str(err))
        return Outcome.after(Wait.BACKUP_FAILED, "wrong key")
    except ObjectStoreError as err:
        return cloud_failure(scope, T.BACKUP_RESTORED, err, "cannot read backups")
    if latest is None or plan is None:
        status.condition(T.BACKUP_RESTORED, False, Reason.NO_BACKUP,
                         "no backup yet: starting from the repository")
        return None
    restore = _restore_section(scope)
    restore.object, restore.time = latest.object_key, latest.time
    return plan


async def _baseline(scope: Scope) -> tuple[BackupStatus, bool] | None:
    """The newest backup the cluster knows was committed where we restore from, and
    whether it is this workspace's own (status.backup) rather than that of the retained
    workspace it restores from (the retained key Secret's annotation)."""
    own = scope.status.backup
    if own is not None:
        return own, True
    source = scope.annotations.get(RESTORE_FROM_ANNOTATION)
    restore = scope.status.restore
    if not (source and restore is not None and restore.prefix):
        return None
    secret = await scope.runtime.kube.read_secret(scope.ref.namespace, source)
    last = secret.annotations.get(LAST_BACKUP_ANNOTATION) if secret else None
    try:
        return (BackupStatus(time=backups.parse_backup_id(last)), False) if last else None
    except ValueError:
        return None


def _refuse_rollback(scope: Scope, latest: backups.BackupRecord | None,
                     baseline: tuple[BackupStatus, bool] | None) -> bool:
    """True (and BackupRestored=False, BackupRolledBack) when the newest backup in the
    bucket is older than, or not, the last one the cluster recorded (`_baseline`):
    someone deleted or replaced the newer manifests. A bucket writer can do that; only
    the cluster remembers. The user accepts the older state by annotating the Workspace
    with ACCEPT_ROLLBACK_ANNOTATION = the recorded backup id; for its own backups that
    acceptance is used once (status.backup is reset to what is restored) and never
    covers a later loss."""
    if baseline is None:
        return False
    recorded, own = baseline
    recorded_at = recorded.time
    if recorded_at is None:
        return False
    if latest is not None and (latest.time > recorded_at or (
            latest.time == recorded_at
            and recorded.object in (None, latest.object_key)
            and recorded.sha256 in (None, latest.sha256))):
        return False
    recorded_id = backups.backup_id(recorded_at)
    found = f"the newest backup is {latest.backup_id}" if latest else "no backup is left"
    if scope.annotations.get(ACCEPT_ROLLBACK_ANNOTATION) == recorded_id:
        if own:
            scope.status.backup = latest.status() if latest else None
        scope.emit("Warning", "RollbackAccepted", f"backup {recorded_id} is gone and {found}; "
                   f"restoring that as accepted by {ACCEPT_ROLLBACK_ANNOTATION}")
        return False
    message = (f"restore refused: backup {recorded_id} was committed but {found} in the "
               "bucket (deleted or replaced). To start from what is left, annotate "
               f"the Workspace {ACCEPT_ROLLBACK_ANNOTATION}={recorded_id}")
    scope.status.condition(T.BACKUP_RESTORED, False, Reason.BACKUP_ROLLED_BACK, message)
    scope.emit("Warning", Reason.BACKUP_ROLLED_BACK, message)
    return True


# --- backup ------------------------------------------------------------------------------

async def run_backup(scope: Scope, data_key: keys.DataKey) -> Outcome | None:
    """Start or advance a backup; None when one has just been committed."""
    try:
        if scope.status.pending_backup:
            return await _poll(scope, data_key)
        return await _begin(scope, data_key)
    except AgentUnreachable as err:
        scope.status.condition(T.BACKUP_SUCCEEDED, False, Reason.AGENT_UNREACHABLE,
                               f"cannot back up: {err}")
        return Outcome.after(Wait.BACKUP_RETRY, "agent unreachable")
    except backups.BackupConflict:
        return Outcome.after(Wait.NEXT_SECOND, "a backup already has this second's id")
    except ObjectStoreError as err:
        return cloud_failure(scope, T.BACKUP_SUCCEEDED, err, "backup")
    except AgentError as err:
        scope.status.condition(T.BACKUP_SUCCEEDED, False, Reason.BACKUP_FAILED, str(err))
        return Outcome.after(Wait.BACKUP_FAILED, "backup error")


async def _begin(scope: Scope, data_key: keys.DataKey) -> Outcome:
    settings = scope.runtime.settings
    where = location(scope)
    the_store = store(scope)
    await asyncio.to_thread(backups.abort_stale_uploads, the_store, where)
    plan, pending = await asyncio.to_thread(
        backups.begin_backup, the_store, where, data_key, scope.now(),
        settings.backup_part_mib * 1024 * 1024, backups.DEFAULT_MAX_PARTS,
        int(settings.backup_url_ttl))
    try:
        await scope.agent().start_backup(plan)
    except AgentError as err:
        if err.status != 409:
            raise
        # One is already running (e.g. a scheduled one); wait for it and start again.
        await asyncio.to_thread(backups.abort_backup, the_store, pending)
        return Outcome.after(Wait.BACKUP_POLL, "another backup is running")
    scope.status.pending_backup = pending.to_dict()
    scope.emit("Normal", "BackupStarted", f"backup {pending.backup_id} started")
    return Outcome.after(Wait.BACKUP_POLL, "backup running")


async def _poll(scope: Scope, data_key: keys.DataKey) -> Outcome | None:
    """Advance the pending backup; None once it is committed."""
    status = scope.status
    assert status.pending_backup is not None
    pending = backups.PendingBackup.from_dict(status.pending_backup)
    the_store = store(scope)
    job = await scope.agent().backup_status()
    if job.backup_id not in (None, pending.backup_id) or job.state is JobState.IDLE:
        # The agent restarted or never saw this backup: abandon it and start again.
        await asyncio.to_thread(backups.abort_backup, the_store, pending)
        status.pending_backup = None
        return Outcome.after(Wait.BACKUP_POLL, "backup lost, restarting")
    if job.state is JobState.RUNNING:
        return Outcome.after(Wait.BACKUP_POLL, "backup running")
    if job.state is JobState.FAILED:
        await asyncio.to_thread(backups.abort_backup, the_store, pending)
        status.pending_backup = None
        message = f"backup {pending.backup_id} failed: {job.error or 'unknown error'}"
        status.condition(T.BACKUP_SUCCEEDED, False, Reason.BACKUP_FAILED, message)
        scope.emit("Warning", Reason.BACKUP_FAILED, message)
        metrics.BACKUPS.labels("failed").inc()
        return Outcome.after(Wait.BACKUP_FAILED, "backup failed")
    try:
        record = await asyncio.to_thread(backups.commit_backup, the_store, pending,
                                         job.result or {}, data_key, scope.now())
    except backups.CommitFailed as err:
        await asyncio.to_thread(backups.abort_backup, the_store, pending)
        status.pending_backup = None
        status.condition(T.BACKUP_SUCCEEDED, False, Reason.BACKUP_FAILED, str(err))
        metrics.BACKUPS.labels("failed").inc()
        return Outcome.after(Wait.BACKUP_FAILED, "commit failed")
    status.pending_backup = None
    status.backup = record.status()
    _count_backup(record.size, (record.completed or scope.now()) - pending.started)
    status.condition(T.BACKUP_SUCCEEDED, True, Reason.BACKUP_DONE,
                     f"backup {record.backup_id} ({record.size} bytes) committed")
    scope.emit("Normal", Reason.BACKUP_DONE, f"backup {record.backup_id} committed")
    assert scope.klass.storage is not None
    await asyncio.to_thread(backups.prune, the_store, location(scope),
                            scope.klass.storage.keep)
    return None


def _count_backup(size: int, took: timedelta) -> None:
    """A committed backup in the metrics: its size as the agent reported it, and the
    time from its start (recorded in status) to its commit."""
    metrics.BACKUPS.labels("succeeded").inc()
    metrics.BACKUP_BYTES.inc(max(0, size))
    metrics.BACKUP_SECONDS.observe(max(0.0, took.total_seconds()))


def _agent_ever_ready(scope: Scope) -> bool:
    """True when this server's agent finished booting (so /workspaces holds user data)."""
    return scope.status.is_true(T.AGENT_READY) or \
        scope.status.reason(T.AGENT_READY) == Reason.AGENT_UNREACHABLE


def _fresh_backup_exists(scope: Scope) -> bool:
    """A backup committed since the stop began (e.g. a retry after it succeeded)."""
    backup, stopping_since = scope.status.backup, scope.status.stopping_since
    taken = backup.time if backup is not None else None
    return bool(taken and stopping_since and taken >= stopping_since)


def scheduled_backup_due(scope: Scope) -> bool:
    interval = scope.spec.backup_interval
    if interval is None or not enabled(scope):
        return False
    status = scope.status
    if status.pending_backup:
        return True
    moments = [t for t in (status.backup.time if status.backup is not None else None,
                           status.started_at) if t is not None]
    return not moments or scope.now() - max(moments) >= interval


def _last_backup_annotation(scope: Scope) -> dict[str, str]:
    """What the heir of retained backups checks for a rollback (see `_baseline`)."""
    backup = scope.status.backup
    taken = backup.time if backup is not None else None
    return {LAST_BACKUP_ANNOTATION: backups.backup_id(taken)} if taken else {}

