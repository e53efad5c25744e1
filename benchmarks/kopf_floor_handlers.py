"""A Kopf operator with the agentspaces operator's handler shape and no work of its own:
what the framework holds and spends per Workspace. benchmarks/kopf_floor.py runs it.

FLOOR_SHAPE picks how much of the shape is registered, each including the one before:
`changes` (resume, create and update handlers), `timer` (+ the 30 s poll timer), `daemon`
(+ one daemon per Workspace, waiting to be stopped where the operator's long-polls its
agent). Kopf is configured as the operator configures it (kopf_settings.py), with the
same heap trim (memory_trim.py).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import kopf

from agentspaces import kopf_settings, memory_trim
from agentspaces.api.model import GROUP, VERSION

SHAPE = os.environ.get("FLOOR_SHAPE", "daemon")
# As handlers.py names it (importing it would register the operator's own handlers).
RESOURCE = (GROUP, VERSION, "workspaces")
POLL = 30.0
TRIM_EVERY = 60.0


@kopf.on.startup()
async def configure(*, settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    kopf_settings.apply(settings)
    trim = memory_trim.malloc_trim()
    if trim is not None:
        memo.memory_trim = asyncio.create_task(memory_trim.trim_every(TRIM_EVERY, trim))


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
@kopf.on.update(*RESOURCE, field="metadata.annotations")
async def changed(**_: Any) -> None:
    return None


if SHAPE in ("timer", "daemon"):
    @kopf.timer(*RESOURCE, interval=POLL, initial_delay=5.0)
    async def tick(**_: Any) -> None:
        return None


if SHAPE == "daemon":
    @kopf.daemon(*RESOURCE, cancellation_backoff=60.0, cancellation_timeout=30.0)
    async def watch(stopped: kopf.DaemonStopped, **_: Any) -> None:
        await stopped.wait()
