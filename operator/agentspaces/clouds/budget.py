"""The request budget of one provider credential (a Hetzner project, a Cloudflare token).

Both APIs give each credential a budget and answer 429 once it is spent (Hetzner 3,600
requests an hour refilled one a second, Cloudflare 1,200 per 5 minutes given back whole
at the window's end), and both say on every response how much is left. A `Budget` keeps
a local copy: it learns limit, remainder and reset from each response's headers (and
from a 429), refills at the provider's rate in between, counts the calls in flight, and
admits a call by its priority before it is sent:

- HIGH (teardown: deletes, and every call a stop or delete makes) may spend the whole
  remainder;
- NORMAL (progress of existing workspaces: reads, updates) keeps half the reserve;
- LOW (new work: server and record creates, inventory listings, prices) keeps the
  reserve (10% of the limit, at least `reserve_floor`).

A refused call raises `BudgetExhausted` at once (nothing sleeps): a RATE_LIMITED
`CloudError` whose `retry_after` is when the budget will admit it, staggered so that a
burst of refused callers comes back one refill apart instead of all at once. Which
adapter call has which priority is the `PRIORITIES` table, the one place that says so.
"""

from __future__ import annotations

import contextvars
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum

from agentspaces import metrics
from agentspaces.clouds.errors import CloudError, ErrorKind


class Priority(IntEnum):
    HIGH = 0
    NORMAL = 1
    LOW = 2


PRIORITIES: Mapping[str, Priority] = {
    # Hetzner (clouds/hetzner.py, one entry per HcloudServers method)
    "hetzner.delete": Priority.HIGH,
    "hetzner.detach_firewall": Priority.HIGH,
    "hetzner.delete_firewall": Priority.HIGH,
    "hetzner.delete_image": Priority.HIGH,
    "hetzner.get": Priority.NORMAL,
    "hetzner.find_by_name": Priority.NORMAL,
    "hetzner.find_firewall_by_name": Priority.NORMAL,
    "hetzner.list_firewalls": Priority.NORMAL,
    "hetzner.set_firewall_rules": Priority.NORMAL,
    "hetzner.apply_firewall": Priority.NORMAL,
    "hetzner.get_image": Priority.NORMAL,  # polling a snapshot being made
    "hetzner.relabel": Priority.NORMAL,  # a workspace claiming a warm-pool server
    "hetzner.find_by_uid": Priority.LOW,  # the look before a create
    "hetzner.create": Priority.LOW,
    "hetzner.create_firewall": Priority.LOW,
    "hetzner.list_managed": Priority.LOW,  # the shared inventory
    "hetzner.find_by_selector": Priority.LOW,  # a class's warm-pool servers
    "hetzner.create_snapshot": Priority.LOW,
    "hetzner.list_snapshots": Priority.LOW,  # finding and collecting old snapshots
    "hetzner.pricing": Priority.LOW,
    # Cloudflare (clouds/cloudflare.py, one entry per request it makes)
    "cloudflare.delete_record": Priority.HIGH,
    "cloudflare.zone_id": Priority.NORMAL,
    "cloudflare.list_records": Priority.NORMAL,
    "cloudflare.update_record": Priority.NORMAL,
    "cloudflare.create_record": Priority.LOW,
}

_teardown: contextvars.ContextVar[bool] = contextvars.ContextVar("budget_teardown",
                                                                 default=False)
_caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("budget_caller",
                                                                    default=None)


@contextmanager
def caller(key: str) -> Iterator[None]:
    """Name who makes the calls inside (a workspace's uid), so a caller that comes back
    before its time (a timer, a watch event) keeps its place instead of queueing again."""
    token = _caller.set(key)
    try:
        yield
    finally:
        _caller.reset(token)


@contextmanager
def teardown() -> Iterator[None]:
    """Every cloud call inside is HIGH: a stop's or delete's reads (find the server,
    list its records) must not wait behind creates."""
    token = _teardown.set(True)
    try:
        yield
    finally:
        _teardown.reset(token)


def priority_of(operation: str) -> Priority:
    return Priority.HIGH if _teardown.get() else PRIORITIES.get(operation, Priority.NORMAL)


@dataclass(frozen=True)
class Reading:
    """What one response said about the budget."""

    remaining: int
    limit: int | None = None
    reset_after: float | None = None
    """Seconds until the budget is whole (Hetzner) or the window ends (Cloudflare)."""


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def hetzner_reading(headers: Mapping[str, str], now_unix: float) -> Reading | None:
    """RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset (a UNIX time)."""
    remaining = _int(headers.get("RateLimit-Remaining"))
    if remaining is None:
        return None
    reset = _int(headers.get("RateLimit-Reset"))
    return Reading(remaining=remaining, limit=_int(headers.get("RateLimit-Limit")),
                   reset_after=max(0.0, reset - now_unix) if reset is not None else None)


_PARAM = re.compile(r";\s*([a-z]+)=(\d+)")


def _params(value: str | None) -> dict[str, int]:
    return {k: int(v) for k, v in _PARAM.findall(value or "")}


def cloudflare_reading(headers: Mapping[str, str]) -> Reading | None:
    """`Ratelimit: "default";r=<remaining>;t=<seconds to reset>` and
    `Ratelimit-Policy: "default";q=<limit>;w=<window seconds>`."""
    state = _params(headers.get("Ratelimit"))
    if "r" not in state:
        return None
    policy = _params(headers.get("Ratelimit-Policy"))
    return Reading(remaining=state["r"], limit=policy.get("q"),
                   reset_after=float(state["t"]) if "t" in state else None)


class BudgetExhausted(CloudError):
    """The budget holds too little for a call of this priority: try after `retry_after`."""

    def __init__(self, provider: str, operation: str, priority: Priority, retry_after: float,
                 remaining: int, limit: int, keep: int, *, learning: bool = False) -> None:
        # The same words every time it waits, so a waiting workspace's status is
        # written once, not on every retry.
        detail = ("learning it from the first responses" if learning else
                  f"{priority.name.lower()}-priority calls keep {keep} of its {limit} "
                  "requests")
        super().__init__(ErrorKind.RATE_LIMITED, provider, "budget",
                         f"waiting for the {provider} API request budget: {detail}",
                         retry_after=retry_after)
        self.operation = operation
        self.priority = priority
        self.remaining = remaining
        self.limit = limit
        self.keep = keep


class Budget:
    """One credential's budget. Thread-safe (hcloud answers in worker threads);
    `clock` is monotonic seconds."""

    MAX_WAIT = 600.0
    LATE_GRACE = 120.0
    """How late after its slot a refused caller still counts as due (requeues run late)."""
    LEARN_WAIT = 1.0
    """How soon a call refused before the first response comes back."""

    def __init__(self, provider: str, *, limit: int, period: float, continuous: bool,
                 reserve_fraction: float = 0.1, reserve_floor: int = 5, probe: int = 2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.provider = provider
        self.continuous = continuous
        self.limit = limit
        self.rate = limit / period
        """Requests per second coming back (continuous) or per window (spacing only)."""
        self.reserve_fraction = reserve_fraction
        self.reserve_floor = reserve_floor
        self.probe = probe
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(limit)
        self._at = clock()
        self._window_end: float | None = None
        self._blocked_until = 0.0
        self._learned = False
        self._in_flight = 0
        self._queues: dict[Priority, dict[object, float]] = {}
        """When each refused caller was told to come back (a past one has come back)."""
        metrics.track_budget(self)

    @classmethod
    def hetzner(cls, clock: Callable[[], float] = time.monotonic) -> Budget:
        return cls("hetzner", limit=3600, period=3600.0, continuous=True, clock=clock)

    @classmethod
    def cloudflare(cls, clock: Callable[[], float] = time.monotonic) -> Budget:
        return cls("cloudflare", limit=1200, period=300.0, continuous=False, clock=clock)

    # -- policy ------------------------------------------------------------------------
    def keep(self, priority: Priority) -> int:
        """Requests a call of `priority` leaves in the budget."""
        reserve = max(self.reserve_floor, math.ceil(self.limit * self.reserve_fraction))
        reserve = min(reserve, self.limit // 2)
        return {Priority.HIGH: 0, Priority.NORMAL: reserve // 2,
                Priority.LOW: reserve}[priority]

    def _level(self, now: float) -> float:
        if self.continuous:
            return min(float(self.limit), self._tokens + (now - self._at) * self.rate)
        if self._window_end is not None and now >= self._window_end:
            return float(self.limit)
        return self._tokens

    def remaining(self) -> int:
        with self._lock:
            return max(0, math.floor(self._level(self._clock())))

    def _wait(self, now: float, need: float) -> float:
        """Seconds until the budget holds `need` requests (ignoring calls in flight)."""
        wait = max(0.0, self._blocked_until - now)
        if need <= 0:
            return wait
        if self.continuous:
            return max(wait, need / self.rate)
        if self._window_end is not None and self._window_end > now:
            return max(wait, self._window_end - now)
        return max(wait, self.LEARN_WAIT)

    # -- calls -------------------------------------------------------------------------
    @contextmanager
    def call(self, operation: str) -> Iterator[None]:
        """Admit one call (or raise `BudgetExhausted`) and count it in flight until the
        block ends; `observe` its responses inside the block."""
        self.admit(operation)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def admit(self, operation: str) -> None:
        priority = priority_of(operation)
        with self._lock:
            now = self._clock()
            level = self._level(now)
            if not self._learned:  # a few probes until a response tells the truth
                allowed = self._in_flight < self.probe and now >= self._blocked_until
                need = 1.0
            who: object = _caller.get() or object()  # anonymous: always a new place
            slot_was = self._queues.get(priority, {}).get(who)
            # A caller back at its turn waits no longer behind a stream of busier
            # priorities: it is admitted as NORMAL (else steady reads of other
            # workspaces would keep a LOW create out for good).
            due = slot_was is not None and slot_was <= now
            effective = min(priority, Priority.NORMAL) if due else priority
            if self._learned:
                keep = self.keep(effective)
                allowed = level >= keep + 1 and now >= self._blocked_until
                need = keep + 1 - level
            if allowed:
                self._tokens, self._at = level - 1, now
                self._in_flight += 1
                self._queues.get(priority, {}).pop(who, None)
                if self._window_end is not None and now >= self._window_end:
                    self._window_end = None  # a new window; the next reading dates it
                return
            wait = self._wait(now, need)
            if not self._learned:  # the first answer is a moment away: no queue yet
                slot = now + max(wait, self.LEARN_WAIT)
            else:  # one refill apart, so a burst does not come back all at once
                # Past slots are kept a while, so a late caller is still known as due.
                queue = {k: t for k, t in self._queues.get(priority, {}).items()
                         if t > now - self.LATE_GRACE}
                ahead = sum(1 for t in queue.values() if t > now)
                if due:  # its turn came and went: first in line for the next refill
                    slot = now + max(wait, 1.0 / self.rate)
                elif slot_was is not None and slot_was > now:
                    slot = slot_was
                else:
                    slot = min(now + wait + ahead / self.rate, now + self.MAX_WAIT)
                queue[who] = slot
                self._queues[priority] = queue
            retry = math.ceil((slot - now) * 10) / 10
        raise BudgetExhausted(self.provider, operation, priority, retry,
                              max(0, math.floor(level)), self.limit, self.keep(priority),
                              learning=not self._learned)

    def observe(self, reading: Reading | None, status: int | None = None,
                retry_after: float | None = None) -> None:
        """Learn from one response (in the `call` block that sent it)."""
        with self._lock:
            now = self._clock()
            if reading is not None:
                self._learn(reading, now)
            if status == 429:
                # A reading on the 429 says what is left (0 when the budget is spent; more
                # when something else refused, e.g. a per-address limit): only without
                # one is the budget taken as empty. Either way every call waits.
                if reading is None:
                    self._tokens, self._at = 0.0, now
                wait = retry_after
                if wait is None:
                    wait = self._wait(now, 1.0)
                self._blocked_until = max(self._blocked_until, now + max(wait, 0.0))
                if not self.continuous:  # the window ends when the provider said
                    self._window_end = self._blocked_until

    def _learn(self, reading: Reading, now: float) -> None:
        self._learned = True
        if reading.limit is not None and reading.limit > 0:
            self.limit = reading.limit
        # Calls still in flight may not be counted in this answer yet: assume not.
        others = max(0, self._in_flight - 1)
        self._tokens, self._at = float(max(0, reading.remaining - others)), now
        if reading.reset_after is None:
            return
        if not self.continuous:
            self._window_end = now + reading.reset_after
            return
        spent = self.limit - reading.remaining
        # The reset is whole seconds: learn the refill rate only from a wide enough gap.
        if spent >= 10 and reading.reset_after > 0:
            self.rate = spent / reading.reset_after

    def retry_after(self) -> float:
        """Seconds until one more call could go (for a 429 that named no wait)."""
        with self._lock:
            now = self._clock()
            return max(1.0, self._wait(now, 1.0 - self._level(now)))
