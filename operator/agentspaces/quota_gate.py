"""One start decision at a time per namespace, and the starts already let through.

A WorkspaceQuota's maxRunning counts Workspaces with a server. Between the decision to
start one and its server being recorded in status there is a window (the cloud create
and the status write); two starts deciding in it would both see the last free slot.
The gate closes it within one process: decisions in a namespace hold its lock, and a
start let through is counted (`reserved`) until its server shows in a listing, it is
gone, or `ttl` seconds pass (a start that failed before its create). With several
operator replicas only the peering's active one reconciles (docs/design-decisions.md),
so one gate sees every start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

DEFAULT_TTL = 300.0


class QuotaGate:
    def __init__(self, monotonic: Callable[[], float], ttl: float = DEFAULT_TTL) -> None:
        self._monotonic = monotonic
        self._ttl = ttl
        self._locks: dict[str, asyncio.Lock] = {}
        self._reserved: dict[str, dict[str, float]] = {}

    def lock(self, namespace: str) -> asyncio.Lock:
        return self._locks.setdefault(namespace, asyncio.Lock())

    def reserved(self, namespace: str, waiting: Iterable[str]) -> set[str]:
        """The namespace's starts let through whose server is not recorded yet;
        `waiting` are the uids listed without a server (others are dropped)."""
        held = self._reserved.get(namespace, {})
        now, still = self._monotonic(), set(waiting)
        for uid in [u for u, at in held.items() if u not in still or now - at > self._ttl]:
            del held[uid]
        return set(held)

    def reserve(self, namespace: str, uid: str) -> None:
        self._reserved.setdefault(namespace, {})[uid] = self._monotonic()

    def release(self, namespace: str, uid: str) -> None:
        self._reserved.get(namespace, {}).pop(uid, None)
