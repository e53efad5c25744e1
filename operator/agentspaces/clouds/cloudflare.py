"""Cloudflare DNS: the port the reconciler uses (`DnsProvider`) and its httpx adapter.

The adapter speaks the v4 API (`Authorization: Bearer`). Errors come out as
`DnsError` (permanent: bad input, bad token, unknown zone), `TransientDnsError`
(5xx, timeouts, connection failures: retry later) or `RateLimited` (429: requeue
after `retry_after` seconds; never slept on here, the operator owns the event loop).
Idempotent requests (GET/PATCH/PUT/DELETE) are retried a few times on transient
failures; POST is not, because a create whose reply was lost may still have happened:
the caller lists again before creating. No error message contains the token.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import httpx

DEFAULT_ENDPOINT = "https://api.cloudflare.com/client/v4"
_IDEMPOTENT = frozenset({"GET", "PUT", "PATCH", "DELETE"})
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


class DnsError(Exception):
    """A Cloudflare API failure. Permanent unless it is a `TransientDnsError`."""

    transient = False

    def __init__(self, message: str, *, status: int | None = None,
                 codes: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.codes = codes
        self.message = message

    @property
    def retry_after(self) -> float | None:
        return None


class TransientDnsError(DnsError):
    """5xx, timeout or connection failure: the same call may succeed later."""

    transient = True


class RateLimited(TransientDnsError):
    """429: the token's request budget is spent until `retry_after` seconds pass."""

    def __init__(self, message: str, *, retry_after: float, status: int | None = 429,
                 codes: tuple[int, ...] = ()) -> None:
        super().__init__(message, status=status, codes=codes)
        self._retry_after = retry_after

    @property
    def retry_after(self) -> float:
        return self._retry_after


class ZoneNotFound(DnsError):
    """No zone of that name is visible to the token."""


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
                 retries: int = 2, backoff: float = 0.25, per_page: int = 100,
                 max_pages: int = 100,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not token:
            raise ValueError("Cloudflare API token is empty")
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.per_page = per_page
        self.max_pages = max_pages
        self._token = token
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._zones: dict[str, str] = {}

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
        body = await self._request("GET", "/zones", params={"name": zone_name})
        zones = [z for z in body.get("result") or [] if z.get("name") == zone_name]
        if not zones:
            raise ZoneNotFound(f"Cloudflare zone {zone_name} not found, or the API token "
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
                "GET", f"/zones/{zone_id}/dns_records",
                params={"name.exact": name, "page": page, "per_page": self.per_page})
            records.extend(_record(item) for item in body.get("result") or [])
            info = body.get("result_info") or {}
            total_pages = int(info.get("total_pages") or 1)
            if page >= total_pages:
                return records
            if page >= self.max_pages:
                raise DnsError(f"listing {name} needs more than {self.max_pages} pages")
            page += 1

    async def create_record(self, zone_id: str, record: DnsRecord) -> DnsRecord:
        body = await self._request("POST", f"/zones/{zone_id}/dns_records",
                                   json=_payload(record))
        return _record(body["result"])

    async def update_record(self, zone_id: str, record_id: str,
                            record: DnsRecord) -> DnsRecord:
        # PATCH, not PUT: PUT would drop a comment the payload leaves out.
        body = await self._request("PATCH", f"/zones/{zone_id}/dns_records/{record_id}",
                                   json=_payload(record))
        return _record(body["result"])

    async def delete_record(self, zone_id: str, record_id: str) -> None:
        try:
            await self._request("DELETE", f"/zones/{zone_id}/dns_records/{record_id}")
        except DnsError as err:
            # 81044: already gone. A 404 with another code (no such route) is a real error.
            if err.status == 404 and (RECORD_NOT_FOUND in err.codes or not err.codes):
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

    async def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                       json: dict[str, Any] | None = None) -> dict[str, Any]:
        attempts = 1 + (self.retries if method in _IDEMPOTENT else 0)
        for attempt in range(attempts):
            try:
                return await self._once(method, path, params, json)
            except RateLimited:
                raise
            except TransientDnsError:
                if attempt + 1 >= attempts:
                    raise
                await asyncio.sleep(self.backoff * (2 ** attempt))
        raise AssertionError("unreachable")

    async def _once(self, method: str, path: str, params: dict[str, Any] | None,
                    json: dict[str, Any] | None) -> dict[str, Any]:
        what = f"Cloudflare {method} {path}"
        try:
            response = await self._http().request(method, path, params=params, json=json)
        except httpx.TimeoutException:
            raise TransientDnsError(f"{what}: timed out after {self.timeout}s") from None
        except httpx.TransportError as err:
            raise TransientDnsError(self._scrub(f"{what}: {type(err).__name__}: {err}")) \
                from None
        status = response.status_code
        body: Any
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
        codes = tuple(int(e["code"]) for e in errors if isinstance(e.get("code"), int))
        detail = self._scrub("; ".join(_describe(e) for e in errors) or response.reason_phrase)
        message = f"{what}: HTTP {status}: {detail}"
        if status == 429:
            raise RateLimited(message, retry_after=_retry_after(response), codes=codes)
        if status >= 500:
            raise TransientDnsError(message, status=status, codes=codes)
        if status >= 400 or body.get("success") is not True:
            raise DnsError(message, status=status, codes=codes)
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
