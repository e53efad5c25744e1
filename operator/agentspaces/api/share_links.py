"""Share links as users ask for them: the annotations, their values, and the link's URL.

Shared by the operator (which acts on the annotations) and the CLI (which mints a link
itself from the access Secret's key). Tokens are agentspaces_vm.share_links'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from agentspaces.api.durations import format_duration, parse_duration
from agentspaces_vm import share_links

REVOKE_ANNOTATION = "agentspaces.dev/revoke-share-links"
LINK_ANNOTATION_PREFIX = "agentspaces.dev/share-link."
KEY_FIELD = "shareLinkKey"
"""In `<name>-access`: the link key; a new one revokes every link."""
SESSION_KEY_FIELD = "sessionKey"
"""In `<name>-access`: signs browser sessions on the VM and the wake gateway."""
LINK_FIELD_PREFIX = "shareLink."
"""In `<name>-access`: `shareLink.<port>`, the URL of the last link the operator made."""
MAX_LIFETIME = timedelta(days=30)
MIN_LIFETIME = timedelta(minutes=1)
WAKE_FLAG = "wake"
_DAYS = re.compile(r"^([0-9]{1,3})d$")
VALUE_HINT = "expected <duration>[,wake], e.g. 24h, 90m or 7d,wake"


@dataclass(frozen=True)
class LinkRequest:
    lifetime: timedelta
    may_wake: bool


def parse_lifetime(text: str) -> timedelta:
    """`24h`, `1h30m`, `7d`: at least a minute, at most 30 days; ValueError says why."""
    text = text.strip()
    days = _DAYS.match(text)
    try:
        lifetime = timedelta(days=int(days[1])) if days else parse_duration(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a duration ({VALUE_HINT})") from None
    if lifetime < MIN_LIFETIME:
        raise ValueError(f"{text} is shorter than a minute")
    if lifetime > MAX_LIFETIME:
        raise ValueError(f"{text} is longer than the most a link may last "
                         f"({MAX_LIFETIME.days}d, {format_duration(MAX_LIFETIME)})")
    return lifetime


def parse_request(value: str) -> LinkRequest:
    """An `agentspaces.dev/share-link.<port>` value: `<duration>[,wake]`."""
    parts = [part.strip() for part in value.split(",")]
    if not 1 <= len(parts) <= 2 or (len(parts) == 2 and parts[1] != WAKE_FLAG):
        raise ValueError(VALUE_HINT)
    return LinkRequest(parse_lifetime(parts[0]), may_wake=len(parts) == 2)


def annotation_port(key: str) -> int | None:
    """The port an `agentspaces.dev/share-link.<port>` key names (None: not one of
    ours); ValueError when it names no valid port."""
    if not key.startswith(LINK_ANNOTATION_PREFIX):
        return None
    label = key.removeprefix(LINK_ANNOTATION_PREFIX)
    if not label.isdigit() or label.startswith("0") or not 1 <= int(label) <= 65535:
        raise ValueError(f"{label[:20]!r} is not a port number")
    return int(label)


def port_base_url(ports_pattern: str, port: int) -> str:
    """`https://{port}.host[:p]` from status.urls.ports' pattern."""
    return ports_pattern.replace("{port}", str(port))


def mint_link(key_text: str, workspace_host: str, ports_pattern: str, port: int,
              expires: int, *, may_wake: bool) -> str:
    """The URL to hand out; ValueError when `key_text` is not a link key."""
    key = share_links.decode_key(key_text)
    if key is None:
        raise ValueError(f"{KEY_FIELD} is not a valid key")
    token = share_links.mint(key, workspace_host, port, expires, may_wake=may_wake)
    return share_links.link(port_base_url(ports_pattern, port), token)
