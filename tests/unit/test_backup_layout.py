"""Pure parts of the backup orchestration: ids, object layout, records, plan parsing."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from agentspaces.persistence import backups as bk
from agentspaces_vm import backup as agent

WS = bk.BackupLocation.for_workspace("agentspaces/", "team-a", "demo", "0f1e2d3c")


def test_backup_id_is_utc_and_sortable() -> None:
    local = datetime(2026, 11, 27, 5, 19, 0, 900_000, tzinfo=timezone(timedelta(hours=1)))
    assert bk.backup_id(local) == "20261127T041900Z"
    assert bk.parse_backup_id("20261127T041900Z") == datetime(2026, 11, 27, 4, 19, tzinfo=UTC)
    ids = [bk.backup_id(datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=m * 37))
           for m in range(50)]
    assert ids == sorted(ids)
    with pytest.raises(ValueError):
        bk.backup_id(datetime(2026, 11, 27))
    with pytest.raises(ValueError):
        bk.parse_backup_id("2026-11-27")


def test_layout_keys() -> None:
    assert WS.prefix == "agentspaces/team-a/demo-0f1e2d3c/"
    assert bk.object_key(WS, "20261127T041900Z") == \
        "agentspaces/team-a/demo-0f1e2d3c/20261127T041900Z.tar.zst.enc"
    assert bk.manifest_key(WS, "20261127T041900Z") == \
        "agentspaces/team-a/demo-0f1e2d3c/20261127T041900Z.manifest.json"
    assert bk.classify_key(WS, bk.object_key(WS, "20261127T041900Z")) == \
        ("20261127T041900Z", "object")
    assert bk.classify_key(WS, bk.manifest_key(WS, "20261127T041900Z")) == \
        ("20261127T041900Z", "manifest")
    for foreign in (WS.prefix + "notes.txt", WS.prefix + "sub/20261127T041900Z.manifest.json",
                    "agentspaces/team-a/demo-0f1e2d3c0/20261127T041900Z.tar.zst.enc"):
        assert bk.classify_key(WS, foreign) is None


def test_explicit_prefix() -> None:
    assert bk.BackupLocation.from_prefix("agentspaces/team-a/demo-0f1e2d3c").prefix == WS.prefix
    for bad in ("", "/abs/", "a/../b/"):
        with pytest.raises(ValueError):
            bk.BackupLocation.from_prefix(bad)
    with pytest.raises(ValueError):
        bk.BackupLocation.for_workspace("agentspaces/", "ns", "", "uid")


def test_pending_backup_survives_json() -> None:
    pending = bk.PendingBackup(prefix=WS.prefix, backup_id="20261127T041900Z",
                               object_key=bk.object_key(WS, "20261127T041900Z"),
                               manifest_key=bk.manifest_key(WS, "20261127T041900Z"),
                               upload_id="upl-1", key_id="dk-1", part_size=16 << 20,
                               max_parts=1024, chunk_size=1 << 20,
                               started=datetime(2026, 11, 27, 4, 19, tzinfo=UTC),
                               namespace="team-a", name="demo", workspace_uid="0f1e2d3c")
    assert bk.PendingBackup.from_dict(json.loads(json.dumps(pending.to_dict()))) == pending


def test_manifest_round_trip_is_relative_to_the_prefix() -> None:
    record = bk.BackupRecord(
        backup_id="20261127T041900Z", time=datetime(2026, 11, 27, 4, 19, tzinfo=UTC),
        object_key=bk.object_key(WS, "20261127T041900Z"),
        manifest_key=bk.manifest_key(WS, "20261127T041900Z"), size=1234, sha256="ab" * 32,
        key_id="dk-1", format_version=1, chunk_size=1 << 20, plaintext_size=1000,
        completed=datetime(2026, 11, 27, 4, 25, tzinfo=UTC), workspace_uid="0f1e2d3c")
    doc = record.manifest(WS)
    assert doc["objectName"] == "20261127T041900Z.tar.zst.enc"
    assert bk.BackupRecord.from_manifest(WS, json.loads(json.dumps(doc))) == record
    moved = bk.BackupLocation.from_prefix("archive/demo/")
    assert bk.BackupRecord.from_manifest(moved, doc).object_key == \
        "archive/demo/20261127T041900Z.tar.zst.enc"
    assert record.status().model_dump(mode="json", exclude_none=True) == {
        "time": "2026-11-27T04:19:00Z", "object": record.object_key, "size": 1234,
        "sha256": "ab" * 32}
    for broken in ({**doc, "kind": "other"}, {**doc, "objectName": "x.tar.zst.enc"},
                   {**doc, "sha256": "zz"}):
        with pytest.raises(ValueError):
            bk.BackupRecord.from_manifest(WS, broken)


def test_a_malformed_plan_is_an_invalid_plan_backup_error(tmp_path: Path) -> None:
    """The agent's entry points turn a contract violation into reason InvalidPlan
    (contracts.BackupPlan/RestorePlan do the parsing: tests/unit/test_contracts.py)."""
    key = base64.b64encode(bytes(32)).decode()
    plan = {"version": 2, "id": "20261127T041900Z", "keyId": "dk-1", "key": key,
            "workspaceUid": "0f1e2d3c", "object": "o", "partSize": 1 << 20,
            "parts": [{"partNumber": 1, "url": "https://r2.example/b/k?partNumber=1"}]}
    with pytest.raises(agent.BackupError) as info:
        agent.backup(plan, tmp_path, lambda _: None)
    assert info.value.reason == "InvalidPlan" and "part size" in str(info.value)
    assert key not in str(info.value) and "r2.example" not in str(info.value)
    with pytest.raises(agent.BackupError) as info:
        agent.restore({**plan, "url": "file:///etc/passwd", "size": 1, "sha256": "ab" * 32},
                      tmp_path / "target")
    assert info.value.reason == "InvalidPlan"
    assert not (tmp_path / "target").exists()
