"""A Kopf operator with the agentspaces operator's handler shape and no work of its own:
what the framework holds and spends per Workspace. benchmarks/kopf_floor.py runs it.

FLOOR_SHAPE picks how much of the shape is registered, each including the one before:
`changes` (resume, create and update handlers), `timer` (+ the 30 s poll timer), `daemon`
(+ one daemon per Workspace, waiting to be stopped where the operator's long-polls its
agent). Persistence, watch timeouts and the heap trim are the operator's (handlers.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf

from agentspaces import memory_trim
from agentspaces.api.model import GROUP, OPERATOR_FINALIZER, VERSION

SHAPE = os.environ.get("FLOOR_SHAPE", "daemon")
# As handlers.py names them (importing it would register the operator's own handlers).
RESOURCE = (GROUP, VERSION, "workspaces")
KOPF_PREFIX = f"kopf.{GROUP}"
POLL = 30.0
TRIM_EVERY = 60.0


@kopf.on.startup()
async def configure(*, settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = OPERATOR_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration")
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
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
