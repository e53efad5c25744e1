"""A burst of server creates against the real Hetzner emulator with a small rate limit
(30 requests, one back a second), through the real adapter and its request budget
(clouds/budget.py): creates wait for the budget instead of drawing 429s, and deletes
sent in the middle of the burst go ahead of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from agentspaces.clouds.budget import Budget, BudgetExhausted
from agentspaces.clouds.errors import CloudError, ErrorKind
from agentspaces.clouds.hetzner import HcloudServers, ServerRequest, workspace_labels
from agentspaces.sandbox.hetzner import HetznerEmulator

TOKEN = "budget-burst-token-8c2d"
LIMIT = 30
BURST = 40
OLD = 5


@pytest.fixture
def emulator() -> Iterator[HetznerEmulator]:
    emu = HetznerEmulator(TOKEN, boot_seconds=0.2, delete_seconds=0.1,
                          action_seconds=0.05).start()
    emu.set_rate_limit(LIMIT, 1.0)
    try:
        yield emu
    finally:
        emu.stop()


def request(name: str) -> ServerRequest:
    return ServerRequest(name=name, server_type="cx23", location="fsn1",
                         image="ubuntu-24.04",
                         labels=workspace_labels(f"uid-{name}", name, "burst"),
                         user_data="#cloud-config\n")


class Unbudgeted(Budget):
    """Admits every call: the adapter as it was before budgets."""

    def admit(self, operation: str) -> None:
        with self._lock:
            self._in_flight += 1


def throttled(emulator: HetznerEmulator) -> int:
    return sum(1 for r in emulator.requests if r.status == 429)


async def test_a_burst_of_creates_waits_for_the_budget_and_deletes_go_first(
        emulator: HetznerEmulator) -> None:
    servers = HcloudServers(TOKEN, emulator.url)
    try:
        old = [await servers.create(request(f"old-{i}")) for i in range(OLD)]
        emulator.set_rate_limit(LIMIT, 1.0)  # a whole budget again for the burst
        emulator.reset_calls()
        started = time.monotonic()
        refused: set[str] = set()
        created_at: dict[str, float] = {}
        deleted_at: list[float] = []
        deletes_refused = 0

        async def create(name: str) -> None:
            for _ in range(100):  # bounded, like Kopf's requeues
                try:
                    await servers.create(request(name))
                except BudgetExhausted as err:
                    refused.add(name)  # the reconciler requeues after retry_after
                    await asyncio.sleep(err.retry_after or 1.0)
                    continue
                created_at[name] = time.monotonic() - started
                return
            raise AssertionError(f"{name} never got through")

        async def delete(server_id: int) -> None:
            nonlocal deletes_refused
            await asyncio.sleep(1.0)  # the burst has spent the creates' share by now
            for _ in range(20):
                try:
                    await servers.delete(server_id)
                except BudgetExhausted as err:
                    deletes_refused += 1
                    await asyncio.sleep(err.retry_after or 1.0)
                    continue
                deleted_at.append(time.monotonic() - started)
                return

        await asyncio.wait_for(asyncio.gather(
            *(create(f"ws-{i}") for i in range(BURST)),
            *(delete(s.id) for s in old)), timeout=90)
        took = time.monotonic() - started
    finally:
        await servers.aclose()

    assert throttled(emulator) == 0, [r for r in emulator.requests if r.status == 429]
    assert len(created_at) == BURST
    assert len(refused) >= BURST - LIMIT  # the budget held those back
    assert len(deleted_at) == OLD
    # Deletes spend the reserve the creates leave: all done before half the creates
    # that had to wait (as LOW calls they would queue behind them). A delete may still
    # wait once while the budget counts the burst's calls in flight.
    waiting = sorted(at for name, at in created_at.items() if name in refused)
    assert max(deleted_at) < waiting[len(waiting) // 2], (deleted_at, waiting)
    assert not any(s["name"].startswith("old-") for s in emulator.servers.values())
    # About 1 s per create beyond what the budget held at the start.
    assert took < BURST - LIMIT + OLD + 20, took
    print(f"burst of {BURST} creates, {OLD} deletes, limit {LIMIT}: 0 x 429, "
          f"{len(refused)} creates waited, {deletes_refused} delete waits, {took:.1f} s")


async def test_without_the_budget_the_same_burst_draws_429s(
        emulator: HetznerEmulator) -> None:
    servers = HcloudServers(TOKEN, emulator.url,
                            budget=Unbudgeted("hetzner", limit=3600, period=3600.0,
                                              continuous=True))
    try:
        results = await asyncio.gather(*(servers.create(request(f"ws-{i}"))
                                         for i in range(BURST)), return_exceptions=True)
    finally:
        await servers.aclose()
    limited = [r for r in results
               if isinstance(r, CloudError) and r.kind is ErrorKind.RATE_LIMITED]
    assert throttled(emulator) == len(limited) >= BURST - LIMIT
    print(f"without the budget: {throttled(emulator)} x 429 out of {BURST} creates")
