"""Backup orchestration on the operator side: object layout, plans, commit, retention.

Layout under the class's storage prefix (documented in docs/backup-format.md):

    {prefix}{namespace}/{name}-{uid}/{backup-id}.tar.zst.enc     the encrypted archive
    {prefix}{namespace}/{name}-{uid}/{backup-id}.manifest.json   written last = committed

backup-id is the UTC start time, e.g. 20261127T041900Z, so ids sort by time.

A backup is two operator calls around the agent's work: `begin_backup` creates the
multipart upload and presigns every part URL (the VM never sees credentials), the agent
runs `agentspaces_vm.backup.backup(plan, ...)`, and `commit_backup` completes the upload
and only then writes the manifest. A backup without a manifest does not exist: listing,
restore and retention only ever look at manifests.

Manifests carry a MAC under a subkey of the workspace's data key (manifest_auth.py), and
`restore_plan` refuses one that does not verify or is not bound to the prefix it was
found under (`ManifestTampered`). The object itself is bound to the workspace uid and
backup id (backup_format.py), so a bucket writer can delete backups but cannot forge
one, alter a manifest, or pass one backup's object off as another's. Deleting the newest
manifest (a rollback) is detected by the caller against status.backup.

Everything here is synchronous (boto3); call it through `asyncio.to_thread` from the
event loop. `PendingBackup.to_dict()` is what to keep in status between the two calls. The plans
and the agent's result are the typed documents of agentspaces_vm.contracts.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from agentspaces.api.status import BackupStatus
from agentspaces.clouds.r2 import CompletedPart, ObjectNotFound, ObjectStore
from agentspaces.persistence import manifest_auth
from agentspaces.persistence.keys import DataKey
from agentspaces.persistence.manifest_auth import ManifestTampered
from agentspaces_vm import backup_format
from agentspaces_vm.backup_format import DataKeyMismatch
from agentspaces_vm.contracts import (
    DEFAULT_CHUNK_SIZE,
    MIB,
    BackupPlan,
    BackupResult,
    ContractError,
    RestorePlan,
    check_part_count,
    check_part_size,
    check_url_ttl,
    format_time,
    parse_time,
)

log = logging.getLogger(__name__)

MANIFEST_KIND = "agentspaces.dev/backup"
MANIFEST_VERSION = 2  # 2: authenticated (mac), always names the workspace
OBJECT_SUFFIX = ".tar.zst.enc"
MANIFEST_SUFFIX = ".manifest.json"
MAX_MANIFEST_SIZE = 64 * 1024  # ours are under 1 KiB
ID_FORMAT = "%Y%m%dT%H%M%SZ"
_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}Z$")

# The hard limits (part size, part count, URL lifetime) are in agentspaces_vm.contracts.
DEFAULT_PART_SIZE = 16 * MIB  # agent memory is about two parts
DEFAULT_MAX_PARTS = 1024  # 16 GiB with the default part size
DEFAULT_URL_TTL = 6 * 3600  # long enough for the largest backup to finish uploading


class BackupConflict(Exception):
    """A committed backup already has this id (two backups started in one second)."""


class CommitFailed(Exception):
    """The agent's result does not describe a complete, consistent upload."""


@dataclass(frozen=True)
class BackupLocation:
    """Where one workspace's backups live (a bucket prefix, and the workspace it belongs
    to when known). Build it from the workspace's identity, or from an explicit prefix
    (a Retained workspace's backups restored into a new one)."""

    prefix: str
    namespace: str = ""
    name: str = ""
    uid: str = ""

    @classmethod
    def for_workspace(cls, storage_prefix: str, namespace: str, name: str,
                      uid: str) -> BackupLocation:
        if not (namespace and name and uid):
            raise ValueError("namespace, name and uid are required")
        return cls(f"{storage_prefix}{namespace}/{name}-{uid}/", namespace, name, uid)

    @classmethod
    def from_prefix(cls, prefix: str) -> BackupLocation:
        if not prefix or prefix.startswith("/") or ".." in prefix.split("/"):
            raise ValueError(f"not a backup prefix: {prefix!r}")
        return cls(prefix if prefix.endswith("/") else prefix + "/")


def backup_id(now: datetime) -> str:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC).strftime(ID_FORMAT)


def parse_backup_id(value: str) -> datetime:
    if not _ID_RE.match(value):
        raise ValueError(f"not a backup id: {value!r}")
    return datetime.strptime(value, ID_FORMAT).replace(tzinfo=UTC)


def object_key(ws: BackupLocation, bid: str) -> str:
    return f"{ws.prefix}{bid}{OBJECT_SUFFIX}"


def manifest_key(ws: BackupLocation, bid: str) -> str:
    return f"{ws.prefix}{bid}{MANIFEST_SUFFIX}"


def classify_key(ws: BackupLocation, key: str) -> tuple[str, str] | None:
    """(backup id, "object" | "manifest") for a key of this layout directly under the
    workspace prefix, else None (foreign keys are never touched by retention)."""
    if not key.startswith(ws.prefix):
        return None
    rest = key[len(ws.prefix):]
    for suffix, kind in ((OBJECT_SUFFIX, "object"), (MANIFEST_SUFFIX, "manifest")):
        if rest.endswith(suffix) and _ID_RE.match(rest[:-len(suffix)]):
            return rest[:-len(suffix)], kind
    return None


def _required_time(value: object, what: str) -> datetime:
    moment = parse_time(value) if isinstance(value, str) else None
    if moment is None:
        raise ValueError(f"{what} is not a time")
    return moment


@dataclass(frozen=True)
class PendingBackup:
    """A started, uncommitted backup; no secrets, safe to store in status."""

    prefix: str
    backup_id: str
    object_key: str
    manifest_key: str
    upload_id: str
    key_id: str
    part_size: int
    max_parts: int
    chunk_size: int
    started: datetime
    # Empty in a pending backup recorded by an operator without manifest MACs: its
    # commit fails and the backup is started again.
    namespace: str = ""
    name: str = ""
    workspace_uid: str = ""

    def workspace(self) -> BackupLocation:
        return BackupLocation(self.prefix, self.namespace, self.name, self.workspace_uid)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["started"] = format_time(self.started)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PendingBackup:
        fields = dict(data)
        fields["started"] = _required_time(fields["started"], "started")
        return cls(**fields)


@dataclass(frozen=True)
class BackupRecord:
    """A committed backup, as its manifest describes it."""

    backup_id: str
    time: datetime
    object_key: str
    manifest_key: str
    size: int
    sha256: str
    key_id: str
    format_version: int
    chunk_size: int
    plaintext_size: int | None = None
    completed: datetime | None = None
    workspace_uid: str = ""  # as the manifest says; trust it only after verify_manifest
    document: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def prefix(self) -> str:
        return self.manifest_key[:-len(self.backup_id + MANIFEST_SUFFIX)]

    def status(self) -> BackupStatus:
        """The Workspace's `status.backup`."""
        return BackupStatus(time=self.time, object=self.object_key, size=self.size,
                            sha256=self.sha256)

    def manifest(self, ws: BackupLocation) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "kind": MANIFEST_KIND,
            "manifestVersion": MANIFEST_VERSION,
            "id": self.backup_id,
            "time": format_time(self.time),
            # Relative, so a copied or moved prefix still resolves.
            "objectName": self.object_key[len(ws.prefix):],
            "size": self.size,
            "sha256": self.sha256,
            "formatVersion": self.format_version,
            "chunkSize": self.chunk_size,
            "keyId": self.key_id,
            "compression": "zstd",
            "archive": "tar",
        }
        if self.plaintext_size is not None:
            doc["plaintextSize"] = self.plaintext_size
        if self.completed is not None:
            doc["completedAt"] = format_time(self.completed)
        if ws.uid:
            doc["workspace"] = {"namespace": ws.namespace, "name": ws.name, "uid": ws.uid}
        return doc

    @classmethod
    def from_manifest(cls, ws: BackupLocation, doc: Mapping[str, Any]) -> BackupRecord:
        """Parse a manifest; ValueError if it is not one of ours or is inconsistent."""
        if doc.get("kind") != MANIFEST_KIND:
            raise ValueError("not a backup manifest")
        bid = str(doc["id"])
        name = str(doc["objectName"])
        if name != f"{bid}{OBJECT_SUFFIX}":
            raise ValueError("manifest names another object")
        sha = str(doc["sha256"])
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ValueError("manifest sha256 is malformed")
        completed = doc.get("completedAt")
        plaintext = doc.get("plaintextSize")
        workspace = doc.get("workspace")
        uid = str(workspace.get("uid") or "") if isinstance(workspace, Mapping) else ""
        return cls(backup_id=bid, time=parse_backup_id(bid), object_key=ws.prefix + name,
                   manifest_key=manifest_key(ws, bid), size=int(doc["size"]), sha256=sha,
                   key_id=str(doc["keyId"]), format_version=int(doc["formatVersion"]),
                   chunk_size=int(doc["chunkSize"]),
                   plaintext_size=int(plaintext) if plaintext is not None else None,
                   completed=_required_time(completed, "completedAt") if completed else None,
                   workspace_uid=uid, document=dict(doc))


def verify_manifest(record: BackupRecord, data_key: DataKey) -> None:
    """Raise ManifestTampered unless the record's manifest was written by the operator
    with this data key for the workspace whose prefix it was found under."""
    if record.document is None:
        raise ManifestTampered(f"backup {record.backup_id}: no manifest to verify")
    manifest_auth.verify(record.document, data_key)
    # Authentic, but maybe copied from another workspace sharing the data key (a
    # retained one and its heir): the uid must be the one in its own prefix.
    if not record.workspace_uid or not record.prefix.endswith(f"-{record.workspace_uid}/"):
        raise ManifestTampered(f"backup {record.backup_id}: the manifest belongs to another "
                               "workspace's prefix")


# --- begin / commit / abort -------------------------------------------------------------

def begin_backup(store: ObjectStore, ws: BackupLocation, data_key: DataKey, now: datetime,
                 part_size: int = DEFAULT_PART_SIZE, max_parts: int = DEFAULT_MAX_PARTS,
                 url_ttl: int = DEFAULT_URL_TTL, *, exclude: Collection[str] = (),
                 chunk_size: int = DEFAULT_CHUNK_SIZE,
                 ) -> tuple[BackupPlan, PendingBackup]:
    """Start a multipart upload and presign all its part URLs.

    Returns the agent's backup plan (contains the data key: send it only over the
    pinned agent channel, never log it) and the PendingBackup to keep for the commit.
    The plan's capacity is part_size * max_parts bytes of ciphertext. ContractError (a
    ValueError) for limits the agent would refuse, before anything is created.
    """
    check_url_ttl(url_ttl)
    check_part_size(part_size)
    check_part_count(max_parts)
    if not ws.uid:
        raise ValueError("a backup needs the workspace's uid (BackupLocation.for_workspace)")
    bid = backup_id(now)
    if store.head_object(manifest_key(ws, bid)) is not None:
        raise BackupConflict(f"backup {bid} already exists")
    key = object_key(ws, bid)
    upload_id = store.create_multipart_upload(key)
    try:
        plan = BackupPlan(
            backup_id=bid, workspace_uid=ws.uid, object_key=key, key_id=data_key.key_id,
            key=data_key.material, part_size=part_size, chunk_size=chunk_size,
            part_urls=tuple(store.presign_upload_part(key, upload_id, n, url_ttl)
                            for n in range(1, max_parts + 1)),
            expires_at=now + timedelta(seconds=url_ttl), exclude=tuple(exclude))
    except BaseException:
        store.abort_multipart_upload(key, upload_id)
        raise
    pending = PendingBackup(prefix=ws.prefix, backup_id=bid, object_key=key,
                            manifest_key=manifest_key(ws, bid), upload_id=upload_id,
                            key_id=data_key.key_id, part_size=part_size, max_parts=max_parts,
                            chunk_size=chunk_size, started=now.astimezone(UTC),
                            namespace=ws.namespace, name=ws.name, workspace_uid=ws.uid)
    return plan, pending


def _check_result(pending: PendingBackup, agent_result: BackupResult | Mapping[str, Any]
                  ) -> BackupResult:
    """The agent's result, parsed, and consistent with the plan the backup was begun with."""
    try:
        result = (agent_result if isinstance(agent_result, BackupResult)
                  else BackupResult.from_json(agent_result))
    except ContractError as exc:
        raise CommitFailed(f"malformed agent result: {exc}") from None
    if result.backup_id != pending.backup_id:
        raise CommitFailed("agent result is for another backup")
    if len(result.parts) > pending.max_parts:
        raise CommitFailed("more parts than the plan had")
    count, size = len(result.parts), result.size
    if not (count - 1) * pending.part_size < size <= count * pending.part_size:
        raise CommitFailed("size does not match the number of parts")
    return result


def commit_backup(store: ObjectStore, pending: PendingBackup,
                  agent_result: BackupResult | Mapping[str, Any], data_key: DataKey,
                  now: datetime) -> BackupRecord:
    """Complete the upload, check the object, then write the manifest (last), signed
    with the data key the backup was made with.

    Safe to call again after a crash between the two writes: an upload that is already
    complete is accepted when the object has the reported size.
    """
    if not pending.workspace_uid:
        raise CommitFailed("the pending backup does not name its workspace uid")
    if data_key.key_id != pending.key_id:
        raise CommitFailed("the data key is not the one the backup was made with")
    result = _check_result(pending, agent_result)
    parts = [CompletedPart(p.number, p.etag) for p in result.parts]
    size, sha = result.size, result.sha256
    try:
        store.complete_multipart_upload(pending.object_key, pending.upload_id, parts)
    except ObjectNotFound:
        existing = store.head_object(pending.object_key)
        if existing is None or existing.size != size:
            raise CommitFailed("the upload is gone and no complete object exists") from None
    info = store.head_object(pending.object_key)
    if info is None or info.size != size:
        raise CommitFailed(f"stored object size {info.size if info else None} "
                           f"!= reported {size}")
    record = BackupRecord(
        backup_id=pending.backup_id, time=parse_backup_id(pending.backup_id),
        object_key=pending.object_key,
        manifest_key=pending.manifest_key, size=size, sha256=sha, key_id=pending.key_id,
        format_version=backup_format.VERSION, chunk_size=pending.chunk_size,
        plaintext_size=result.plaintext_size,
        completed=now.astimezone(UTC).replace(microsecond=0),
        workspace_uid=pending.workspace_uid)
    doc = manifest_auth.sign(record.manifest(pending.workspace()), data_key)
    store.put_object(pending.manifest_key,
                     json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")
    return replace(record, document=doc)


def abort_backup(store: ObjectStore, pending: PendingBackup) -> None:
    """Abandon a started backup (idempotent). Its parts are freed; nothing was committed."""
    store.abort_multipart_upload(pending.object_key, pending.upload_id)


def abort_stale_uploads(store: ObjectStore, ws: BackupLocation,
                        keep_upload_ids: Collection[str] = ()) -> list[str]:
    """Abort every unfinished multipart upload under the workspace prefix except the
    ones named (the backup in progress). Returns the object keys aborted."""
    aborted = []
    for upload in store.list_multipart_uploads(ws.prefix):
        if upload.upload_id in keep_upload_ids:
            continue
        store.abort_multipart_upload(upload.key, upload.upload_id)
        aborted.append(upload.key)
    return aborted


# --- listing, restore, retention ----------------------------------------------------------

def _committed(store: ObjectStore, ws: BackupLocation
               ) -> tuple[list[BackupRecord], dict[str, dict[str, str]]]:
    """Committed backups (oldest first) and every layout key by id and kind."""
    by_id: dict[str, dict[str, str]] = {}
    sizes: dict[str, int] = {}
    oversized: set[str] = set()
    for obj in store.list_objects(ws.prefix):
        parsed = classify_key(ws, obj.key)
        if parsed is None:
            continue
        bid, kind = parsed
        by_id.setdefault(bid, {})[kind] = obj.key
        if kind == "object":
            sizes[bid] = obj.size
        elif obj.size > MAX_MANIFEST_SIZE:
            oversized.add(bid)
    records = []
    for bid in sorted(by_id):
        keys = by_id[bid]
        if "manifest" not in keys:
            continue
        if bid in oversized:  # never read: a planted giant would exhaust our memory
            log.warning("ignoring backup manifest %s: larger than %d bytes", keys["manifest"],
                        MAX_MANIFEST_SIZE)
            continue
        try:
            doc = json.loads(store.get_object(keys["manifest"]))
            record = BackupRecord.from_manifest(ws, doc)
        except (ObjectNotFound, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable backup manifest %s: %s", keys["manifest"],
                        type(exc).__name__)
            continue
        if record.backup_id != bid or sizes.get(bid) != record.size:
            log.warning("ignoring backup %s: its data object is missing or resized", bid)
            continue
        records.append(record)
    return records, by_id


def list_backups(store: ObjectStore, ws: BackupLocation) -> list[BackupRecord]:
    """Committed backups whose data object is present, oldest first."""
    return _committed(store, ws)[0]


def latest_backup(store: ObjectStore, ws: BackupLocation) -> BackupRecord | None:
    records = list_backups(store, ws)
    return records[-1] if records else None


def restore_plan(store: ObjectStore, record: BackupRecord, data_key: DataKey,
                 url_ttl: int, now: datetime) -> RestorePlan:
    """The agent's restore plan for a committed backup (contains the data key).

    DataKeyMismatch if the backup needs another data key; ManifestTampered if its
    manifest does not verify (verify_manifest): no plan, so nothing is downloaded or
    restored."""
    if data_key.key_id != record.key_id:
        raise DataKeyMismatch(f"backup {record.backup_id} needs data key {record.key_id}, "
                              f"the workspace has {data_key.key_id}")
    verify_manifest(record, data_key)
    check_url_ttl(url_ttl)
    moment = now
    return RestorePlan(backup_id=record.backup_id, workspace_uid=record.workspace_uid,
                       object_key=record.object_key, key_id=record.key_id,
                       key=data_key.material,
                       url=store.presign_get(record.object_key, url_ttl),
                       size=record.size, sha256=record.sha256,
                       expires_at=moment + timedelta(seconds=url_ttl))


def prune(store: ObjectStore, ws: BackupLocation, keep: int) -> list[str]:
    """Keep the newest `keep` committed backups; delete older ones and any data object
    or manifest without its partner that is older than the newest committed backup
    (newer ones may be a commit in progress). Manifests go first, so a crash midway
    leaves orphans for the next prune, never a manifest without its data.
    Returns the deleted keys."""
    if keep < 1:
        raise ValueError("keep at least one backup")
    records, by_id = _committed(store, ws)
    if not records:
        return []
    newest = records[-1].backup_id
    committed = {r.backup_id for r in records}
    dropped = {r.backup_id for r in records[:-keep]}
    manifests, objects = [], []
    for bid, keys in sorted(by_id.items()):
        orphan = bid not in committed and bid < newest
        if bid in dropped or orphan:
            manifests += [keys["manifest"]] if "manifest" in keys else []
            objects += [keys["object"]] if "object" in keys else []
    if manifests:
        store.delete_objects(manifests)
    if objects:
        store.delete_objects(objects)
    return manifests + objects


def delete_all(store: ObjectStore, ws: BackupLocation, max_rounds: int = 10) -> int:
    """onDelete: Delete: abort unfinished uploads and delete every object under the
    workspace prefix. Returns how many objects were deleted."""
    abort_stale_uploads(store, ws)
    deleted = 0
    for _ in range(max_rounds):  # a listing is a snapshot; repeat until nothing is left
        keys = [o.key for o in store.list_objects(ws.prefix)]
        if not keys:
            return deleted
        store.delete_objects(keys)
        deleted += len(keys)
    raise RuntimeError(f"objects keep appearing under {ws.prefix}")
