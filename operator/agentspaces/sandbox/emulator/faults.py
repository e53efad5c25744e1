"""Fault injection for the emulators, switchable at runtime.

Each rule matches requests by method, path prefix (path after the API prefix, e.g.
"/servers") or endpoint key (e.g. "POST /servers", "GET /servers/{id}") and stays active
for `count` matching requests and/or `duration` seconds (neither: until `clear()`).
Kinds:

- status: answer with an HTTP error instead of the API (the provider's error body by
  default); with `after_apply` the request is carried out first and its answer replaced,
  like a reply lost on the way back;
- delay: answer normally, `seconds` late;
- hang: accept the request, never answer for `seconds`, then close the connection;
- disconnect: close the connection without an answer;
- hold: apply the request for real, wait `seconds`, then send the real answer.

`hang`/`disconnect` with `process=True` apply the request first (the change happens but
the client never learns of it). Waits end early on `clear()` or when the emulator stops.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

KINDS = ("status", "delay", "hang", "disconnect", "hold")


@dataclass
class FaultRule:
    kind: str
    status: int | None = None
    code: str | None = None
    message: str | None = None
    json_body: bool = True
    seconds: float = 0.0
    process: bool = False
    after_apply: bool = False
    retry_after: int | None = None
    remaining: int | None = None
    until: float | None = None
    method: str | None = None
    path_prefix: str | None = None
    endpoint: str | None = None
    hits: int = 0
    released: threading.Event = field(default_factory=threading.Event, repr=False)

    def matches(self, method: str, path: str, endpoint: str) -> bool:
        return ((self.method is None or self.method.upper() == method)
                and (self.path_prefix is None or path.startswith(self.path_prefix))
                and (self.endpoint is None or self.endpoint == endpoint))

    def wait(self, stopping: threading.Event, seconds: float) -> None:
        """Sleep up to `seconds`, ending early on clear() or emulator stop."""
        deadline = time.monotonic() + seconds
        while not (self.released.is_set() or stopping.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.released.wait(min(left, 0.05))


@dataclass
class FaultPlan:
    """What to do with one request, decided when it arrives."""
    delays: list[FaultRule] = field(default_factory=list)
    respond: FaultRule | None = None      # status fault instead of the API
    replace_after: FaultRule | None = None  # status fault after the API applied it
    drop_before: FaultRule | None = None  # hang/disconnect before the API sees it
    holds: list[FaultRule] = field(default_factory=list)
    drop_after: FaultRule | None = None   # hang/disconnect after the API applied it


class FaultInjector:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        # Every rule since the last clear(), spent or not: a spent hold/hang rule may
        # still be keeping a request waiting, and clear() must release it.
        self._issued: list[FaultRule] = []

    def _add(self, rule: FaultRule, count: int | None, duration: float | None) -> FaultRule:
        if count is not None and count < 1:
            raise ValueError("count must be >= 1")
        rule.remaining = count
        rule.until = None if duration is None else self._clock() + duration
        with self._lock:
            self._rules.append(rule)
            self._issued.append(rule)
        return rule

    def add(self, status: int, *, count: int | None = None, duration: float | None = None,
            method: str | None = None, path_prefix: str | None = None,
            endpoint: str | None = None, code: str | None = None,
            message: str | None = None, json_body: bool = True,
            delay: float = 0.0, after_apply: bool = False,
            retry_after: int | None = None) -> FaultRule:
        """Answer matching requests with `status` (after `delay` seconds). The body is
        the provider's error JSON (`code` overrides the provider's code for the status);
        json_body=False sends the non-JSON page a gateway would. `retry_after` is the
        Retry-After a provider that sends one puts on a 429."""
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status")
        return self._add(FaultRule("status", status=status, code=code, message=message,
                                   json_body=json_body, seconds=delay, method=method,
                                   path_prefix=path_prefix, endpoint=endpoint,
                                   after_apply=after_apply, retry_after=retry_after),
                         count, duration)

    def add_delay(self, seconds: float, *, count: int | None = None,
                  duration: float | None = None, method: str | None = None,
                  path_prefix: str | None = None, endpoint: str | None = None) -> FaultRule:
        return self._add(FaultRule("delay", seconds=seconds, method=method,
                                   path_prefix=path_prefix, endpoint=endpoint), count, duration)

    def add_hang(self, *, seconds: float = 3600.0, process: bool = False,
                 count: int | None = 1, duration: float | None = None,
                 method: str | None = None, path_prefix: str | None = None,
                 endpoint: str | None = None) -> FaultRule:
        return self._add(FaultRule("hang", seconds=seconds, process=process, method=method,
                                   path_prefix=path_prefix, endpoint=endpoint), count, duration)

    def add_disconnect(self, *, process: bool = False, count: int | None = 1,
                       duration: float | None = None, method: str | None = None,
                       path_prefix: str | None = None,
                       endpoint: str | None = None) -> FaultRule:
        return self._add(FaultRule("disconnect", process=process, method=method,
                                   path_prefix=path_prefix, endpoint=endpoint), count, duration)

    def hold_create_response(self, seconds: float) -> FaultRule:
        """The next POST /servers creates the server for real, then its response is held
        back for `seconds` (or until clear())."""
        return self.hold_response("POST /servers", seconds)

    def hold_response(self, endpoint: str, seconds: float) -> FaultRule:
        """The next request to `endpoint` (e.g. "POST /firewalls") is carried out, then
        its response is held back for `seconds` (or until clear())."""
        return self._add(FaultRule("hold", seconds=seconds, endpoint=endpoint), 1, None)

    def clear(self) -> None:
        """Remove every rule and release requests currently held, hung or delayed."""
        with self._lock:
            rules, self._rules, self._issued = self._issued, [], []
        for rule in rules:
            rule.released.set()

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            now = self._clock()
            return [r for r in self._rules if self._live(r, now)]

    @staticmethod
    def _live(rule: FaultRule, now: float) -> bool:
        return (rule.remaining is None or rule.remaining > 0) and (
            rule.until is None or now < rule.until)

    def plan(self, method: str, path: str, endpoint: str) -> FaultPlan:
        """Match a request against the rules in order; matched rules use up one count.
        The first status/hang/disconnect-before rule decides and ends matching."""
        plan = FaultPlan()
        with self._lock:
            now = self._clock()
            self._rules = [r for r in self._rules if self._live(r, now)]
            for rule in self._rules:
                if not rule.matches(method, path, endpoint):
                    continue
                if rule.kind in ("hang", "disconnect") and rule.process:
                    if plan.drop_after is not None:
                        continue
                    plan.drop_after = rule
                elif rule.kind == "hold":
                    plan.holds.append(rule)
                elif rule.kind == "delay":
                    plan.delays.append(rule)
                elif rule.kind == "status" and rule.after_apply:
                    if plan.replace_after is not None:
                        continue
                    plan.replace_after = rule
                elif rule.kind == "status":
                    plan.respond = rule
                else:
                    plan.drop_before = rule
                rule.hits += 1
                if rule.remaining is not None:
                    rule.remaining -= 1
                if plan.respond is not None or plan.drop_before is not None:
                    break
        return plan
