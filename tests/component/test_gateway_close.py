"""Closing the wake gateway ends its sync loop even when a change lands at the moment
of the close (a watch event as the pod stops): the close must not wait for ever."""

from __future__ import annotations

import asyncio

from agentspaces.gateway.service import GatewaySettings, start_gateway
from tests.component.agent_harness import free_port
from tests.support.gateway import MemorySource

ROUNDS = 12
LOOPBACK = "127.0.0.1"
CLOSE_BOUND = 5.0  # a close is a few loop turns; a lost cancel waits for ever


async def test_a_change_landing_as_the_gateway_closes_does_not_keep_it_open() -> None:
    for round_ in range(ROUNDS):
        # No Caddy at the admin address: the loop fails its sync and waits to retry.
        admin, app = free_port(LOOPBACK), free_port(LOOPBACK)
        gateway = await start_gateway(
            GatewaySettings(caddy_admin=f"{LOOPBACK}:{admin}", listen=f"{LOOPBACK}:{app}"),
            source=MemorySource())
        tasks = list(gateway._tasks)
        await asyncio.sleep(0.05)  # the loop is waiting for a change
        gateway.changed()
        for _ in range(round_ % 4):  # the change a few loop turns before the cancel
            await asyncio.sleep(0)
        closing = asyncio.create_task(gateway.aclose())
        done, _ = await asyncio.wait({closing}, timeout=CLOSE_BOUND)
        try:
            assert closing in done, f"round {round_}: the close waited on its loop"
            assert all(task.done() for task in tasks), round_
        finally:
            for _ in range(50):  # bounded: cancel what a failed close left running
                if all(task.done() for task in (*tasks, closing)):
                    break
                for task in (*tasks, closing):
                    task.cancel()
                await asyncio.sleep(0.1)
