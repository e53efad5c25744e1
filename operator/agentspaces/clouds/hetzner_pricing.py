"""Hetzner's price list (GET /pricing) and a per-project cache of it.

Prices come in the project owner's currency (`pricing.currency`, EUR for most), net
and gross, as decimal strings: they stay Decimals here and the currency travels with
every amount. A server's price is its server type's at its location plus the primary
IPv4 it has (billed separately by Hetzner).

The list changes rarely, and a server's price is recorded in its workspace's status the
first time it is seen, so the cache asks at most once per `ttl` per project (after a
failure, once per `retry`): steady-state polls make no Hetzner call for prices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from agentspaces.clouds.errors import CloudError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Money:
    """An amount without (net) and with (gross) VAT, in the list's currency."""

    net: Decimal
    gross: Decimal

    def __add__(self, other: Money) -> Money:
        return Money(self.net + other.net, self.gross + other.gross)


ZERO = Money(Decimal(0), Decimal(0))


@dataclass(frozen=True)
class ServerPrice:
    currency: str
    hourly: Money
    monthly: Money
    """Hetzner bills per started hour, at most this much in a month."""


@dataclass(frozen=True)
class PriceList:
    currency: str
    server_types: Mapping[tuple[str, str], tuple[Money, Money]]
    """(server type, location) -> (hourly, monthly)."""
    primary_ipv4: Mapping[str, tuple[Money, Money]] = field(default_factory=dict)
    """location -> (hourly, monthly)."""

    def server(self, server_type: str, location: str, *, ipv4: bool) -> ServerPrice | None:
        """A server's price with its primary IPv4; None when the list lacks the type at
        the location."""
        prices = self.server_types.get((server_type, location))
        if prices is None:
            return None
        hourly, monthly = prices
        if ipv4:
            ip_hourly, ip_monthly = self.primary_ipv4.get(location, (ZERO, ZERO))
            hourly, monthly = hourly + ip_hourly, monthly + ip_monthly
        return ServerPrice(self.currency, hourly, monthly)


def _money(doc: Any, what: str) -> Money:
    try:
        return Money(Decimal(str(doc["net"])), Decimal(str(doc["gross"])))
    except (KeyError, TypeError, InvalidOperation):
        raise ValueError(f"{what}: expected net and gross decimal strings") from None


def _per_location(rows: Any, what: str) -> dict[str, tuple[Money, Money]]:
    out: dict[str, tuple[Money, Money]] = {}
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict) or not isinstance(row.get("location"), str):
            raise ValueError(f"{what}: a price without its location")
        if "price_hourly" not in row:
            continue  # a price only billed monthly cannot accrue per hour
        out[row["location"]] = (_money(row["price_hourly"], what),
                                _money(row["price_monthly"], what))
    return out


def parse_pricing(doc: Any) -> PriceList:
    """The `pricing` object of GET /pricing; ValueError when it is not one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("currency"), str):
        raise ValueError("pricing: expected an object with a currency")
    server_types: dict[tuple[str, str], tuple[Money, Money]] = {}
    for entry in doc.get("server_types") or []:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise ValueError("pricing.server_types: an entry without a name")
        for location, prices in _per_location(entry.get("prices"), name).items():
            server_types[(name, location)] = prices
    ipv4: dict[str, tuple[Money, Money]] = {}
    for entry in doc.get("primary_ips") or []:
        if isinstance(entry, dict) and entry.get("type") == "ipv4":
            ipv4 = _per_location(entry.get("prices"), "primary IPv4")
    return PriceList(currency=doc["currency"], server_types=server_types,
                     primary_ipv4=ipv4)


@dataclass
class CachedPrices:
    """One project's price list, fetched at most once per `ttl` (per `retry` after a
    failure). `get` answers the last good list while a refresh fails."""

    fetch: Callable[[], Awaitable[PriceList]]
    ttl: float = 24 * 3600.0
    retry: float = 600.0
    monotonic: Callable[[], float] = time.monotonic
    prices: PriceList | None = None
    fetched_at: float | None = None
    failed_at: float | None = None
    fetches: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self) -> PriceList | None:
        async with self._lock:
            now = self.monotonic()
            if self.fetched_at is not None and now - self.fetched_at < self.ttl:
                return self.prices
            if self.failed_at is not None and now - self.failed_at < self.retry:
                return self.prices
            self.fetches += 1
            try:
                self.prices = await self.fetch()
            except (CloudError, ValueError) as err:
                self.failed_at = now
                log.warning("Hetzner price list unavailable (next try in %.0fs): %s",
                            self.retry, err)
                return self.prices
            self.fetched_at, self.failed_at = now, None
            return self.prices
