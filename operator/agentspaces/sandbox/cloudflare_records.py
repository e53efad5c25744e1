"""DNS record rules of the Cloudflare emulator: names relative to the zone, the checks
and error codes of create/update (addresses, CNAME clashes, TTL, proxying, comments,
identical records) and the record's JSON shape."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .cloudflare_errors import ApiError, Json, validation

SUPPORTED_TYPES = ("A", "AAAA", "CNAME", "TXT")
PROXIABLE_TYPES = ("A", "AAAA", "CNAME")
FIELDS = ("type", "name", "content", "ttl", "proxied", "comment")
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


@dataclass
class Zone:
    id: str
    name: str
    records: dict[str, Json] = field(default_factory=dict)  # id -> record, insertion order


@dataclass(frozen=True)
class RecordRules:
    max_comment: int = 100
    record_quota: int = 200
    min_ttl: int = 60


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fqdn(zone: Zone, name: str) -> str:
    """A name that does not end in the zone is relative to it, like the real API."""
    name = name.strip().lower().rstrip(".")
    if name in ("", "@"):
        return zone.name
    if name == zone.name or name.endswith("." + zone.name):
        return name
    return f"{name}.{zone.name}"


def new_record(zone: Zone, rtype: str, name: str, content: Any, ttl: Any, proxied: Any,
               comment: Any) -> Json:
    stamp = now_iso()
    return {
        "id": uuid.uuid4().hex, "zone_id": zone.id, "zone_name": zone.name,
        "name": name, "type": rtype, "content": content,
        "proxiable": proxiable(rtype, content), "proxied": proxied,
        "ttl": 1 if proxied is True else ttl, "settings": {}, "meta": {},
        "comment": comment, "tags": [], "created_on": stamp, "modified_on": stamp,
    }


def require_text(body: Json, names: tuple[str, ...], what: str) -> None:
    for name in names:
        if not isinstance(body.get(name), str):
            raise validation(f"{name} {what}.")


def check(zone: Zone, record: Json, rules: RecordRules, exclude: str | None) -> None:
    """Raise the API's error for an invalid candidate record (`exclude`: its own id)."""
    rtype, name, content = record["type"], record["name"], record["content"]
    if rtype not in SUPPORTED_TYPES:
        raise validation(f"Record type {rtype} is not supported by this emulator.")
    _check_name(name)
    if rtype == "A" and not _is_ip(content, 4):
        raise ApiError(400, 9005, "Content for A record must be a valid IPv4 address.")
    if rtype == "AAAA" and not _is_ip(content, 6):
        raise ApiError(400, 9006, "Content for AAAA record must be a valid IPv6 address.")
    if rtype == "CNAME":
        try:
            _check_name(content.lower().rstrip("."))
        except ApiError:
            raise ApiError(400, 9007, "Content for CNAME record is invalid.") from None
    if rtype == "TXT" and len(content) > 2048:
        raise validation("TXT content exceeds 2048 characters.")
    ttl = record["ttl"]
    if not isinstance(ttl, int) or isinstance(ttl, bool) or \
            not (ttl == 1 or rules.min_ttl <= ttl <= 86400):
        raise ApiError(400, 9021, f"Invalid TTL. Must be between {rules.min_ttl} and "
                                  "86400 seconds, or 1 for Automatic.")
    if not isinstance(record["proxied"], bool):
        raise validation("proxied must be a boolean.")
    if record["proxied"] and (rtype not in PROXIABLE_TYPES or not record["proxiable"]):
        raise ApiError(400, 9041, "Invalid proxied mode. Record cannot be proxied")
    _check_comment(record["comment"], rules.max_comment)
    others = [r for r in zone.records.values() if r["name"] == name and r["id"] != exclude]
    if any(r["type"] == rtype and _same_content(rtype, r["content"], content)
           for r in others):
        raise ApiError(400, 81058, "An identical record already exists.")
    if rtype == "CNAME" and any(r["type"] in PROXIABLE_TYPES for r in others):
        raise ApiError(400, 81053, "An A, AAAA, or CNAME record with that host already "
                                   "exists.")
    if rtype in ("A", "AAAA") and any(r["type"] == "CNAME" for r in others):
        raise ApiError(400, 81054, "A CNAME record with that host already exists.")


def _check_comment(comment: object, max_comment: int) -> None:
    if comment is None:
        return
    if not isinstance(comment, str) or "\n" in comment:
        raise validation("comment must be a single-line string.")
    if len(comment) > max_comment:
        raise validation(f"comment exceeds the maximum length of {max_comment} "
                         "characters.")


def _check_name(name: str) -> None:
    labels = name.split(".")
    ok = len(name) <= 253 and all(
        _LABEL.match(label) or (i == 0 and label == "*") for i, label in enumerate(labels))
    if not ok:
        raise ApiError(400, 9000, "DNS name is invalid.")


def _is_ip(text: Any, version: int) -> bool:
    if not isinstance(text, str):
        return False
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def proxiable(rtype: str, content: Any) -> bool:
    if rtype not in PROXIABLE_TYPES:
        return False
    if rtype in ("A", "AAAA") and isinstance(content, str):
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(content).is_global
    return True


def _same_content(rtype: str, a: str, b: str) -> bool:
    if rtype in ("A", "AAAA"):
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    if rtype == "CNAME":
        return a.lower().rstrip(".") == b.lower().rstrip(".")
    return a == b
