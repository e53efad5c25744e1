"""In-memory zones and records of the Cloudflare emulator: create, update (PATCH merges,
PUT replaces) and delete with the API's checks. Callers hold `lock`."""

from __future__ import annotations

import copy
import json
import threading
import uuid
from typing import Any

from .cloudflare_errors import ApiError, Json
from .cloudflare_records import (
    FIELDS,
    RecordRules,
    Zone,
    check,
    fqdn,
    new_record,
    now_iso,
    proxiable,
    require_text,
)


def zone_json(zone: Zone) -> Json:
    return {"id": zone.id, "name": zone.name, "status": "active", "paused": False,
            "type": "full", "development_mode": 0,
            "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
            "plan": {"id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "Free Website"}}


class ZoneStore:
    def __init__(self, rules: RecordRules) -> None:
        self.rules = rules
        self.lock = threading.RLock()
        self.zones: dict[str, Zone] = {}

    def add_zone(self, name: str) -> str:
        name = name.lower().rstrip(".")
        for zone in self.zones.values():
            if zone.name == name:
                return zone.id
        zone = Zone(id=uuid.uuid4().hex, name=name)
        self.zones[zone.id] = zone
        return zone.id

    def find(self, ref: str) -> Zone:
        """A zone by id or name (direct access, not the API)."""
        if ref in self.zones:
            return self.zones[ref]
        for zone in self.zones.values():
            if zone.name == ref.lower().rstrip("."):
                return zone
        raise KeyError(f"no zone {ref!r}")

    def seed(self, zone: Zone, rtype: str, name: str, content: str, ttl: int,
             proxied: bool, comment: str | None) -> Json:
        """A record put in place as if someone else made it (no duplicate checks)."""
        record = new_record(zone, rtype.upper(), fqdn(zone, name), content, ttl, proxied,
                            comment)
        zone.records[record["id"]] = record
        return copy.deepcopy(record)

    def create(self, zone: Zone, body: Json) -> Json:
        require_text(body, ("type", "name", "content"), "is required")
        if len(zone.records) >= self.rules.record_quota:
            raise ApiError(400, 81045, "Record quota exceeded.")
        rtype = body["type"].upper()
        candidate = {"type": rtype, "name": fqdn(zone, body["name"]),
                     "content": body["content"], "ttl": body.get("ttl", 1),
                     "proxied": body.get("proxied", False),
                     "comment": body.get("comment") or None,
                     "proxiable": proxiable(rtype, body["content"])}
        check(zone, candidate, self.rules, exclude=None)
        record = new_record(zone, rtype, candidate["name"], candidate["content"],
                            candidate["ttl"], candidate["proxied"], candidate["comment"])
        if record["comment"] is not None:
            record["comment_modified_on"] = record["created_on"]
        zone.records[record["id"]] = record
        return copy.deepcopy(record)

    def update(self, zone: Zone, current: Json, body: Json, replace: bool) -> Json:
        if replace:  # PUT: what the body leaves out takes its default
            require_text(body, ("type", "name", "content"), "is required")
            base: Json = {"ttl": 1, "proxied": False, "comment": None}
        else:
            base = {k: current[k] for k in FIELDS}
        merged: dict[str, Any] = {**base, **{k: body[k] for k in FIELDS if k in body}}
        require_text(merged, ("type", "name", "content"), "must be a string")
        merged["type"] = merged["type"].upper()
        merged["name"] = fqdn(zone, merged["name"])
        merged["comment"] = merged.get("comment") or None
        merged["proxiable"] = proxiable(merged["type"], merged["content"])
        check(zone, merged, self.rules, exclude=current["id"])
        if merged["comment"] != current["comment"]:
            current["comment_modified_on"] = now_iso()
        current.update({k: merged[k] for k in ("type", "name", "content", "proxied",
                                               "comment", "proxiable")})
        current["ttl"] = 1 if merged["proxied"] else merged["ttl"]
        current["modified_on"] = now_iso()
        return copy.deepcopy(current)


def parse_json_object(raw: bytes) -> Json:
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ApiError(400, 9207, "Request body is invalid.")
    return data

