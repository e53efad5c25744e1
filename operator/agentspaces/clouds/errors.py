"""The one error every cloud adapter raises (Hetzner, Cloudflare, the S3 object store).

Adapters sort each failure into a kind the reconciler acts on: wait for the provider
(`RATE_LIMITED`, with its `retry_after` when it said one), try again soon
(`TRANSIENT`), or wait for a person to fix something (`PERMANENT`, `UNAUTHORIZED`,
`NOT_FOUND`). No adapter sleeps or retries: the reconciler requeues through Kopf.
`code` is the provider's own error code and `message` its text with any token
scrubbed, so `str(err)` is safe for logs, events and status.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    TRANSIENT = "transient"
    """5xx, timeout, connection failure: the same call may succeed later."""
    RATE_LIMITED = "rate_limited"
    """The token's request budget is spent, for `retry_after` seconds if known."""
    PERMANENT = "permanent"
    """The provider refused the request as made (bad input, a limit, a taken name)."""
    UNAUTHORIZED = "unauthorized"
    """The token is invalid or lacks a permission."""
    NOT_FOUND = "not_found"
    """What the request names does not exist (or the token cannot see it)."""


class CloudError(Exception):
    """A cloud call failed; `kind` says what the reconciler should do about it."""

    def __init__(self, kind: ErrorKind, provider: str, code: str, message: str, *,
                 retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.provider = provider
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.status = status

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kind={self.kind.value!r}, provider={self.provider!r}, "
                f"code={self.code!r}, status={self.status!r})")

    @property
    def transient(self) -> bool:
        """Worth calling again soon (a rate limit or a passing failure)."""
        return self.kind in (ErrorKind.TRANSIENT, ErrorKind.RATE_LIMITED)
