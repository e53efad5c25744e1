"""A local emulator of the Cloudflare v4 DNS API, for the sandbox and the tests.

It follows the public API where the operator depends on it: the response envelope
(`success`/`errors`/`messages`/`result`, `result_info` on lists), zone lookup by name,
record list filters (`name`, `name.exact`, `type`, `content`, `comment.*`, `match`),
page/per_page pagination, the error codes clients see (81058 identical record,
81053/81054 CNAME clashes, 81044 unknown record, 9005/9006 bad addresses, 9109 bad
token, 971 rate limited) and the per-token rate limit with `Retry-After` and
`Ratelimit` headers. Like the real API, a record name that does not end in the zone
name is taken as relative to it, and proxied records report TTL 1 (automatic).

Where the public docs give no code (comment too long, bad per_page) the emulator
answers 400 with code 1004 "DNS Validation Error" and a descriptive `error_chain`.

Tests drive it through real HTTP, inject faults (status codes, slow responses, lost
responses after the change was applied), read per-endpoint call counters and seed
records that belong to someone else directly, without HTTP.

Standalone: `python -m agentspaces.sandbox.cloudflare --zone example.com --token T`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ipaddress
import json
import math
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_PREFIX = "/client/v4"
SUPPORTED_TYPES = ("A", "AAAA", "CNAME", "TXT")
PROXIABLE_TYPES = ("A", "AAAA", "CNAME")
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")

Json = dict[str, Any]


class ApiError(Exception):
    """An error response: HTTP status plus the envelope's error list."""

    def __init__(self, status: int, code: int, message: str,
                 chain: list[tuple[int, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        error: Json = {"code": code, "message": message}
        if chain:
            error["error_chain"] = [{"code": c, "message": m} for c, m in chain]
        self.errors = [error]
        self.headers = headers or {}


def _validation(detail: str, code: int = 1004) -> ApiError:
    return ApiError(400, code, "DNS Validation Error", [(code, detail)]) if code == 1004 \
        else ApiError(400, code, detail)


@dataclass
class Fault:
    """One injected fault.

    Matches requests by `endpoint` (a counter key such as
    "POST /zones/{id}/dns_records", a bare method such as "POST", or None for all).
    Active for `times` matching requests, or until `duration` seconds have passed when
    `times` is None. The response waits `delay` seconds first; with `status` None the
    request is then served normally (a slow response). With `after_apply` the request
    is carried out and its response replaced by the fault, like a reply lost on the way.
    """

    status: int | None = 503
    times: int | None = 1
    duration: float | None = None
    delay: float = 0.0
    endpoint: str | None = None
    retry_after: int = 1
    after_apply: bool = False
    started: float = 0.0
    hits: int = 0

    def matches(self, key: str, method: str) -> bool:
        return self.endpoint is None or self.endpoint in (key, method)

    def active(self, now: float) -> bool:
        if self.times is not None:
            return self.hits < self.times
        return self.duration is not None and now < self.started + self.duration


@dataclass
class _Window:
    start: float
    count: int = 0


@dataclass
class _Zone:
    id: str
    name: str
    records: dict[str, Json] = field(default_factory=dict)  # id -> record, insertion order


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def endpoint_key(method: str, path: str) -> str:
    """Counter key for a request: ids replaced by {id}, e.g. "GET /zones/{id}/dns_records"."""
    parts = [p for p in path.split("/") if p]
    keyed = []
    for i, part in enumerate(parts):
        keyed.append("{id}" if i > 0 and parts[i - 1] in ("zones", "dns_records") else part)
    return f"{method} /" + "/".join(keyed)


class CloudflareEmulator:
    """Cloudflare DNS API on 127.0.0.1: `start()`/`stop()` or use as a context manager.

    `tokens` maps each valid API token to the zone names it may use (None = all zones).
    """

    def __init__(self, zones: tuple[str, ...] = ("example.com",),
                 tokens: dict[str, set[str] | None] | None = None, *,
                 host: str = "127.0.0.1", port: int = 0,
                 rate_limit: int = 1200, rate_period: float = 300.0,
                 max_per_page: int = 5_000_000, max_comment: int = 100,
                 record_quota: int = 200, min_ttl: int = 60,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tokens: dict[str, set[str] | None] = dict(tokens or {"test-token": None})
        self.host = host
        self.port = port
        self.rate_limit = rate_limit
        self.rate_period = rate_period
        self.max_per_page = max_per_page
        self.max_comment = max_comment
        self.record_quota = record_quota
        self.min_ttl = min_ttl
        self.clock = clock
        self._lock = threading.RLock()
        self._zones: dict[str, _Zone] = {}
        self._faults: list[Fault] = []
        self._windows: dict[str, _Window] = {}
        self._calls: Counter[str] = Counter()
        self._log: list[tuple[str, str, int]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for name in zones:
            self.add_zone(name)

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> CloudflareEmulator:
        if self._server is not None:
            return self
        server = ThreadingHTTPServer((self.host, self.port), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="cloudflare-emulator",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> CloudflareEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{API_PREFIX}"

    # --- direct state access (no HTTP, not counted) --------------------------------------
    def add_zone(self, name: str) -> str:
        with self._lock:
            name = name.lower().rstrip(".")
            for zone in self._zones.values():
                if zone.name == name:
                    return zone.id
            zone = _Zone(id=uuid.uuid4().hex, name=name)
            self._zones[zone.id] = zone
            return zone.id

    def zone_id(self, name: str) -> str:
        return self._zone(name).id

    def seed_record(self, zone: str, type: str, name: str, content: str, *, ttl: int = 1,
                    proxied: bool = False, comment: str | None = None) -> Json:
        """Put a record in place as if someone else made it (skips duplicate checks)."""
        with self._lock:
            z = self._zone(zone)
            record = self._new_record(z, type.upper(), self._fqdn(z, name), content, ttl,
                                      proxied, comment)
            z.records[record["id"]] = record
            return copy.deepcopy(record)

    def records(self, zone: str | None = None) -> list[Json]:
        """Every record (of one zone, by name or id), in creation order."""
        with self._lock:
            zones = [self._zone(zone)] if zone else list(self._zones.values())
            return [copy.deepcopy(r) for z in zones for r in z.records.values()]

    # --- faults and counters ---------------------------------------------------------------
    def inject(self, status: int | None = 503, *, times: int | None = 1,
               duration: float | None = None, delay: float = 0.0,
               endpoint: str | None = None, retry_after: int = 1,
               after_apply: bool = False) -> Fault:
        if times is None and duration is None:
            raise ValueError("a fault needs times or duration")
        fault = Fault(status=status, times=times, duration=duration, delay=delay,
                      endpoint=endpoint, retry_after=retry_after, after_apply=after_apply,
                      started=self.clock())
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def calls(self) -> Counter[str]:
        """Requests received per endpoint key, faulted and rejected ones included."""
        with self._lock:
            return Counter(self._calls)

    @property
    def writes(self) -> int:
        with self._lock:
            return sum(n for key, n in self._calls.items() if key.split(" ")[0] in WRITE_METHODS)

    @property
    def total_calls(self) -> int:
        with self._lock:
            return sum(self._calls.values())

    @property
    def log(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request, in order."""
        with self._lock:
            return list(self._log)

    def reset_counts(self) -> None:
        with self._lock:
            self._calls.clear()
            self._log.clear()

    def reset_rate_limit(self) -> None:
        with self._lock:
            self._windows.clear()

    # --- request handling ------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, str], bytes]:
        split = urlsplit(raw_path)
        path = split.path
        key = endpoint_key(method, path[len(API_PREFIX):] if path.startswith(API_PREFIX) else path)
        query = parse_qs(split.query, keep_blank_values=True)
        with self._lock:
            self._calls[key] += 1
            fault = self._take_fault(key, method)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        extra: dict[str, str] = {}
        try:
            if fault is not None and fault.status is not None and not fault.after_apply:
                return self._fault_response(fault)
            token = self._authenticate(headers)
            extra = self._rate(token)
            if not path.startswith(API_PREFIX + "/"):
                raise ApiError(404, 7000, "No route for that URI")
            with self._lock:
                status, result, info = self._route(method, path[len(API_PREFIX):], query,
                                                   body, token)
            if fault is not None and fault.status is not None:
                return self._fault_response(fault)
            envelope: Json = {"success": True, "errors": [], "messages": [], "result": result}
            if info is not None:
                envelope["result_info"] = info
            return status, extra, json.dumps(envelope).encode()
        except ApiError as err:
            envelope = {"success": False, "errors": err.errors, "messages": [], "result": None}
            return err.status, {**extra, **err.headers}, json.dumps(envelope).encode()

    def record_status(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._log.append((method, path, status))

    def _take_fault(self, key: str, method: str) -> Fault | None:
        now = self.clock()
        for fault in self._faults:
            if fault.matches(key, method) and fault.active(now):
                fault.hits += 1
                return fault
        return None

    def _fault_response(self, fault: Fault) -> tuple[int, dict[str, str], bytes]:
        status = fault.status or 503
        headers: dict[str, str] = {}
        if status == 429:
            headers["Retry-After"] = str(fault.retry_after)
            errors = [{"code": 971, "message": "Please wait and consider throttling your "
                                              "request speed"}]
        elif status == 502:
            # The edge answers 502 with an HTML page, not the JSON envelope.
            headers["Content-Type"] = "text/html"
            return status, headers, b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        else:
            errors = [{"code": 10000 if status < 500 else 1000,
                       "message": "Injected fault" if status < 500 else "Internal server error"}]
        body = {"success": False, "errors": errors, "messages": [], "result": None}
        return status, headers, json.dumps(body).encode()

    def _authenticate(self, headers: dict[str, str]) -> str:
        value = headers.get("authorization")
        if value is None:
            raise ApiError(400, 9106, "Missing X-Auth-Key, X-Auth-Email or Authorization headers")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(400, 6003, "Invalid request headers",
                           [(6111, "Invalid format for Authorization header")])
        token = token.strip()
        if token not in self.tokens:
            raise ApiError(403, 9109, "Invalid access token")
        return token

    def _rate(self, token: str) -> dict[str, str]:
        now = self.clock()
        with self._lock:
            window = self._windows.get(token)
            if window is None or now >= window.start + self.rate_period:
                window = self._windows[token] = _Window(start=now)
            reset = max(1, math.ceil(window.start + self.rate_period - now))
            policy = f'"default";q={self.rate_limit};w={int(self.rate_period)}'
            if window.count >= self.rate_limit:
                headers = {"Retry-After": str(reset), "Ratelimit-Policy": policy,
                           "Ratelimit": f'"default";r=0;t={reset}'}
                raise ApiError(429, 971, "Please wait and consider throttling your request "
                                         "speed", headers=headers)
            window.count += 1
            remaining = self.rate_limit - window.count
            return {"Ratelimit": f'"default";r={remaining};t={reset}', "Ratelimit-Policy": policy}

    # --- routing -------------------------------------------------------------------------
    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes,
               token: str) -> tuple[int, Any, Json | None]:
        parts = [p for p in path.split("/") if p]
        if parts == ["zones"]:
            if method != "GET":
                raise _no_method(method)
            return self._list_zones(query, token)
        if len(parts) >= 2 and parts[0] == "zones":
            zone = self._zones.get(parts[1])
            allowed = self.tokens.get(token)
            if zone is None:
                raise ApiError(400, 7003, f"Could not route to {path}, perhaps your object "
                                          "identifier is invalid?")
            if allowed is not None and zone.name not in allowed:
                raise ApiError(403, 10000, "Authentication error")
            if len(parts) == 2:
                if method != "GET":
                    raise _no_method(method)
                return 200, self._zone_json(zone), None
            if parts[2] == "dns_records" and len(parts) == 3:
                if method == "GET":
                    return self._list_records(zone, query)
                if method == "POST":
                    return 200, self._create(zone, _parse_body(body)), None
                raise _no_method(method)
            if parts[2] == "dns_records" and len(parts) == 4:
                record = zone.records.get(parts[3])
                if record is None:
                    raise ApiError(404, 81044, "Record does not exist.")
                if method == "GET":
                    return 200, copy.deepcopy(record), None
                if method in ("PATCH", "PUT"):
                    return 200, self._update(zone, record, _parse_body(body), method), None
                if method == "DELETE":
                    del zone.records[record["id"]]
                    return 200, {"id": record["id"]}, None
                raise _no_method(method)
        raise ApiError(404, 7000, "No route for that URI")

    def _zone(self, ref: str) -> _Zone:
        if ref in self._zones:
            return self._zones[ref]
        for zone in self._zones.values():
            if zone.name == ref.lower().rstrip("."):
                return zone
        raise KeyError(f"no zone {ref!r}")

    def _zone_json(self, zone: _Zone) -> Json:
        return {"id": zone.id, "name": zone.name, "status": "active", "paused": False,
                "type": "full", "development_mode": 0,
                "name_servers": ["ada.ns.cloudflare.com", "bob.ns.cloudflare.com"],
                "plan": {"id": "0feeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "name": "Free Website"}}

    def _list_zones(self, query: dict[str, list[str]],
                    token: str) -> tuple[int, Any, Json | None]:
        allowed = self.tokens.get(token)
        zones = [z for z in self._zones.values() if allowed is None or z.name in allowed]
        name = _first(query, "name")
        if name is not None:
            zones = [z for z in zones if z.name == name.lower().rstrip(".")]
        page, per_page = _paging(query, default=20, maximum=50)
        return _page([self._zone_json(z) for z in zones], page, per_page)

    def _list_records(self, zone: _Zone,
                      query: dict[str, list[str]]) -> tuple[int, Any, Json | None]:
        tests = _record_filters(query)
        match_any = (_first(query, "match") or "all").lower() == "any"
        records = list(zone.records.values())
        if tests:
            records = [r for r in records
                       if (any if match_any else all)(test(r) for test in tests)]
        order = _first(query, "order")
        if order in ("type", "name", "content", "ttl", "proxied"):
            records.sort(key=lambda r: r[order],
                         reverse=(_first(query, "direction") or "asc").lower() == "desc")
        page, per_page = _paging(query, default=100, maximum=self.max_per_page)
        return _page([copy.deepcopy(r) for r in records], page, per_page)

    # --- record validation ---------------------------------------------------------------
    def _fqdn(self, zone: _Zone, name: str) -> str:
        name = name.strip().lower().rstrip(".")
        if name in ("", "@"):
            return zone.name
        if name == zone.name or name.endswith("." + zone.name):
            return name
        return f"{name}.{zone.name}"  # relative to the zone, like the real API

    def _check_name(self, fqdn: str) -> None:
        labels = fqdn.split(".")
        ok = len(fqdn) <= 253 and all(
            _LABEL.match(label) or (i == 0 and label == "*") for i, label in enumerate(labels))
        if not ok:
            raise ApiError(400, 9000, "DNS name is invalid.")

    def _check(self, zone: _Zone, record: Json, exclude: str | None) -> None:
        rtype, name, content = record["type"], record["name"], record["content"]
        if rtype not in SUPPORTED_TYPES:
            raise _validation(f"Record type {rtype} is not supported by this emulator.")
        self._check_name(name)
        if rtype == "A" and not _is_ip(content, 4):
            raise ApiError(400, 9005, "Content for A record must be a valid IPv4 address.")
        if rtype == "AAAA" and not _is_ip(content, 6):
            raise ApiError(400, 9006, "Content for AAAA record must be a valid IPv6 address.")
        if rtype == "CNAME":
            try:
                self._check_name(content.lower().rstrip("."))
            except ApiError:
                raise ApiError(400, 9007, "Content for CNAME record is invalid.") from None
        if rtype == "TXT" and len(content) > 2048:
            raise _validation("TXT content exceeds 2048 characters.")
        ttl = record["ttl"]
        if not isinstance(ttl, int) or isinstance(ttl, bool) or \
                not (ttl == 1 or self.min_ttl <= ttl <= 86400):
            raise ApiError(400, 9021, f"Invalid TTL. Must be between {self.min_ttl} and "
                                      "86400 seconds, or 1 for Automatic.")
        if not isinstance(record["proxied"], bool):
            raise _validation("proxied must be a boolean.")
        if record["proxied"] and (rtype not in PROXIABLE_TYPES or not record["proxiable"]):
            raise ApiError(400, 9041, "Invalid proxied mode. Record cannot be proxied")
        comment = record["comment"]
        if comment is not None:
            if not isinstance(comment, str) or "\n" in comment:
                raise _validation("comment must be a single-line string.")
            if len(comment) > self.max_comment:
                raise _validation(f"comment exceeds the maximum length of {self.max_comment} "
                                  "characters.")
        others = [r for r in zone.records.values() if r["name"] == name and r["id"] != exclude]
        if any(r["type"] == rtype and _same_content(rtype, r["content"], content)
               for r in others):
            raise ApiError(400, 81058, "An identical record already exists.")
        if rtype == "CNAME" and any(r["type"] in PROXIABLE_TYPES for r in others):
            raise ApiError(400, 81053, "An A, AAAA, or CNAME record with that host already "
                                       "exists.")
        if rtype in ("A", "AAAA") and any(r["type"] == "CNAME" for r in others):
            raise ApiError(400, 81054, "A CNAME record with that host already exists.")

    def _new_record(self, zone: _Zone, rtype: str, name: str, content: Any, ttl: Any,
                    proxied: Any, comment: Any) -> Json:
        stamp = _now_iso()
        return {
            "id": uuid.uuid4().hex, "zone_id": zone.id, "zone_name": zone.name,
            "name": name, "type": rtype, "content": content,
            "proxiable": _proxiable(rtype, content), "proxied": proxied,
            "ttl": 1 if proxied is True else ttl, "settings": {}, "meta": {},
            "comment": comment, "tags": [], "created_on": stamp, "modified_on": stamp,
        }

    def _create(self, zone: _Zone, body: Json) -> Json:
        for required in ("type", "name", "content"):
            if not isinstance(body.get(required), str):
                raise _validation(f"{required} is required.")
        if len(zone.records) >= self.record_quota:
            raise ApiError(400, 81045, "Record quota exceeded.")
        rtype = body["type"].upper()
        candidate = {"type": rtype, "name": self._fqdn(zone, body["name"]),
                     "content": body["content"], "ttl": body.get("ttl", 1),
                     "proxied": body.get("proxied", False), "comment": body.get("comment") or None,
                     "proxiable": _proxiable(rtype, body["content"])}
        self._check(zone, candidate, exclude=None)
        record = self._new_record(zone, rtype, candidate["name"], candidate["content"],
                                  candidate["ttl"], candidate["proxied"], candidate["comment"])
        if record["comment"] is not None:
            record["comment_modified_on"] = record["created_on"]
        zone.records[record["id"]] = record
        return copy.deepcopy(record)

    def _update(self, zone: _Zone, current: Json, body: Json, method: str) -> Json:
        if method == "PUT":
            for required in ("type", "name", "content"):
                if not isinstance(body.get(required), str):
                    raise _validation(f"{required} is required.")
            base: Json = {"ttl": 1, "proxied": False, "comment": None}
        else:
            base = {k: current[k] for k in ("type", "name", "content", "ttl", "proxied",
                                            "comment")}
        merged: Json = {**base, **{k: body[k] for k in ("type", "name", "content", "ttl",
                                                  "proxied", "comment") if k in body}}
        for text in ("type", "name", "content"):
            if not isinstance(merged.get(text), str):
                raise _validation(f"{text} must be a string.")
        merged["type"] = merged["type"].upper()
        merged["name"] = self._fqdn(zone, merged["name"])
        merged["comment"] = merged.get("comment") or None
        merged["proxiable"] = _proxiable(merged["type"], merged["content"])
        self._check(zone, merged, exclude=current["id"])
        if merged["comment"] != current["comment"]:
            current["comment_modified_on"] = _now_iso()
        current.update({k: merged[k] for k in ("type", "name", "content", "proxied",
                                               "comment", "proxiable")})
        current["ttl"] = 1 if merged["proxied"] else merged["ttl"]
        current["modified_on"] = _now_iso()
        return copy.deepcopy(current)


# --- helpers -----------------------------------------------------------------------------
def _no_method(method: str) -> ApiError:
    return ApiError(405, 10405, f"Method {method} not available for that URI.")


def _parse_body(body: bytes) -> Json:
    try:
        data = json.loads(body or b"null")
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ApiError(400, 9207, "Request body is invalid.")
    return data


def _first(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _paging(query: dict[str, list[str]], *, default: int, maximum: int) -> tuple[int, int]:
    try:
        page = int(_first(query, "page") or 1)
        per_page = int(_first(query, "per_page") or default)
    except ValueError:
        raise _validation("page and per_page must be integers.") from None
    if page < 1 or not 1 <= per_page <= maximum:
        raise _validation(f"page must be >= 1 and per_page between 1 and {maximum}.")
    return page, per_page


def _page(items: list[Json], page: int, per_page: int) -> tuple[int, Any, Json]:
    chunk = items[(page - 1) * per_page: page * per_page]
    info = {"page": page, "per_page": per_page, "count": len(chunk),
            "total_count": len(items), "total_pages": math.ceil(len(items) / per_page)}
    return 200, chunk, info


def _text_test(field_name: str, op: str, value: str) -> Callable[[Json], bool]:
    needle = value.lower()

    def test(record: Json) -> bool:
        have = record.get(field_name)
        if op == "present":
            return bool(have)
        if op == "absent":
            return not have
        text = (have or "").lower()
        want = needle.rstrip(".") if field_name == "name" else needle
        return {"exact": text == want, "contains": want in text,
                "startswith": text.startswith(want), "endswith": text.endswith(want)}[op]
    return test


def _record_filters(query: dict[str, list[str]]) -> list[Callable[[Json], bool]]:
    tests: list[Callable[[Json], bool]] = []
    for key, values in query.items():
        value = values[0]
        field_name, _, op = key.partition(".")
        if field_name in ("name", "content", "comment") and op in (
                "", "exact", "contains", "startswith", "endswith", "present", "absent"):
            if op in ("present", "absent") and field_name != "comment":
                continue
            tests.append(_text_test(field_name, op or "exact", value))
        elif key == "type":
            tests.append(_equals("type", value.upper()))
        elif key == "proxied":
            tests.append(_equals("proxied", value.lower() == "true"))
    return tests


def _equals(field_name: str, value: object) -> Callable[[Json], bool]:
    return lambda record: record.get(field_name) == value


def _is_ip(text: Any, version: int) -> bool:
    if not isinstance(text, str):
        return False
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def _proxiable(rtype: str, content: Any) -> bool:
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


def _handler_for(emulator: CloudflareEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10  # idle keep-alive connections end on their own
        # One buffered write per response: headers and body in separate packets meet
        # delayed ACKs and cost ~40 ms per request on loopback.
        wbufsize = 64 * 1024
        disable_nagle_algorithm = True
        server_version = "cloudflare-emulator"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, payload = emulator.handle(self.command, self.path, headers, body)
            emulator.record_status(self.command, urlsplit(self.path).path, status)
            self.send_response(status)
            extra.setdefault("Content-Type", "application/json")
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[CloudflareEmulator]:
    """A started emulator that is always stopped afterwards."""
    emulator = CloudflareEmulator(**kwargs).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local Cloudflare DNS API emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--zone", action="append", default=None,
                        help="zone to serve (repeatable; default example.com)")
    parser.add_argument("--token", default="sandbox-token", help="accepted API token")
    parser.add_argument("--rate-limit", type=int, default=1200)
    args = parser.parse_args(argv)
    emulator = CloudflareEmulator(tuple(args.zone or ["example.com"]), {args.token: None},
                                  host=args.host, port=args.port, rate_limit=args.rate_limit)
    with emulator:
        print(f"Cloudflare DNS emulator at {emulator.url}", flush=True)
        for zone in args.zone or ["example.com"]:
            print(f"  zone {zone}: {emulator.zone_id(zone)}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
