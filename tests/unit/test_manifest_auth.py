"""Manifest MACs: what a bucket writer without the keys can and cannot change."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from agentspaces.persistence import backups as bk
from agentspaces.persistence import keys, manifest_auth

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
WS = bk.BackupLocation.for_workspace("agentspaces/", "team-a", "demo", UID)
BID = "20261127T041900Z"


@pytest.fixture
def data_key() -> keys.DataKey:
    return keys.DataKey(keys.new_key_id(), keys.generate_data_key())


def record(data_key: keys.DataKey, **changes: Any) -> bk.BackupRecord:
    fields: dict[str, Any] = dict(
        backup_id=BID, time=bk.parse_backup_id(BID), object_key=bk.object_key(WS, BID),
        manifest_key=bk.manifest_key(WS, BID), size=1234, sha256="ab" * 32,
        key_id=data_key.key_id, format_version=2, chunk_size=1 << 20, plaintext_size=1000,
        completed=datetime(2026, 11, 27, 4, 25, tzinfo=UTC), workspace_uid=UID)
    fields.update(changes)
    return bk.BackupRecord(**fields)


def signed(data_key: keys.DataKey, ws: bk.BackupLocation = WS) -> dict[str, Any]:
    doc = manifest_auth.sign(record(data_key).manifest(ws), data_key)
    return json.loads(json.dumps(doc))  # as stored and read back


def test_a_signed_manifest_verifies_after_a_json_round_trip(data_key: keys.DataKey) -> None:
    doc = signed(data_key)
    assert doc["workspace"]["uid"] == UID and doc["manifestVersion"] == 2
    parsed = bk.BackupRecord.from_manifest(WS, doc)
    assert parsed == record(data_key)
    bk.verify_manifest(parsed, data_key)


@pytest.mark.parametrize("field, value", [
    ("size", 999), ("sha256", "cd" * 32), ("time", "2026-11-28T00:00:00Z"),
    ("completedAt", "2026-11-28T00:00:00Z"), ("keyId", "dk-other"), ("formatVersion", 1),
    ("workspace", {"namespace": "team-a", "name": "demo", "uid": "other"}),
    ("extra", "anything"),
])
def test_any_edit_without_the_key_is_refused(data_key: keys.DataKey, field: str,
                                             value: Any) -> None:
    doc = {**signed(data_key), field: value}
    with pytest.raises(manifest_auth.ManifestTampered) as info:
        manifest_auth.verify(doc, data_key)
    assert info.value.reason == "BackupTampered"


def test_a_forged_or_unsigned_manifest_is_refused(data_key: keys.DataKey) -> None:
    """A bucket writer can build a complete manifest, but only sign it with a key it has."""
    forger = keys.DataKey(data_key.key_id, keys.generate_data_key())
    for doc in (signed(forger), {k: v for k, v in signed(data_key).items() if k != "mac"},
                {**signed(data_key), "mac": "\u00e9" * 64}, {**signed(data_key), "size": 1.0},
                {**signed(data_key), "size": float("nan")}):
        with pytest.raises(manifest_auth.ManifestTampered):
            manifest_auth.verify(doc, data_key)
    with pytest.raises(manifest_auth.ManifestTampered):
        bk.verify_manifest(bk.BackupRecord.from_manifest(WS, signed(forger)), data_key)


def test_a_manifest_copied_into_another_workspace_prefix_is_refused(
        data_key: keys.DataKey) -> None:
    """A retained workspace and its heir share the data key: the MAC alone would accept
    the retained manifest under the heir's prefix; the uid in the prefix does not."""
    heir = bk.BackupLocation.for_workspace("agentspaces/", "team-a", "heir", "9999")
    copied = bk.BackupRecord.from_manifest(heir, signed(data_key))
    with pytest.raises(manifest_auth.ManifestTampered):
        bk.verify_manifest(copied, data_key)
    # The retained prefix itself (BackupLocation.from_prefix, uid unknown) verifies.
    retained = bk.BackupLocation.from_prefix(WS.prefix)
    bk.verify_manifest(bk.BackupRecord.from_manifest(retained, signed(data_key)), data_key)


def test_restore_plan_refuses_before_presigning(data_key: keys.DataKey) -> None:
    class NoStore:
        def presign_get(self, key: str, ttl: int) -> str:
            raise AssertionError("presigned a URL for a tampered backup")

    tampered = bk.BackupRecord.from_manifest(WS, {**signed(data_key), "size": 1})
    with pytest.raises(bk.ManifestTampered):
        bk.restore_plan(NoStore(), tampered, data_key, 600, datetime.now(UTC))  # type: ignore[arg-type]
