"""What a reconcile tells Kopf, and every wait the operator uses, in one place."""

from __future__ import annotations

from dataclasses import dataclass


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
    HOST_TAKEN = 300.0
    HOST_CONTENDED = 5.0
    USER_DATA_TOO_LARGE_POLLS = 10
    """Poll intervals between retries: only a spec change helps."""
