"""The object-store port for backups and its boto3 adapter (Cloudflare R2, any S3 API).

The port is synchronous, like boto3. Operator code running on the event loop must call
it (and the backup orchestration built on it) through `asyncio.to_thread`, e.g.
`await asyncio.to_thread(store.list_objects, prefix)`; a boto3 client is thread-safe.

R2 specifics the adapter takes care of: region "auto", SigV4, and checksum
calculation/validation only "when required" (boto3 >= 1.36 otherwise adds CRC32
headers that R2 rejects). Presigned URLs are generated offline and carry no checksum
parameters, so the VM can PUT/GET them with a plain HTTP client. They are signed for
the class's `storage.vmEndpoint` when it has one (the bucket as the VMs reach it); every
call the operator makes itself goes to `storage.endpoint`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from agentspaces import metrics
from agentspaces.api.types import StorageSettings
from agentspaces.clouds.errors import CloudError, ErrorKind

DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


PROVIDER = "s3"
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchUpload"})
_UNAUTHORIZED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId",
                                 "SignatureDoesNotMatch", "403", "401"})
_RATE_LIMITED_CODES = frozenset({"SlowDown", "TooManyRequests", "429"})
_TRANSIENT_CODES = frozenset({"InternalError", "ServiceUnavailable", "RequestTimeout"})


class ObjectStoreError(CloudError):
    """A store call failed: a `CloudError` of provider "s3" whose `code` is the S3
    error code (or the client error's name)."""

    def __init__(self, message: str, code: str = "",
                 kind: ErrorKind = ErrorKind.PERMANENT) -> None:
        super().__init__(kind, PROVIDER, code, message)


class ObjectNotFound(ObjectStoreError):
    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message, code, ErrorKind.NOT_FOUND)


def _kind(code: str) -> ErrorKind:
    if code in _UNAUTHORIZED_CODES:
        return ErrorKind.UNAUTHORIZED
    if code in _RATE_LIMITED_CODES:
        return ErrorKind.RATE_LIMITED
    if code in _TRANSIENT_CODES or code.startswith("5"):
        return ErrorKind.TRANSIENT
    return ErrorKind.PERMANENT


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime | None = None
    etag: str = ""


@dataclass(frozen=True)
class MultipartUpload:
    key: str
    upload_id: str
    initiated: datetime | None = None


@dataclass(frozen=True)
class CompletedPart:
    part_number: int
    etag: str


class ObjectStore(Protocol):
    """What backups need from a bucket. Keys are full object keys; all calls block."""

    def create_multipart_upload(self, key: str,
                                content_type: str = "application/octet-stream") -> str: ...

    def presign_upload_part(self, key: str, upload_id: str, part_number: int,
                            expires: int) -> str: ...

    def complete_multipart_upload(self, key: str, upload_id: str,
                                  parts: Sequence[CompletedPart]) -> str: ...

    def abort_multipart_upload(self, key: str, upload_id: str) -> None: ...

    def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]: ...

    def presign_get(self, key: str, expires: int) -> str: ...

    def put_object(self, key: str, body: bytes,
                   content_type: str = "application/json") -> None: ...

    def get_object(self, key: str) -> bytes: ...

    def head_object(self, key: str) -> ObjectInfo | None: ...

    def list_objects(self, prefix: str) -> list[ObjectInfo]: ...

    def delete_objects(self, keys: Iterable[str]) -> None: ...


def make_client(endpoint: str, access_key_id: str, secret_access_key: str,
                region: str = "auto", addressing_style: str = "path") -> Any:
    """A boto3 S3 client configured for R2 (works with any S3-compatible endpoint)."""
    if addressing_style not in ("path", "virtual"):
        raise ValueError("addressing_style must be path or virtual")
    config = Config(
        region_name=region or "auto",
        signature_version="s3v4",
        s3={"addressing_style": addressing_style},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
    )
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key, config=config)
    # Emitted after every HTTP attempt (retries included), with its response or error.
    client.meta.events.register("needs-retry.s3", _count_attempt)
    return client


def _count_attempt(response: Any = None, operation: Any = None, **_: Any) -> None:
    """One S3 request for the metrics, named by its operation ("PutObject")."""
    code = None
    if isinstance(response, tuple) and response:
        code = getattr(response[0], "status_code", None)
    metrics.cloud_operation(PROVIDER, str(getattr(operation, "name", "") or "other"), code)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _check_expiry(expires: int) -> int:
    if not 1 <= int(expires) <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"presigned URL expiry must be 1..{MAX_PRESIGN_SECONDS} seconds")
    return int(expires)


class S3ObjectStore:
    """The boto3 adapter for one bucket. Errors surface as ObjectStoreError (no secrets
    in messages: only the operation, key and S3 error code)."""

    def __init__(self, client: Any, bucket: str, presign_client: Any | None = None) -> None:
        self._s3 = client
        self.bucket = bucket
        # Signs the URLs handed to VMs (offline: it never opens a connection).
        self._presign = presign_client if presign_client is not None else client

    def close(self) -> None:
        """Close the boto3 clients' connection pools."""
        self._s3.close()
        if self._presign is not self._s3:
            self._presign.close()

    @classmethod
    def connect(cls, endpoint: str, bucket: str, access_key_id: str, secret_access_key: str,
                region: str = "auto", addressing_style: str = "path",
                vm_endpoint: str | None = None) -> S3ObjectStore:
        """`vm_endpoint`: the address the presigned URLs are signed for, when the VMs
        reach the bucket elsewhere than the operator does."""
        client = make_client(endpoint, access_key_id, secret_access_key, region,
                             addressing_style)
        presign = None if vm_endpoint in (None, endpoint) else make_client(
            vm_endpoint, access_key_id, secret_access_key, region, addressing_style)
        return cls(client, bucket, presign)

    def _call(self, op: str, key: str, **params: Any) -> Any:
        try:
            return getattr(self._s3, op)(Bucket=self.bucket, **params)
        except ClientError as exc:
            code = _error_code(exc)
            if code in _NOT_FOUND_CODES:
                raise ObjectNotFound(f"{op} {key}: {code}", code) from None
            raise ObjectStoreError(f"{op} {key}: {code or 'error'}", code,
                                   _kind(code)) from None
        except BotoCoreError as exc:  # no reply: connection, timeout, bad endpoint
            raise ObjectStoreError(f"{op} {key}: {type(exc).__name__}",
                                   type(exc).__name__, ErrorKind.TRANSIENT) from None

    def create_multipart_upload(self, key: str,
                                content_type: str = "application/octet-stream") -> str:
        return str(self._call("create_multipart_upload", key, Key=key,
                              ContentType=content_type)["UploadId"])

    def presign_upload_part(self, key: str, upload_id: str, part_number: int,
                            expires: int) -> str:
        return str(self._presign.generate_presigned_url(
            "upload_part", HttpMethod="PUT", ExpiresIn=_check_expiry(expires),
            Params={"Bucket": self.bucket, "Key": key, "UploadId": upload_id,
                    "PartNumber": part_number}))

    def complete_multipart_upload(self, key: str, upload_id: str,
                                  parts: Sequence[CompletedPart]) -> str:
        body = {"Parts": [{"PartNumber": p.part_number, "ETag": p.etag} for p in parts]}
        out = self._call("complete_multipart_upload", key, Key=key, UploadId=upload_id,
                         MultipartUpload=body)
        return str(out.get("ETag", ""))

    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """Idempotent: an upload that is already gone counts as aborted."""
        with contextlib.suppress(ObjectNotFound):
            self._call("abort_multipart_upload", key, Key=key, UploadId=upload_id)

    def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        uploads: list[MultipartUpload] = []
        params: dict[str, Any] = {"Prefix": prefix}
        for _ in range(100_000):  # bounded: each page advances the markers
            page = self._call("list_multipart_uploads", prefix, **params)
            uploads.extend(MultipartUpload(u["Key"], u["UploadId"], u.get("Initiated"))
                           for u in page.get("Uploads", []))
            if not page.get("IsTruncated"):
                break
            params["KeyMarker"] = page.get("NextKeyMarker", "")
            params["UploadIdMarker"] = page.get("NextUploadIdMarker", "")
        return uploads

    def presign_get(self, key: str, expires: int) -> str:
        return str(self._presign.generate_presigned_url(
            "get_object", HttpMethod="GET", ExpiresIn=_check_expiry(expires),
            Params={"Bucket": self.bucket, "Key": key}))

    def put_object(self, key: str, body: bytes, content_type: str = "application/json") -> None:
        self._call("put_object", key, Key=key, Body=body, ContentType=content_type)

    def get_object(self, key: str) -> bytes:
        out = self._call("get_object", key, Key=key)
        try:
            return bytes(out["Body"].read())
        finally:
            out["Body"].close()

    def head_object(self, key: str) -> ObjectInfo | None:
        try:
            out = self._call("head_object", key, Key=key)
        except ObjectNotFound:
            return None
        return ObjectInfo(key, int(out.get("ContentLength", 0)), out.get("LastModified"),
                          str(out.get("ETag", "")))

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        objects: list[ObjectInfo] = []
        params: dict[str, Any] = {"Prefix": prefix}
        for _ in range(100_000):
            page = self._call("list_objects_v2", prefix, **params)
            objects.extend(ObjectInfo(o["Key"], int(o.get("Size", 0)), o.get("LastModified"),
                                      str(o.get("ETag", "")))
                           for o in page.get("Contents", []))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                break
            params["ContinuationToken"] = token
        return objects

    def delete_objects(self, keys: Iterable[str]) -> None:
        """Delete in batches of 1000; missing keys are fine, any other failure raises."""
        pending = list(dict.fromkeys(keys))
        for start in range(0, len(pending), DELETE_BATCH):
            batch = pending[start:start + DELETE_BATCH]
            out = self._call("delete_objects", batch[0], Delete={
                "Objects": [{"Key": k} for k in batch], "Quiet": True})
            errors = [e for e in out.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                first = errors[0]
                raise ObjectStoreError(
                    f"delete_objects: {len(errors)} failed, e.g. {first.get('Key')}: "
                    f"{first.get('Code')}", str(first.get("Code", "")))


def store_for_class(storage: StorageSettings, access_key_id: str,
                    secret_access_key: str) -> S3ObjectStore:
    """The adapter for a WorkspaceClass's `spec.storage` and its credentials."""
    return S3ObjectStore.connect(storage.endpoint, storage.bucket, access_key_id,
                                 secret_access_key, storage.region, storage.addressing_style,
                                 vm_endpoint=storage.vm_endpoint)
