"""Per-token token bucket behaving like the Hetzner Cloud API limit: a full bucket of
`limit` requests that refills continuously at `refill_per_second` (default 3600/h, +1/s)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimitState:
    allowed: bool
    limit: int
    remaining: int
    reset_unix: int  # when the bucket will be full again

    def headers(self) -> dict[str, str]:
        return {"RateLimit-Limit": str(self.limit),
                "RateLimit-Remaining": str(self.remaining),
                "RateLimit-Reset": str(self.reset_unix)}


class RateLimiter:
    """Thread-safe buckets keyed by token (the API limits per project; one token here
    stands for one project). `clock` is monotonic seconds, injectable for tests."""

    def __init__(self, limit: int = 3600, refill_per_second: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._wall_clock = wall_clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self.configure(limit, refill_per_second)

    def configure(self, limit: int, refill_per_second: float) -> None:
        """Change the limits; every bucket starts full again."""
        if limit < 1 or refill_per_second <= 0:
            raise ValueError("limit must be >= 1 and refill_per_second > 0")
        with self._lock:
            self.limit = int(limit)
            self.refill_per_second = float(refill_per_second)
            self._buckets.clear()

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (float(self.limit), now))
        return min(float(self.limit), tokens + (now - at) * self.refill_per_second)

    def _state(self, allowed: bool, tokens: float) -> RateLimitState:
        missing = self.limit - tokens
        reset = self._wall_clock() + missing / self.refill_per_second
        return RateLimitState(allowed, self.limit, max(0, math.floor(tokens)),
                              math.ceil(reset))

    def take(self, key: str) -> RateLimitState:
        """Consume one request if available."""
        with self._lock:
            now = self._clock()
            tokens = self._level(key, now)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[key] = (tokens, now)
            return self._state(allowed, tokens)

    def peek(self, key: str) -> RateLimitState:
        """Current state without consuming (for responses that never reached the API)."""
        with self._lock:
            tokens = self._level(key, self._clock())
            return self._state(tokens >= 1.0, tokens)
