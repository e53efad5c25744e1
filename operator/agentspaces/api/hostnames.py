"""Hostnames: one DNS label per workspace, unique across namespaces.

The label is `{name}-{namespace}-{hash}`: readable, and the 6-hex-digit hash of
`namespace/name` keeps it unique even where the readable part is ambiguous (workspace
`a-b` in namespace `c` and `a` in `b-c` both read `a-b-c`). When the readable part
would push the label past 63 characters it is cut, never the hash. The label doubles
as the Hetzner server name.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
_HASH_LEN = 6


def _clean(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def workspace_label(name: str, namespace: str) -> str:
    """The DNS label naming one workspace, stable for its lifetime."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:_HASH_LEN]
    readable = _clean(f"{name}-{namespace}")[: MAX_LABEL - _HASH_LEN - 1].rstrip("-")
    return f"{readable}-{digest}" if readable else f"ws-{digest}"


def workspace_host(label: str, base_domain: str) -> str:
    return f"{label}.{base_domain}"


def port_host(port: int, host: str) -> str:
    return f"{port}.{host}"
