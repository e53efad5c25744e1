"""One rate limiter for every emulator: a budget of `limit` requests per `period`
seconds per key (per token: one token stands for one project or account).

- continuous=True refills the budget smoothly, limit/period requests per second
  (Hetzner: 3600 an hour, one more every second);
- continuous=False gives the whole budget back when the window that began with the
  key's first request ends (Cloudflare: 1,200 per 5 minutes, then blocked until the
  window is over).

Each emulator renders the state in its provider's headers.
"""

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
    period: float
    remaining: int
    reset_after: float  # seconds until the budget is whole again
    reset_unix: int     # the same moment on the wall clock


class RateLimiter:
    """Thread-safe; `clock` is monotonic seconds, injectable for tests."""

    def __init__(self, limit: int, period: float, *, continuous: bool,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.continuous = continuous
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[float, float]] = {}  # key -> (left, since)
        self.configure(limit, period)

    def configure(self, limit: int, period: float) -> None:
        """Change the budget; every key starts with a whole one again."""
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        with self._lock:
            self.limit, self.period = int(limit), float(period)
            self._keys.clear()

    def reset(self) -> None:
        with self._lock:
            self._keys.clear()

    def _level(self, key: str, now: float) -> tuple[float, float]:
        left, since = self._keys.get(key, (float(self.limit), now))
        if self.continuous:
            return min(float(self.limit), left + (now - since) * self.limit / self.period), now
        if now >= since + self.period:
            return float(self.limit), now
        return left, since

    def _state(self, allowed: bool, left: float, since: float, now: float) -> RateLimitState:
        if self.continuous:
            reset_after = (self.limit - left) * self.period / self.limit
        else:
            reset_after = since + self.period - now
        return RateLimitState(allowed, self.limit, self.period, max(0, math.floor(left)),
                              reset_after, math.ceil(self._wall_clock() + reset_after))

    def take(self, key: str) -> RateLimitState:
        """Spend one request if the budget has one."""
        with self._lock:
            now = self._clock()
            left, since = self._level(key, now)
            allowed = left >= 1.0
            if allowed:
                left -= 1.0
            self._keys[key] = (left, since)
            return self._state(allowed, left, since, now)

    def peek(self, key: str) -> RateLimitState:
        """The state without spending (for answers that never reached the API)."""
        with self._lock:
            now = self._clock()
            left, since = self._level(key, now)
            return self._state(left >= 1.0, left, since, now)
