"""Encrypted backups through the operator: stop backs up, start restores, class-key
rotation re-wraps without touching backups, Retain keeps backups for a new Workspace,
and a tampered backup or an unusable key refuses to start instead of starting empty."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import yaml

from agentspaces.persistence import keys
from agentspaces.sandbox.vmsim import VmSimulator
from tests.conftest import Kubectl
from tests.support.stack import (
    OPERATOR_NAMESPACE,
    S3,
    VmStack,
    condition,
    secret,
    vm_stack,
    workspace,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "persist"
OLD_KEY = os.urandom(32)


@pytest.fixture(scope="module")
def stack(control_plane, kubectl: Kubectl,  # type: ignore[no-untyped-def]
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmStack]:
    with vm_stack(control_plane, kubectl, tmp_path_factory.mktemp("vms"), CLASS, 5, 18081,
                  storage=True, keep=2, class_key=OLD_KEY) as stack:
        yield stack


def _ws(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    return kubectl.get_json("workspace", name, "-n", ns) or {}


def _until(kubectl: Kubectl, name: str, ns: str, what: str, test: Any,
           timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: (w := _ws(kubectl, name, ns)) and test(w) and w, timeout, what)


def _ready(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    return _until(kubectl, name, ns, f"{name} Ready",
                  lambda w: condition(w, "Ready").get("status") == "True")


def _stop(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    kubectl("patch", "workspace", name, "-n", ns, "--type", "merge",
            "-p", '{"spec":{"running":false}}')
    return _until(kubectl, name, ns, f"{name} Stopped",
                  lambda w: w.get("status", {}).get("phase") == "Stopped")


def _start(kubectl: Kubectl, name: str, ns: str) -> None:
    kubectl("patch", "workspace", name, "-n", ns, "--type", "merge",
            "-p", '{"spec":{"running":true}}')


def _files(vms: VmSimulator, ws: dict[str, Any]) -> Any:
    return vms.workspace_dir(int(ws["status"]["server"]["id"]))


def _key_secret(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any] | None:
    return kubectl.get_json("secret", f"{name}-backup-key", "-n", ns)


def _s3(s3: S3) -> Any:
    return boto3.client("s3", endpoint_url=s3.url, aws_access_key_id=s3.access_key,
                        aws_secret_access_key=s3.secret_key, region_name="us-east-1")


def test_backups_rotation_retain_tamper_and_wrong_key(
        stack: VmStack, kubectl: Kubectl, namespace: str) -> None:
    vms, s3 = stack.vms, stack.s3
    assert s3 is not None
    kubectl.apply(workspace("keeper", namespace, CLASS, persistence={"onDelete": "Retain"}))
    ws = _ready(kubectl, "keeper", namespace)
    assert condition(ws, "BackupRestored")["reason"] == "NoBackup"
    root = _files(vms, ws)
    (root / "project").mkdir()
    (root / "project" / "main.py").write_text("print('kept across stops')\n")
    (root / "project" / "run.sh").write_text("#!/bin/sh\n")
    (root / "project" / "run.sh").chmod(0o750)
    (root / "project" / "link").symlink_to("main.py")
    (root / ".claude").mkdir(exist_ok=True)
    (root / ".claude" / "history.jsonl").write_text('{"session": 1}\n')

    stopped = _stop(kubectl, "keeper", namespace)
    assert condition(stopped, "BackupSucceeded")["status"] == "True"
    first_backup = stopped["status"]["backup"]["object"]
    assert first_backup in s3.object_keys()
    # The key Secret holds only the wrapped key, never the raw data key.
    key_secret = _key_secret(kubectl, "keeper", namespace)
    assert key_secret is not None
    assert set(key_secret["data"]) == {"wrappedKey", "classKeyFingerprint", "dataKeyId"}

    # Class-key rotation: new key, old one as previousKey; the data key is re-wrapped.
    new_key = os.urandom(32)
    kubectl.apply(yaml.safe_dump(secret(f"{CLASS}-key", OPERATOR_NAMESPACE, {
        "key": base64.b64encode(new_key).decode(),
        "previousKey": base64.b64encode(OLD_KEY).decode()})))
    etag_before = _s3(s3).head_object(Bucket=s3.bucket, Key=first_backup)["ETag"]
    _start(kubectl, "keeper", namespace)
    ws = _ready(kubectl, "keeper", namespace)
    assert condition(ws, "BackupRestored")["reason"] == "Restored"
    restored = _files(vms, ws) / "project"
    assert (restored / "main.py").read_text() == "print('kept across stops')\n"
    assert (restored / "run.sh").stat().st_mode & 0o777 == 0o750
    assert os.readlink(restored / "link") == "main.py"
    assert (_files(vms, ws) / ".claude" / "history.jsonl").read_text() == '{"session": 1}\n'
    rotated = _key_secret(kubectl, "keeper", namespace)
    assert rotated is not None
    assert rotated["data"]["classKeyFingerprint"] != key_secret["data"]["classKeyFingerprint"]
    assert rotated["data"]["dataKeyId"] == key_secret["data"]["dataKeyId"]
    assert _s3(s3).head_object(Bucket=s3.bucket, Key=first_backup)["ETag"] == etag_before

    # Retain: deleting keeps the backups and the key Secret, labelled for reuse.
    kubectl("delete", "workspace", "keeper", "-n", namespace, "--wait=false")
    wait_for(lambda: not _ws(kubectl, "keeper", namespace), 60, "keeper deleted")
    retained = _key_secret(kubectl, "keeper", namespace)
    assert retained is not None and not retained["metadata"].get("ownerReferences")
    assert retained["metadata"]["labels"]["agentspaces.dev/retained"] == "true"
    prefix = retained["metadata"]["annotations"]["agentspaces.dev/backup-prefix"]
    assert [k for k in s3.object_keys(prefix) if k.endswith(".manifest.json")]

    # ... and a new Workspace restores them.
    heir = yaml.safe_load(workspace("heir", namespace, CLASS,
                                    persistence={"onDelete": "Delete"}))
    heir["metadata"]["annotations"] = {"agentspaces.dev/restore-from": "keeper-backup-key"}
    kubectl.apply(yaml.safe_dump(heir))
    ws = _ready(kubectl, "heir", namespace)
    assert ws["status"]["restore"]["prefix"] == prefix
    assert (_files(vms, ws) / "project" / "main.py").read_text() == \
        "print('kept across stops')\n"

    # A tampered backup refuses to restore and the workspace does not start empty.
    stopped = _stop(kubectl, "heir", namespace)
    latest = stopped["status"]["backup"]["object"]
    assert latest.startswith(f"agentspaces/{namespace}/heir-")
    body = bytearray(_s3(s3).get_object(Bucket=s3.bucket, Key=latest)["Body"].read())
    body[len(body) // 2] ^= 0x01
    _s3(s3).put_object(Bucket=s3.bucket, Key=latest, Body=bytes(body))
    _start(kubectl, "heir", namespace)
    ws = _until(kubectl, "heir", namespace, "restore refused",
                lambda w: condition(w, "BackupRestored").get("status") == "False" and
                condition(w, "BackupRestored").get("reason") == "BackupCorrupt")
    assert condition(ws, "Ready")["status"] == "False"
    assert ws["status"]["phase"] != "Running"
    assert not (_files(vms, ws) / "project").exists()  # nothing half-restored

    # A class key that cannot open the data key: no server is started at all.
    _stop(kubectl, "heir", namespace)
    kubectl.apply(yaml.safe_dump(secret(f"{CLASS}-key", OPERATOR_NAMESPACE, {
        "key": base64.b64encode(os.urandom(32)).decode()})))
    _start(kubectl, "heir", namespace)
    ws = _until(kubectl, "heir", namespace, "wrong key reported",
                lambda w: condition(w, "BackupRestored").get("reason") == "WrongKey")
    assert "server" not in ws["status"]
    assert condition(ws, "Ready")["status"] == "False"

    # onDelete: Delete removes the heir's objects and its key; the retained ones stay.
    kubectl.apply(yaml.safe_dump(secret(f"{CLASS}-key", OPERATOR_NAMESPACE, {
        "key": base64.b64encode(new_key).decode()})))
    kubectl("delete", "workspace", "heir", "-n", namespace, "--wait=false")
    wait_for(lambda: not _ws(kubectl, "heir", namespace), 60, "heir deleted")
    assert [k for k in s3.object_keys(f"agentspaces/{namespace}/heir-")] == []
    assert _key_secret(kubectl, "heir", namespace) is None
    assert [k for k in s3.object_keys(prefix)]


def test_bucket_writer_cannot_forge_or_roll_back_backups(
        stack: VmStack, kubectl: Kubectl, namespace: str) -> None:
    """Someone who can write the bucket but holds no key: a forged newer manifest is
    refused (BackupTampered), deleting/replacing the newest manifest is detected against
    status.backup (BackupRolledBack); neither restores anything or starts the
    devcontainer, until the user accepts the older backup with an annotation."""
    vms, s3 = stack.vms, stack.s3
    assert s3 is not None
    client = _s3(s3)
    kubectl.apply(workspace("roller", namespace, CLASS, persistence={"onDelete": "Delete"}))
    ws = _ready(kubectl, "roller", namespace)
    (_files(vms, ws) / "project").mkdir()
    (_files(vms, ws) / "project" / "main.py").write_text("generation 1\n")
    older = _stop(kubectl, "roller", namespace)["status"]["backup"]["object"]
    _start(kubectl, "roller", namespace)
    ws = _ready(kubectl, "roller", namespace)
    assert condition(ws, "BackupRestored")["reason"] == "Restored"
    assert (_files(vms, ws) / "project" / "main.py").read_text() == "generation 1\n"
    (_files(vms, ws) / "project" / "main.py").write_text("generation 2\n")
    newest = _stop(kubectl, "roller", namespace)["status"]["backup"]["object"]
    assert newest != older

    def manifest_of(obj: str) -> str:
        return obj.removesuffix(".tar.zst.enc") + ".manifest.json"

    def refused(reason: str) -> dict[str, Any]:
        ws = _until(kubectl, "roller", namespace, f"restore refused with {reason}",
                    lambda w: condition(w, "BackupRestored").get("reason") == reason)
        assert condition(ws, "BackupRestored")["status"] == "False"
        ready = condition(ws, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", reason)
        assert ws["status"]["phase"] == "Failed"
        # Refused before any server: nothing restored, nothing billed.
        assert "id" not in (ws["status"].get("server") or {})
        assert [s for s in stack.clouds.hetzner.servers.values()
                if s["labels"].get("agentspaces.dev/workspace-uid") == ws["metadata"]["uid"]
                ] == []
        return ws

    # 1. A "newer" backup: the older object copied under a later id, with the genuine
    # older manifest edited to match (its mac no longer verifies; no key to redo it).
    prefix, older_id = older.rsplit("/", 1)
    forged_id = "29991231T235959Z"
    doc = json.loads(client.get_object(Bucket=s3.bucket, Key=manifest_of(older))["Body"].read())
    doc.update(id=forged_id, objectName=f"{forged_id}.tar.zst.enc",
               time="2999-12-31T23:59:59Z")
    client.copy_object(Bucket=s3.bucket, Key=f"{prefix}/{forged_id}.tar.zst.enc",
                       CopySource={"Bucket": s3.bucket, "Key": older})
    client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{forged_id}.manifest.json",
                      Body=json.dumps(doc).encode())
    _start(kubectl, "roller", namespace)
    refused("BackupTampered")

    # 2. Rollback: the forgery removed, the newest manifest overwritten with the older
    # one (the bucket now shows the older backup as the newest). The user retries.
    _stop(kubectl, "roller", namespace)
    client.delete_objects(Bucket=s3.bucket, Delete={"Objects": [
        {"Key": f"{prefix}/{forged_id}.tar.zst.enc"},
        {"Key": f"{prefix}/{forged_id}.manifest.json"}]})
    client.copy_object(Bucket=s3.bucket, Key=manifest_of(newest),
                       CopySource={"Bucket": s3.bucket, "Key": manifest_of(older)})
    _start(kubectl, "roller", namespace)
    ws = refused("BackupRolledBack")
    newest_id = newest.rsplit("/", 1)[1].removesuffix(".tar.zst.enc")
    assert f"agentspaces.dev/accept-rollback={newest_id}" in \
        condition(ws, "BackupRestored")["message"]

    # 3. The user accepts the loss: the older backup is restored and becomes the baseline.
    kubectl("annotate", "workspace", "roller", "-n", namespace,
            f"agentspaces.dev/accept-rollback={newest_id}")
    # The refusal is retried, so the annotation may be seen at its next retry, up to a
    # minute later (as for `younger` below).
    ws = _until(kubectl, "roller", namespace, "roller Ready after the rollback was accepted",
                lambda w: condition(w, "Ready").get("status") == "True", timeout=150)
    assert condition(ws, "BackupRestored")["reason"] == "Restored"
    assert (_files(vms, ws) / "project" / "main.py").read_text() == "generation 1\n"
    assert ws["status"]["backup"]["object"] == older
    assert older_id in ws["status"]["restore"]["object"]
    kubectl("delete", "workspace", "roller", "-n", namespace, "--wait=false")
    wait_for(lambda: not _ws(kubectl, "roller", namespace), 60, "roller deleted")


def _class_key(kubectl: Kubectl) -> bytes:
    found = kubectl.get_json("secret", f"{CLASS}-key", "-n", OPERATOR_NAMESPACE)
    assert found is not None
    return base64.b64decode(base64.b64decode(found["data"]["key"]))


@pytest.mark.parametrize(("case", "prefix", "labelled"), [
    ("other-namespace", "agentspaces/{victim_ns}/victim-0b1c2d3e-aaaa-bbbb-cccc-1234567890ab/",
     True),
    ("whole-bucket", "agentspaces/", True),
    ("outside-backups", "elsewhere/", True),
    ("hand-made", "agentspaces/{ns}/gone-0b1c2d3e-aaaa-bbbb-cccc-1234567890ab/", False),
], ids=["other-namespace", "whole-bucket", "outside-backups", "hand-made"])
def test_restore_from_only_reaches_retained_backups_of_the_same_namespace(
        stack: VmStack, kubectl: Kubectl, namespace: str, case: str, prefix: str,
        labelled: bool) -> None:
    """A namespace user forges a key Secret (labels, prefix annotation, even a data key
    the class key opens) and points restore-from at it: nothing is restored, no key is
    copied and no server is created."""
    _, wrapped = keys.create_data_key(_class_key(kubectl))
    labels = {"app.kubernetes.io/managed-by": "agentspaces",
              "agentspaces.dev/role": "backup-key",
              "agentspaces.dev/retained": "true"} if labelled else {}
    forged = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": f"{case}-key", "namespace": namespace, "labels": labels,
                           "annotations": {"agentspaces.dev/backup-prefix": prefix.format(
                               victim_ns="victims", ns=namespace)}},
              "stringData": keys.encode_key_secret(wrapped)}
    heir = yaml.safe_load(workspace(case, namespace, CLASS))
    heir["metadata"]["annotations"] = {"agentspaces.dev/restore-from": f"{case}-key"}
    kubectl.apply(yaml.safe_dump_all([forged, heir]))
    ws = _until(kubectl, case, namespace, "restore source refused",
                lambda w: condition(w, "BackupRestored").get("reason") == "RestoreSourceRefused")
    assert f"Secret {namespace}/{case}-key" in condition(ws, "BackupRestored")["message"]
    ready = condition(ws, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "RestoreSourceRefused")
    assert ws["status"]["phase"] == "Failed"
    assert "server" not in ws["status"] and "restore" not in ws["status"]
    uid = ws["metadata"]["uid"]
    assert [s for s in stack.clouds.hetzner.servers.values()
            if s["labels"].get("agentspaces.dev/workspace-uid") == uid] == []
    assert _key_secret(kubectl, case, namespace) is None  # nothing copied
    kubectl("delete", "workspace", case, "-n", namespace, "--wait=false")
    wait_for(lambda: not _ws(kubectl, case, namespace), 60, f"{case} deleted")


def test_retained_backups_rolled_back_before_adoption_are_refused(
        stack: VmStack, kubectl: Kubectl, namespace: str) -> None:
    """The retained key Secret remembers the last backup of the deleted Workspace; a
    bucket writer who deletes that backup's manifest before an heir adopts the prefix
    is detected (BackupRolledBack) until the user accepts the older backup."""
    vms, s3 = stack.vms, stack.s3
    assert s3 is not None
    kubectl.apply(workspace("elder", namespace, CLASS, persistence={"onDelete": "Retain"}))
    ws = _ready(kubectl, "elder", namespace)
    (_files(vms, ws) / "notes.txt").write_text("generation 1\n")
    older = _stop(kubectl, "elder", namespace)["status"]["backup"]["object"]
    _start(kubectl, "elder", namespace)
    ws = _ready(kubectl, "elder", namespace)
    (_files(vms, ws) / "notes.txt").write_text("generation 2\n")
    newest = _stop(kubectl, "elder", namespace)["status"]["backup"]["object"]
    assert newest != older
    kubectl("delete", "workspace", "elder", "-n", namespace, "--wait=false")
    wait_for(lambda: not _ws(kubectl, "elder", namespace), 60, "elder deleted")
    retained = _key_secret(kubectl, "elder", namespace)
    assert retained is not None
    newest_id = newest.rsplit("/", 1)[1].removesuffix(".tar.zst.enc")
    assert retained["metadata"]["annotations"]["agentspaces.dev/last-backup"] == newest_id

    _s3(s3).delete_object(Bucket=s3.bucket,
                          Key=newest.removesuffix(".tar.zst.enc") + ".manifest.json")
    heir = yaml.safe_load(workspace("younger", namespace, CLASS,
                                    persistence={"onDelete": "Delete"}))
    heir["metadata"]["annotations"] = {"agentspaces.dev/restore-from": "elder-backup-key"}
    kubectl.apply(yaml.safe_dump(heir))
    ws = _until(kubectl, "younger", namespace, "rollback of the retained backups refused",
                lambda w: condition(w, "BackupRestored").get("reason") == "BackupRolledBack")
    assert condition(ws, "Ready")["status"] == "False"
    assert "id" not in (ws["status"].get("server") or {})  # refused before any server
    assert [s for s in stack.clouds.hetzner.servers.values()
            if s["labels"].get("agentspaces.dev/workspace-uid") == ws["metadata"]["uid"]] == []

    kubectl("annotate", "workspace", "younger", "-n", namespace,
            f"agentspaces.dev/accept-rollback={newest_id}")
    # Still in its first (create) reconcile, so the annotation is seen at the refusal's
    # next retry, up to a minute later.
    ws = _until(kubectl, "younger", namespace, "younger Ready after the rollback was accepted",
                lambda w: condition(w, "Ready").get("status") == "True", timeout=150)
    assert (_files(vms, ws) / "notes.txt").read_text() == "generation 1\n"
    kubectl("delete", "workspace", "younger", "-n", namespace, "--wait=false")
    wait_for(lambda: not _ws(kubectl, "younger", namespace), 60, "younger deleted")
    kubectl("delete", "secret", "elder-backup-key", "-n", namespace)
