"""Authenticate backup manifests, so a bucket writer cannot forge or alter one.

The MAC is HMAC-SHA256 under `keys.manifest_mac_key(data key)` over the manifest's
canonical JSON (sorted keys, no spaces, ASCII) without the `mac` field itself. Every
field is covered: workspace uid, backup id, object name, size, sha256, times, key id,
format. The operator signs when it commits a backup and verifies before it builds a
restore plan; a manifest that fails is `ManifestTampered`, never a fallback to another.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from agentspaces.persistence.keys import DataKey, manifest_mac_key

MAC_FIELD = "mac"
_LABEL = b"agentspaces backup manifest v2\x00"


class ManifestTampered(Exception):
    """The manifest is not one the operator wrote with this workspace's data key."""

    reason = "BackupTampered"


def _canonical(doc: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != MAC_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def compute_mac(doc: Mapping[str, Any], data_key: DataKey) -> str:
    return hmac.new(manifest_mac_key(data_key), _LABEL + _canonical(doc),
                    hashlib.sha256).hexdigest()


def sign(doc: Mapping[str, Any], data_key: DataKey) -> dict[str, Any]:
    """The manifest with its `mac` field set."""
    return {**{k: v for k, v in doc.items() if k != MAC_FIELD},
            MAC_FIELD: compute_mac(doc, data_key)}


def verify(doc: Mapping[str, Any], data_key: DataKey) -> None:
    """Raise ManifestTampered unless `doc` carries a valid MAC for this data key."""
    mac = doc.get(MAC_FIELD)
    if not isinstance(mac, str) or not mac:
        raise ManifestTampered("the backup manifest is not authenticated (no mac)")
    try:
        expected = compute_mac(doc, data_key)
    except ValueError:  # e.g. NaN smuggled into a number field
        raise ManifestTampered("the backup manifest is not canonical JSON") from None
    if not hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")):
        raise ManifestTampered("the backup manifest's mac does not verify with the "
                               "workspace's data key: it was altered or forged")
