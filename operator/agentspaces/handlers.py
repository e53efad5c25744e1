"""Kopf registrations only: each handler builds a Scope and calls the domain.

Creation, spec/annotation changes and operator restarts reconcile immediately; a
timer re-runs the same level-based reconcile every poll interval (agent polling,
idle policy, secret rotation, drift). A per-workspace lock keeps the two from
overlapping. Status is written through Kopf's patch, and only what changed.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from agentspaces.api.schema import GROUP, VERSION
from agentspaces.api.types import WorkspaceRef
from agentspaces.kube import KubernetesApi
from agentspaces.reconcile import workspace
from agentspaces.reconcile.scope import Outcome, Scope
from agentspaces.reconcile.status import StatusDraft
from agentspaces.runtime import Runtime
from agentspaces.settings import OperatorSettings

RESOURCE = (GROUP, VERSION, "workspaces")
FINALIZER = f"{GROUP}/finalizer"
# Kopf ignores every annotation under its storage prefix when diffing, so its
# bookkeeping lives under a sub-domain and user annotations such as
# agentspaces.dev/wake still trigger a reconcile.
KOPF_PREFIX = f"kopf.{GROUP}"

_runtime: Runtime | None = None


def runtime() -> Runtime:
    assert _runtime is not None, "operator not started"
    return _runtime


@kopf.on.startup()
async def configure(*, settings: kopf.OperatorSettings,
                    logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    global _runtime
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration")
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.batching.error_delays = (1, 2, 5, 10, 30)
    op_settings = OperatorSettings.from_env()
    _runtime = Runtime(op_settings, KubernetesApi())
    logger.info("agentspaces operator starting (namespace %s, poll every %ss)",
                op_settings.namespace, op_settings.poll_interval)


def _emitter(body: kopf.Body) -> Any:
    def emit(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message)
    return emit


def _scope(body: kopf.Body) -> Scope:
    rt = runtime()
    ref = WorkspaceRef.from_body(body)
    draft = StatusDraft(body.get("status"), rt.clock(), ref.generation)
    return Scope(ref=ref, body=body, status=draft, runtime=rt, emit=_emitter(body))


def _finish(scope: Scope, patch: kopf.Patch, outcome: Outcome) -> None:
    changes = scope.status.patch()
    if changes:
        patch.status.update(changes)
    if outcome.requeue is not None:
        raise kopf.TemporaryError(outcome.message or "waiting", delay=outcome.requeue)


async def _reconcile(body: kopf.Body, patch: kopf.Patch) -> None:
    scope = _scope(body)
    async with runtime().lock(scope.ref.uid):
        outcome = await workspace.reconcile(scope)
    _finish(scope, patch, outcome)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
@kopf.on.update(*RESOURCE, field="metadata.annotations")
async def workspace_changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    await _reconcile(body, patch)


# Timer intervals are fixed at registration, so the setting is read at import.
_POLL_INTERVAL = OperatorSettings.from_env().poll_interval


@kopf.timer(*RESOURCE, interval=_POLL_INTERVAL, initial_delay=min(5.0, _POLL_INTERVAL))
async def workspace_tick(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    await _reconcile(body, patch)


@kopf.on.delete(*RESOURCE)
async def workspace_deleted(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    scope = _scope(body)
    async with runtime().lock(scope.ref.uid):
        outcome = await workspace.finalize(scope)
    _finish(scope, patch, outcome)
    runtime().forget(scope.ref.uid)
