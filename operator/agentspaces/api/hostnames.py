"""Hostnames: one DNS label per workspace, unique across namespaces.

The label is `{name}-{namespace}-{hash}`: readable, and the hash of `namespace/name`
keeps it unique even where the readable part is ambiguous (workspace `a-b` in namespace
`c` and `a` in `b-c` both read `a-b-c`) or cut. The hash is 13 base32 characters
(65 bits of SHA-256), so nobody can choose a name whose label equals another
workspace's. When the readable part would push the label past 63 characters it is cut,
never the hash. The label doubles as the Hetzner server name.

Workspaces created before the hash grew carry a 6-hex-digit label; the operator keeps
whatever label `status.hostname` records (see `recorded_label`), so no running
workspace is ever renamed.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import TypeGuard

MAX_LABEL = 63
HASH_LEN = 13
"""Base32 characters of hash: 5 bits each, 65 bits in all."""

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def _clean(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def _digest(name: str, namespace: str) -> str:
    raw = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return base64.b32encode(raw).decode().lower()[:HASH_LEN]


def workspace_label(name: str, namespace: str) -> str:
    """The DNS label a new workspace gets, stable for its lifetime."""
    digest = _digest(name, namespace)
    readable = _clean(f"{name}-{namespace}")[: MAX_LABEL - HASH_LEN - 1].rstrip("-")
    return f"{readable}-{digest}" if readable else f"ws-{digest}"


def is_label(text: object) -> TypeGuard[str]:
    return isinstance(text, str) and _LABEL.fullmatch(text) is not None


def recorded_label(recorded: object, name: str, namespace: str) -> str:
    """The label in `status.hostname` when it holds one, else the label of a new
    workspace: a workspace keeps its name across operator upgrades."""
    return recorded if is_label(recorded) else workspace_label(name, namespace)


def workspace_host(label: str, base_domain: str) -> str:
    return f"{label}.{base_domain}"


def port_host(port: int, host: str) -> str:
    return f"{port}.{host}"
