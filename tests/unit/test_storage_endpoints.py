"""Which endpoint each object-store call uses: the VMs' presigned URLs are signed for
`storage.vmEndpoint`, every call the operator makes itself goes to `storage.endpoint`.

The boto3 clients are real; a `before-send` hook answers each request in place of a
server and records where it was sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.awsrequest import AWSPreparedRequest, AWSResponse

from agentspaces.api.types import WorkspaceClass
from agentspaces.clouds import r2
from agentspaces.persistence import backups, keys
from agentspaces.reconcile import backup_step
from agentspaces.runtime import Runtime
from tests.support.scope_builder import SETTINGS

OPERATOR_ENDPOINT = "https://r2.example.com"
VM_ENDPOINT = "http://10.0.2.2:9000"
NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
XMLNS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
ANSWERS = {
    "POST": f"<InitiateMultipartUploadResult {XMLNS}><Bucket>backups</Bucket><Key>k</Key>"
            "<UploadId>upload-1</UploadId></InitiateMultipartUploadResult>",
    "GET": f"<ListBucketResult {XMLNS}><Name>backups</Name><KeyCount>0</KeyCount>"
           "<IsTruncated>false</IsTruncated></ListBucketResult>",
}


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


class Bucket:
    """Stands in for the S3 server: records (method, URL) of every request sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def answer(self, request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        self.sent.append((request.method, request.url))
        if request.method == "HEAD":  # no such manifest yet
            return AWSResponse(request.url, 404, {}, _Raw(b""))
        body = ANSWERS.get(request.method, f"<DeleteResult {XMLNS}/>").encode()
        return AWSResponse(request.url, 200, {"Content-Type": "application/xml"},
                           _Raw(body))


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Bucket:
    fake = Bucket()
    real = r2.make_client

    def client(*args: Any, **kwargs: Any) -> Any:
        made = real(*args, **kwargs)
        made.meta.events.register("before-send.s3", fake.answer)
        return made

    monkeypatch.setattr(r2, "make_client", client)
    return fake


def _netloc(url: str) -> str:
    return urlsplit(url).netloc


def test_presigned_urls_are_signed_for_the_vm_endpoint_and_calls_use_the_endpoint(
        bucket: Bucket) -> None:
    store = r2.S3ObjectStore.connect(OPERATOR_ENDPOINT, "backups", "AKID", "SECRET",
                                     vm_endpoint=VM_ENDPOINT)
    ws = backups.BackupLocation.for_workspace("agentspaces/", "team-a", "demo", "1a2b3c4d")
    data_key = keys.DataKey(keys.new_key_id(), keys.generate_data_key())

    plan, pending = backups.begin_backup(store, ws, data_key, NOW, max_parts=3)
    store.list_objects(ws.prefix)
    store.delete_objects([pending.object_key])
    url = store.presign_get(pending.object_key, 600)
    store.close()

    # Every part URL and the download URL: the VM's address, and signed for its host
    # (SigV4 signs the host header, so the URL works only where it names).
    for presigned in (*plan.part_urls, url):
        assert presigned.startswith(f"{VM_ENDPOINT}/backups/agentspaces/team-a/")
        assert parse_qs(urlsplit(presigned).query)["X-Amz-SignedHeaders"] == ["host"]
    # The operator's own calls (head, create, list, delete) never leave for the VM's.
    assert [method for method, _ in bucket.sent] == ["HEAD", "POST", "GET", "POST"]
    assert {_netloc(u) for _, u in bucket.sent} == {_netloc(OPERATOR_ENDPOINT)}


def test_without_a_vm_endpoint_both_use_the_endpoint(bucket: Bucket) -> None:
    store = r2.S3ObjectStore.connect(OPERATOR_ENDPOINT, "backups", "AKID", "SECRET")
    assert store.presign_get("k", 60).startswith(f"{OPERATOR_ENDPOINT}/backups/k?")
    store.head_object("k")
    assert [_netloc(u) for _, u in bucket.sent] == [_netloc(OPERATOR_ENDPOINT)]


def test_the_backup_step_builds_its_store_with_the_class_vm_endpoint(bucket: Bucket) -> None:
    klass = WorkspaceClass.from_body({"metadata": {"name": "c"}, "spec": {
        "hetzner": {"tokenSecretRef": {"name": "h"}},
        "dns": {"zoneName": "example.com", "tokenSecretRef": {"name": "cf"}},
        "storage": {"endpoint": OPERATOR_ENDPOINT, "vmEndpoint": VM_ENDPOINT,
                    "bucket": "backups", "credentialsSecretRef": {"name": "r2"}},
        "encryption": {"keySecretRef": {"name": "k"}}}})
    runtime = Runtime(SETTINGS, kube=None)  # type: ignore[arg-type]

    class Creds:
        storage_access_key, storage_secret_key = "AKID", "SECRET"

    class Scope:  # what backup_step.store reads of a scope
        pass

    scope: Any = Scope()
    scope.klass, scope.creds, scope.runtime = klass, Creds(), runtime
    store = backup_step.store(scope)
    assert store.presign_get("k", 60).startswith(f"{VM_ENDPOINT}/backups/k?")
    store.head_object("k")
    assert [_netloc(u) for _, u in bucket.sent] == [_netloc(OPERATOR_ENDPOINT)]
    asyncio.run(runtime.aclose())
