"""What a reconcile tells Kopf, and every wait the operator uses, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentspaces.api.enums import ConditionType, Reason
from agentspaces.clouds.budget import BudgetExhausted
from agentspaces.clouds.errors import CloudError, ErrorKind

if TYPE_CHECKING:  # the scope builds on this module
    from agentspaces.reconcile.scope import Scope


@dataclass(frozen=True)
class Outcome:
    """Done, or come back after `requeue` seconds (Kopf retries with that delay)."""

    requeue: float | None = None
    message: str = ""

    @classmethod
    def done(cls) -> Outcome:
        return cls()

    @classmethod
    def after(cls, seconds: float, message: str) -> Outcome:
        return cls(requeue=seconds, message=message)


class Wait:
    """Requeue delays in seconds. Waits that scale with the settings (boot poll, poll
    interval) are read from OperatorSettings where they are used."""

    PERMANENT = 300.0
    """A user or another owner has to change something (a taken name, a refused input)."""
    RATE_LIMITED = 30.0
    """A provider said slow down without saying for how long."""
    CREDENTIALS = 30.0
    """A class, Secret or credential is missing or refused."""
    RECORDED = 2.0
    """A new server's id was just written to status."""
    REFUSED_SERVER = 1.0
    """Status named a server that is not ours, or it vanished: re-read at once."""
    FIREWALL = 30.0
    BACKUP_FAILED = 60.0
    BACKUP_RETRY = 30.0
    """A store or agent hiccup during a backup."""
    BACKUP_POLL = 2.0
    """A backup is running on the agent: how soon to ask how far it got."""
    PRE_STOP_POLL = 1.0
    """The pre-stop save is running (most take well under a second)."""
    NEXT_SECOND = 1.0
    """Wait out this second: backup ids and status times have second resolution, so a
    stop or a backup cannot be told apart from one begun earlier in the same second."""
    CLASS_PROTECTED = 1.0
    """A tenant's class or its Secrets are not yet kept from deletion (class_protection)."""
    HOST_TAKEN = 300.0
    HOST_CONTENDED = 5.0
    USER_DATA_TOO_LARGE_POLLS = 10
    """Poll intervals between retries: only a spec change helps."""


# Provider error codes a user must act on, and the condition reason that says which.
_REASONS: dict[tuple[str, str], Reason] = {
    ("hetzner", "invalid_input"): Reason.INVALID_INPUT,
    ("hetzner", "resource_limit_exceeded"): Reason.RESOURCE_LIMIT_EXCEEDED,
    ("hetzner", "server_type_not_found"): Reason.SERVER_TYPE_NOT_FOUND,
    ("hetzner", "invalid_server_type"): Reason.SERVER_TYPE_NOT_FOUND,
    ("hetzner", "location_not_found"): Reason.LOCATION_NOT_FOUND,
    ("hetzner", "image_not_found"): Reason.IMAGE_NOT_FOUND,
    ("cloudflare", "zone_not_found"): Reason.DNS_ZONE_NOT_FOUND,
}


def cloud_failure(scope: Scope, condition: ConditionType, err: CloudError,
                  what: str) -> Outcome:
    """Record a failed cloud call on `condition` and say when to try again: the
    provider's wait for a rate limit, a short one for a passing failure, a long one
    (with a Warning event) when a person has to change something."""
    status = scope.status
    if isinstance(err, BudgetExhausted):
        # The operator held the call back itself; the message stays the same while it
        # waits (no status write per retry), the requeue is the budget's staggered slot.
        status.condition(condition, False, Reason.WAITING_FOR_CLOUD_BUDGET,
                         f"{what}: {err.message}")
        return Outcome.after(err.retry_after or Wait.RATE_LIMITED, "waiting for budget")
    if err.kind is ErrorKind.RATE_LIMITED:
        status.condition(condition, False, Reason.RATE_LIMITED,
                         f"{what}: provider rate limit reached, retrying")
        return Outcome.after(err.retry_after or Wait.RATE_LIMITED, "rate limited")
    message = f"{what}: {err.message}"
    if err.kind is ErrorKind.TRANSIENT:
        status.condition(condition, False, Reason.CLOUD_API_ERROR, message)
        return Outcome.after(scope.runtime.settings.boot_poll * 2, "transient cloud error")
    if err.kind is ErrorKind.UNAUTHORIZED:
        reason = Reason.CREDENTIALS_INVALID
        status.condition(ConditionType.CREDENTIALS_AVAILABLE, False, reason,
                         f"{what}: the {err.provider} API token was refused ({err.code})")
    else:
        reason = _REASONS.get((err.provider, err.code), Reason.CLOUD_API_ERROR)
    status.condition(condition, False, reason, message)
    scope.emit("Warning", reason, message)
    return Outcome.after(Wait.PERMANENT, err.code or reason)
