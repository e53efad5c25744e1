"""Share links: signed, expiring grants to one port host of one workspace.

A link is `https://{port}.{host}/?agentspaces-share=<token>`. The token names the port,
its expiry and whether its holder may wake a stopped workspace, and carries an HMAC of
those and the workspace host under the workspace's link key. The key lives only in the
workspace's access Secret (and, delivered after boot, on its VM and in the wake
gateway's memory): rotating it revokes every link at once. A token for one port never
opens another port or the IDE, and one workspace's token never opens another's (the host
is signed and the keys differ).

Pure apart from the clock the caller passes in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

QUERY_PARAM = "agentspaces-share"
COOKIE = "agentspaces-share"
KEY_BYTES = 32
MAX_TOKEN_CHARS = 256
_VERSION = "v1"
_TOKEN_RE = re.compile(r"^v1\.(\d{1,5})\.(\d{1,12})\.([w-])\.([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class ShareGrant:
    port: int
    expires: int  # unix seconds
    may_wake: bool


def new_key() -> str:
    """A fresh link key, as stored in the access Secret (base64url, no padding)."""
    return _b64(secrets.token_bytes(KEY_BYTES))


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_key(text: str) -> bytes | None:
    """The raw key, or None when `text` is not a well-formed key."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == KEY_BYTES else None


def _signature(key: bytes, host: str, port: int, expires: int, flag: str) -> str:
    message = f"agentspaces-share-{_VERSION}\n{host.lower()}\n{port}\n{expires}\n{flag}"
    return _b64(hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest())


def mint(key: bytes, host: str, port: int, expires: int, *, may_wake: bool) -> str:
    """A token for `port` of the workspace at `host`, valid until `expires`."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    flag = "w" if may_wake else "-"
    return f"{_VERSION}.{port}.{expires}.{flag}.{_signature(key, host, port, expires, flag)}"


def verify(key: bytes, token: str, host: str, port: int, now: float) -> ShareGrant | None:
    """The grant when `token` is ours, for this host and port, and not expired; else None
    (callers answer 403 without saying which check failed)."""
    if len(token) > MAX_TOKEN_CHARS:
        return None
    match = _TOKEN_RE.match(token)
    if match is None:
        return None
    token_port, expires, flag = int(match[1]), int(match[2]), match[3]
    expected = _signature(key, host, token_port, expires, flag)
    if not hmac.compare_digest(expected, match[4]):
        return None
    if token_port != port or expires <= now:
        return None
    return ShareGrant(port=token_port, expires=expires, may_wake=flag == "w")


def link(scheme_host: str, token: str) -> str:
    """The URL to hand out: `scheme_host` is `https://{port}.{host}[:p]`."""
    return f"{scheme_host}/?{QUERY_PARAM}={token}"
