"""Cloudflare DNS: the port the reconciler uses (`DnsProvider`) and its httpx adapter.

The adapter speaks the v4 API (`Authorization: Bearer`) and makes exactly one HTTP
request per call: failures come out as `CloudError` (clouds/errors.py) and the
reconciler requeues, so nothing here sleeps or retries. 429 is `RATE_LIMITED` with the
`Retry-After` seconds, 401/403 `UNAUTHORIZED`, 5xx, timeouts and connection failures
`TRANSIENT`, a zone the token cannot see `NOT_FOUND` (code `zone_not_found`), any other
refusal `PERMANENT` with Cloudflare's first error code. A create whose reply was lost
may still have happened: the caller lists again before creating. No error message
contains the token. Every request first asks the token's request budget
(clouds/budget.py), which learns from the `Ratelimit` headers of every response.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import httpx

from agentspaces import metrics
from agentspaces.clouds.budget import Budget, cloudflare_reading
from agentspaces.clouds.errors import CloudError, ErrorKind

DEFAULT_ENDPOINT = "https://api.cloudflare.com/client/v4"
PROVIDER = "cloudflare"
ZONE_NOT_FOUND = "zone_not_found"
RECORD_NOT_FOUND = 81044
IDENTICAL_RECORD = 81058


@dataclass(frozen=True)
class DnsRecord:
    """One DNS record. `id` is empty for a record that does not exist yet."""

    id: str
    name: str
    type: str
    content: str
    ttl: int = 1
    proxied: bool = False
    comment: str | None = None


@runtime_checkable
class DnsProvider(Protocol):
    """What the DNS reconciler needs from a DNS service."""

    async def zone_id(self, zone_name: str) -> str: ...

    async def list_records(self, zone_id: str, name: str) -> list[DnsRecord]:
        """All records of every type at exactly `name`, across all pages."""
        ...

    async def create_record(self, zone_id: str, record: DnsRecord) -> DnsRecord: ...

    async def update_record(self, zone_id: str, record_id: str,
                            record: DnsRecord) -> DnsRecord: ...

    async def delete_record(self, zone_id: str, record_id: str) -> None:
        """Delete one record; a record that is already gone counts as deleted."""
        ...


class CloudflareDns:
    """`DnsProvider` over the Cloudflare v4 API. Use `async with` or call `aclose()`."""

    def __init__(self, endpoint: str, token: str, timeout: float = 10.0, *,
                 per_page: int = 100, max_pages: int = 100,
                 transport: httpx.AsyncBaseTransport | None = None,
                 budget: Budget | None = None) -> None:
        if not token:
            raise ValueError("Cloudflare API token is empty")
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self.per_page = per_page
        self.max_pages = max_pages
        self._token = token
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._zones: dict[str, str] = {}
        self.budget = budget or Budget.cloudflare()

    def __repr__(self) -> str:
        return f"CloudflareDns(endpoint={self.endpoint!r})"

    async def __aenter__(self) -> CloudflareDns:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- DnsProvider -------------------------------------------------------------------
    async def zone_id(self, zone_name: str) -> str:
        zone_name = zone_name.lower().rstrip(".")
        if zone_name in self._zones:
            return self._zones[zone_name]
        body = await self._request("zone_id", "GET", "/zones", params={"name": zone_name})
        zones = [z for z in body.get("result") or [] if z.get("name") == zone_name]
        if not zones:
            raise CloudError(ErrorKind.NOT_FOUND, PROVIDER, ZONE_NOT_FOUND,
                             f"Cloudflare zone {zone_name} not found, or the API token "
                             "cannot read it (it needs Zone:Zone:Read on the zone)")
        active = [z for z in zones if z.get("status") == "active"]
        zone_id = str((active or zones)[0]["id"])
        self._zones[zone_name] = zone_id
        return zone_id

    async def list_records(self, zone_id: str, name: str) -> list[DnsRecord]:
        records: list[DnsRecord] = []
        page = 1
        while True:
            body = await self._request(
                "list_records", "GET", f"/zones/{zone_id}/dns_records",
                params={"name.exact": name, "page": page, "per_page": self.per_page})
            records.extend(_record(item) for item in body.get("result") or [])
            info = body.get("result_info") or {}
            total_pages = int(info.get("total_pages") or 1)
            if page >= total_pages:
                return records
            if page >= self.max_pages:
                raise CloudError(ErrorKind.PERMANENT, PROVIDER, "too_many_pages",
                                 f"listing {name} needs more than {self.max_pages} pages")
            page += 1

    async def create_record(self, zone_id: str, record: DnsRecord) -> DnsRecord:
        body = await self._request("create_record", "POST", f"/zones/{zone_id}/dns_records",
                                   json=_payload(record))
        return _record(body["result"])

    async def update_record(self, zone_id: str, record_id: str,
                            record: DnsRecord) -> DnsRecord:
        # PATCH, not PUT: PUT would drop a comment the payload leaves out.
        body = await self._request("update_record", "PATCH",
                                   f"/zones/{zone_id}/dns_records/{record_id}",
                                   json=_payload(record))
        return _record(body["result"])

    async def delete_record(self, zone_id: str, record_id: str) -> None:
        try:
            await self._request("delete_record", "DELETE",
                                f"/zones/{zone_id}/dns_records/{record_id}")
        except CloudError as err:
            # 81044: already gone. A 404 with another code (no such route) is a real error.
            if err.status == 404 and err.code in (str(RECORD_NOT_FOUND), "http_404"):
                return
            raise

    # --- HTTP ----------------------------------------------------------------------------
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.endpoint, timeout=self.timeout, transport=self._transport,
                headers={"Authorization": f"Bearer {self._token}",
                         "Content-Type": "application/json",
                         "User-Agent": "agentspaces-operator"})
        return self._client

    async def _request(self, operation: str, method: str, path: str, *,
                       params: dict[str, Any] | None = None,
                       json: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request, once the budget admits `operation` (its priority in
        budget.PRIORITIES)."""
        with self.budget.call(f"{PROVIDER}.{operation}"):
            response = await self._send(method, path, params, json)
            self.budget.observe(cloudflare_reading(response.headers), response.status_code,
                                _retry_after(response) if response.status_code == 429
                                else None)
        return self._answer(method, path, response)

    async def _send(self, method: str, path: str, params: dict[str, Any] | None,
                    json: dict[str, Any] | None) -> httpx.Response:
        what = f"Cloudflare {method} {path}"
        started, answered = time.monotonic(), None
        try:
            response = await self._http().request(method, path, params=params, json=json)
            answered = response.status_code
            return response
        except httpx.TimeoutException:
            raise CloudError(ErrorKind.TRANSIENT, PROVIDER, "timeout",
                             f"{what}: timed out after {self.timeout}s") from None
        except httpx.TransportError as err:
            raise CloudError(ErrorKind.TRANSIENT, PROVIDER, "unreachable",
                             self._scrub(f"{what}: {type(err).__name__}: {err}")) from None
        finally:  # the one place every Cloudflare request goes through
            metrics.cloud_request(PROVIDER, method, path, answered,
                                  time.monotonic() - started)

    def _answer(self, method: str, path: str, response: httpx.Response) -> dict[str, Any]:
        what = f"Cloudflare {method} {path}"
        status = response.status_code
        body: Any
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
        codes = [int(e["code"]) for e in errors if isinstance(e.get("code"), int)]
        code = str(codes[0]) if codes else f"http_{status}"  # the reply named no code
        detail = self._scrub("; ".join(_describe(e) for e in errors) or response.reason_phrase)
        message = f"{what}: HTTP {status}: {detail}"
        if status == 429:
            raise CloudError(ErrorKind.RATE_LIMITED, PROVIDER, code, message,
                             retry_after=_retry_after(response), status=status)
        if status >= 500:
            raise CloudError(ErrorKind.TRANSIENT, PROVIDER, code, message, status=status)
        if status in (401, 403):
            raise CloudError(ErrorKind.UNAUTHORIZED, PROVIDER, code, message, status=status)
        if status >= 400 or body.get("success") is not True:
            raise CloudError(ErrorKind.PERMANENT, PROVIDER, code, message, status=status)
        return body

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***")


def _describe(error: dict[str, Any]) -> str:
    text = f"{error.get('message', '')} ({error.get('code')})"
    chain = [c for c in error.get("error_chain") or [] if isinstance(c, dict)]
    if chain:
        text += ": " + ", ".join(f"{c.get('message', '')} ({c.get('code')})" for c in chain)
    return text


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(1.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return 60.0  # an HTTP-date or nothing: wait a minute


def _payload(record: DnsRecord) -> dict[str, Any]:
    payload: dict[str, Any] = {"type": record.type, "name": record.name,
                               "content": record.content, "ttl": record.ttl,
                               "proxied": record.proxied}
    if record.comment is not None:
        payload["comment"] = record.comment
    return payload


def _record(item: dict[str, Any]) -> DnsRecord:
    return DnsRecord(id=str(item["id"]), name=str(item["name"]).lower().rstrip("."),
                     type=str(item["type"]).upper(), content=str(item.get("content", "")),
                     ttl=int(item.get("ttl") or 1), proxied=bool(item.get("proxied")),
                     comment=item.get("comment") or None)
