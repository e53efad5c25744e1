"""Bearer-token checks and a per-address failure limiter for the agent's HTTPS API.

The VM stores only sha256(token); comparing digests in constant time keeps both the
token and its timing out of reach. The limiter counts failures per client address in a
sliding window and is consulted only after the token failed to match: a valid token is
never refused because others at the same address (a NAT, the operator's egress) fail.
A blocked address just gets 429 instead of 401; guessing stays hopeless because the
token is 256 random bits.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_token(header: str | None) -> str | None:
    """The token in an `Authorization: Bearer <token>` header, else None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return None
    return value


def token_matches(header: str | None, expected_sha256: str) -> bool:
    """True when the header carries a token whose sha256 is `expected_sha256`."""
    token = bearer_token(header)
    # Hash something even without a token so both paths cost the same.
    digest = token_sha256(token if token is not None else "")
    return hmac.compare_digest(digest, expected_sha256.lower()) and token is not None


class FailureLimiter:
    """At most `limit` failures per `window` seconds per address; then blocked.

    `clock` returns monotonic seconds. The table keeps at most `max_addresses`
    entries (oldest evicted), so a flood of addresses cannot exhaust memory.
    """

    def __init__(self, clock: Callable[[], float], limit: int = 10, window: float = 60.0,
                 max_addresses: int = 10_000) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window
        self._max = max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _prune(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address)
        if times is None:
            return deque()
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._failures[address]
        return times

    def retry_after(self, address: str) -> int | None:
        """Seconds until `address` may try again, or None when it is not blocked."""
        with self._lock:
            now = self._clock()
            times = self._prune(address, now)
            if len(times) <= self._limit:
                return None
            # Blocked until enough failures age out to fall back to the limit.
            release = times[len(times) - self._limit - 1] + self._window
            return max(1, math.ceil(release - now))

    def record_failure(self, address: str) -> None:
        with self._lock:
            now = self._clock()
            times = self._prune(address, now)
            if address not in self._failures:
                self._failures[address] = times
            self._failures.move_to_end(address)
            times.append(now)
            while len(self._failures) > self._max:
                self._failures.popitem(last=False)
