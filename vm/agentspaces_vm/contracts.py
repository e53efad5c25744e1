"""What the operator and the workspace agent exchange, declared once for both sides.

The operator imports this module from the agent's package (which stays stdlib-only),
so a document is built and parsed by the same code on both ends.
"""

from __future__ import annotations

from datetime import UTC, datetime

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second resolution: how every time travels and is stored."""
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str | None) -> datetime | None:
    """The inverse of format_time; also reads `+00:00` offsets and fractions."""
    if not text:
        return None
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
