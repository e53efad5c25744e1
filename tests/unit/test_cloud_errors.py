"""One cloud error: how each adapter sorts provider failures into kinds, and how the
one helper turns a kind into a condition, an event and a requeue."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from hcloud import APIException
from requests.exceptions import ConnectTimeout

from agentspaces.api.enums import ConditionType as T
from agentspaces.api.enums import Reason
from agentspaces.clouds.errors import CloudError, ErrorKind
from agentspaces.clouds.hetzner import _classify
from agentspaces.clouds.r2 import ObjectNotFound, ObjectStoreError, S3ObjectStore
from agentspaces.reconcile.outcome import Wait, cloud_failure
from agentspaces.reconcile.scope import Scope
from agentspaces.reconcile.status import StatusDraft

BOOT_POLL = 5.0


@pytest.mark.parametrize(("code", "kind"), [
    ("rate_limit_exceeded", ErrorKind.RATE_LIMITED),
    ("unauthorized", ErrorKind.UNAUTHORIZED),
    ("forbidden", ErrorKind.UNAUTHORIZED),
    ("token_readonly", ErrorKind.UNAUTHORIZED),
    ("not_found", ErrorKind.NOT_FOUND),
    ("server_error", ErrorKind.TRANSIENT),
    ("locked", ErrorKind.TRANSIENT),
    ("conflict", ErrorKind.TRANSIENT),
    (503, ErrorKind.TRANSIENT),  # hcloud's code is the HTTP status for a non-JSON reply
    ("uniqueness_error", ErrorKind.PERMANENT),
    ("server_type_not_found", ErrorKind.PERMANENT),
    ("resource_limit_exceeded", ErrorKind.PERMANENT),
])
def test_hetzner_codes_map_to_kinds(code: str | int, kind: ErrorKind) -> None:
    err = _classify(APIException(code, "the provider's text", None))
    assert (err.kind, err.provider, err.code) == (kind, "hetzner", str(code))
    assert err.status == (code if isinstance(code, int) else None)
    assert str(err) == "the provider's text"


def test_hetzner_connection_failures_are_transient() -> None:
    err = _classify(ConnectTimeout("https://api.example/v1?token=secret"))
    assert (err.kind, err.code) == (ErrorKind.TRANSIENT, "unreachable")
    assert "secret" not in str(err) and "secret" not in repr(err)


class _RaisingClient:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def put_object(self, **_: Any) -> None:
        raise self.exc


def _s3_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}}, "PutObject")


@pytest.mark.parametrize(("code", "kind"), [
    ("SlowDown", ErrorKind.RATE_LIMITED),
    ("AccessDenied", ErrorKind.UNAUTHORIZED),
    ("InvalidAccessKeyId", ErrorKind.UNAUTHORIZED),
    ("InternalError", ErrorKind.TRANSIENT),
    ("503", ErrorKind.TRANSIENT),
    ("NoSuchKey", ErrorKind.NOT_FOUND),
    ("EntityTooLarge", ErrorKind.PERMANENT),
])
def test_object_store_errors_are_cloud_errors(code: str, kind: ErrorKind) -> None:
    store = S3ObjectStore(_RaisingClient(_s3_error(code)), "bucket")
    with pytest.raises(ObjectStoreError) as caught:
        store.put_object("ws/key", b"{}")
    err = caught.value
    assert isinstance(err, CloudError)
    assert (err.kind, err.provider, err.code) == (kind, "s3", code)
    assert isinstance(err, ObjectNotFound) == (kind is ErrorKind.NOT_FOUND)
    assert str(err) == f"put_object ws/key: {code}"


def test_object_store_without_a_reply_is_transient() -> None:
    store = S3ObjectStore(_RaisingClient(EndpointConnectionError(endpoint_url="http://x")),
                          "bucket")
    with pytest.raises(ObjectStoreError) as caught:
        store.put_object("k", b"")
    assert caught.value.kind is ErrorKind.TRANSIENT


# --- cloud_failure -------------------------------------------------------------------------
@dataclass
class _Scope:
    """What cloud_failure reads from a scope: the status, the event sink, the settings."""

    status: StatusDraft = field(default_factory=lambda: StatusDraft.begin(
        None, datetime(2026, 12, 2, 10, 0, tzinfo=UTC), 1))
    events: list[tuple[str, str, str]] = field(default_factory=list)
    runtime: Any = field(default_factory=lambda: SimpleNamespace(
        settings=SimpleNamespace(boot_poll=BOOT_POLL)))

    def emit(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


def _fail(err: CloudError, condition: T = T.SERVER_READY,
          what: str = "server") -> tuple[_Scope, float | None, str]:
    scope = _Scope()
    outcome = cloud_failure(cast(Scope, scope), condition, err, what)
    return scope, outcome.requeue, outcome.message


def test_rate_limit_waits_as_long_as_the_provider_says() -> None:
    scope, wait, _ = _fail(CloudError(ErrorKind.RATE_LIMITED, "cloudflare", "971", "slow",
                                      retry_after=42), T.DNS_READY, "DNS records")
    assert wait == 42
    assert scope.status.reason(T.DNS_READY) == Reason.RATE_LIMITED
    assert scope.events == []
    _, wait, _ = _fail(CloudError(ErrorKind.RATE_LIMITED, "hetzner", "rate_limit_exceeded",
                                  "slow"))
    assert wait == Wait.RATE_LIMITED


def test_transient_failure_retries_soon_without_an_event() -> None:
    scope, wait, _ = _fail(CloudError(ErrorKind.TRANSIENT, "hetzner", "server_error", "boom"))
    assert wait == BOOT_POLL * 2
    assert scope.status.reason(T.SERVER_READY) == Reason.CLOUD_API_ERROR
    assert scope.status.message(T.SERVER_READY) == "server: boom"
    assert scope.events == []


@pytest.mark.parametrize(("provider", "code", "reason"), [
    ("hetzner", "server_type_not_found", Reason.SERVER_TYPE_NOT_FOUND),
    ("hetzner", "invalid_server_type", Reason.SERVER_TYPE_NOT_FOUND),
    ("hetzner", "location_not_found", Reason.LOCATION_NOT_FOUND),
    ("hetzner", "image_not_found", Reason.IMAGE_NOT_FOUND),
    ("hetzner", "invalid_input", Reason.INVALID_INPUT),
    ("hetzner", "resource_limit_exceeded", Reason.RESOURCE_LIMIT_EXCEEDED),
    ("hetzner", "placement_error", Reason.CLOUD_API_ERROR),
    ("cloudflare", "9005", Reason.CLOUD_API_ERROR),
])
def test_permanent_failure_names_the_reason_and_warns(provider: str, code: str,
                                                      reason: Reason) -> None:
    scope, wait, message = _fail(CloudError(ErrorKind.PERMANENT, provider, code, "refused"))
    assert (wait, message) == (Wait.PERMANENT, code)
    assert scope.status.reason(T.SERVER_READY) == reason
    assert scope.events == [("Warning", reason, "server: refused")]
    assert not scope.status.reason(T.CREDENTIALS_AVAILABLE)


def test_missing_zone_is_zone_not_found() -> None:
    scope, wait, _ = _fail(CloudError(ErrorKind.NOT_FOUND, "cloudflare", "zone_not_found",
                                      "zone example.com not found"), T.DNS_READY, "DNS")
    assert wait == Wait.PERMANENT
    assert scope.status.reason(T.DNS_READY) == Reason.DNS_ZONE_NOT_FOUND


def test_refused_token_also_marks_credentials_invalid() -> None:
    scope, wait, _ = _fail(CloudError(ErrorKind.UNAUTHORIZED, "cloudflare", "9109",
                                      "Invalid access token"), T.DNS_READY, "DNS records")
    assert wait == Wait.PERMANENT
    assert scope.status.reason(T.DNS_READY) == Reason.CREDENTIALS_INVALID
    assert not scope.status.is_true(T.CREDENTIALS_AVAILABLE)
    assert scope.status.reason(T.CREDENTIALS_AVAILABLE) == Reason.CREDENTIALS_INVALID
    assert "cloudflare API token was refused (9109)" in scope.status.message(
        T.CREDENTIALS_AVAILABLE)
    assert [e[:2] for e in scope.events] == [("Warning", Reason.CREDENTIALS_INVALID)]
