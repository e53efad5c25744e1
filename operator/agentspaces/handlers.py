"""Kopf registrations only: each handler builds a Visit and calls the domain.

Creation, spec/annotation changes and operator restarts reconcile immediately; a
timer re-runs the same level-based reconcile every poll interval (agent polling,
idle policy, secret rotation, drift). While status names an agent endpoint, a daemon
holds a long-poll on the agent and runs that reconcile whenever the agent's status
changes or the poll interval passes (agent_watch.py); the timer skips a workspace its
daemon keeps reconciled. A per-workspace lock keeps them from overlapping; status is
read fresh and written (only what changed) inside that lock.

With AGENTSPACES_PEERING set, replicas of the operator peer through Kopf: one acts,
the others run none of these handlers until it is gone (peering.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from agentspaces import agent_watch, kopf_settings, memory_trim, metrics, peering
from agentspaces.api.image_model import IMAGE_PLURAL
from agentspaces.api.model import GROUP, OPERATOR_FINALIZER, VERSION
from agentspaces.api.types import WorkspaceRef
from agentspaces.kube import KubernetesApi
from agentspaces.reconcile import class_protection, warm_pool, workspace, workspace_image
from agentspaces.reconcile.outcome import Outcome
from agentspaces.reconcile.scope import Visit
from agentspaces.reconcile.status import StatusDraft
from agentspaces.runtime import Runtime
from agentspaces.settings import OperatorSettings
from agentspaces.workspace_versions import version_of

log = logging.getLogger(__name__)
RESOURCE = (GROUP, VERSION, "workspaces")
IMAGES = (GROUP, VERSION, IMAGE_PLURAL)
IMAGE_RECHECK = 600.0
CLASSES = (GROUP, VERSION, "workspaceclasses")
"""How often a Ready WorkspaceImage is checked against the project (its snapshot still
there; an operator upgrade's new bake recipe is seen at resume)."""
FINALIZER = OPERATOR_FINALIZER
KOPF_PREFIX = kopf_settings.KOPF_PREFIX

SETTINGS = OperatorSettings.from_env()
"""Read once per process, at import: the timer's interval is fixed at registration,
and the startup handler builds the runtime from the same values."""
POOL_TICK = SETTINGS.pool_interval
"""How often a class's warm pool is looked at (one Hetzner list, one status call per
pool server): a claimed slot is refilled, a server that became ready offered, within
this."""


def runtime_of(memo: kopf.Memo) -> Runtime:
    """The runtime the startup handler put in Kopf's memo (each object's memo is a
    shallow copy of the operator's, so all handlers share it)."""
    found = getattr(memo, "runtime", None)
    if not isinstance(found, Runtime):
        raise RuntimeError("operator not started: no runtime in the memo")
    return found


@kopf.on.startup()
async def configure(*, settings: kopf.OperatorSettings, memo: kopf.Memo,
                    logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    kopf_settings.apply(settings)
    if SETTINGS.peering is not None:  # first: a retry of this handler repeats it alone
        await _join_peering(settings, SETTINGS.peering, SETTINGS.peering_lifetime, logger)
    else:
        metrics.OPERATOR_ACTIVE.set(1)  # standalone: the only replica acts from the start
    memo.runtime = Runtime(SETTINGS, KubernetesApi())
    if SETTINGS.metrics_port is not None:
        where = f"{SETTINGS.metrics_host}:{SETTINGS.metrics_port}"
        try:
            memo.metrics = await metrics.serve(SETTINGS.metrics_host, SETTINGS.metrics_port)
        except OSError as err:  # taken or not ours: stop, rather than run unobserved
            raise kopf.PermanentError(f"metrics: cannot listen on {where}: {err}") from None
        logger.info("metrics at %s", memo.metrics.url)
    trim = memory_trim.malloc_trim()
    if SETTINGS.memory_trim > 0 and trim is not None:
        memo.memory_trim = asyncio.create_task(
            memory_trim.trim_every(SETTINGS.memory_trim, trim), name="memory-trim")
    logger.info("agentspaces operator starting (namespace %s, poll every %ss)",
                SETTINGS.namespace, SETTINGS.poll_interval)


async def _join_peering(settings: kopf.OperatorSettings, name: str, lifetime: int,
                        logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """One replica acts, the others stand by (agentspaces.peering says what pauses)."""
    priority = peering.configure(settings, name, lifetime)
    try:
        created = await peering.ensure_object(name)
    except ApiException as exc:
        if exc.status == 404:  # retrying cannot help: the CRD is not installed
            raise kopf.PermanentError(
                "peering: the ClusterKopfPeering CRD is missing (install crds/)") from None
        raise
    logger.info("peering %r%s: priority %d, lifetime %ds; acting only while no older "
                "replica is alive, standing by otherwise", name,
                " (created)" if created else "", priority, lifetime)


@kopf.on.cleanup()
async def close_clients(*, memo: kopf.Memo, **_: Any) -> None:
    """Close the HTTP sessions of every cloud adapter, agent client and the Kubernetes
    client on shutdown."""
    found = getattr(memo, "runtime", None)
    if isinstance(found, Runtime):  # absent when startup never ran
        await found.aclose()
        await found.kube.aclose()
    server = getattr(memo, "metrics", None)
    if isinstance(server, metrics.MetricsServer):
        await server.close()
    trimming = getattr(memo, "memory_trim", None)
    if isinstance(trimming, asyncio.Task):
        trimming.cancel()


def _emitter(body: kopf.Body) -> Any:
    def emit(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message)
    return emit


async def _run(body: kopf.Body, memo: kopf.Memo, step: Any, *, fresh_inputs: bool,
               hold_long_waits: bool = True) -> None:
    """`_visit`, with a requeue handed to Kopf as a TemporaryError; one longer than a
    poll interval is held for the timer instead (requeue_holds.py), so that a later
    spec change is not kept waiting behind it. A delete (`hold_long_waits` False)
    always retries through Kopf: returning would let its finalizer go."""
    outcome = await _visit(body, memo, step, fresh_inputs=fresh_inputs)
    rt = runtime_of(memo)
    uid = WorkspaceRef.from_body(body).uid
    if outcome is None or outcome.requeue is None:
        rt.holds.release(uid)
        return
    if hold_long_waits and outcome.requeue > SETTINGS.poll_interval:
        rt.holds.hold(uid, (body.get("metadata") or {}).get("generation"), outcome.requeue)
        meta = body.get("metadata") or {}
        log.info("%s/%s: waiting for the poll timer: %s (in %gs)", meta.get("namespace"),
                 meta.get("name"), outcome.message or "waiting", outcome.requeue)
        return
    raise kopf.TemporaryError(outcome.message or "waiting", delay=outcome.requeue)


async def _visit(body: kopf.Body, memo: kopf.Memo, step: Any, *, fresh_inputs: bool
                 ) -> Outcome | None:
    """Run one domain step for a Workspace with its status read fresh and written
    before the per-workspace lock is released; its outcome (None when the Workspace
    is gone).

    Kopf's own patch is applied only after a handler returns, i.e. after the lock is
    gone; the next trigger (timer or change) would then start from a stale status and
    overwrite what this one wrote. Reading and writing status inside the lock keeps
    every reconcile working on the latest status. The read is skipped when `body`
    (Kopf's, kept current by its watch) is the version this process last read or
    wrote (workspace_versions.py).

    `fresh_inputs`: the class and its Secrets are read from the apiserver, as after a
    change to the Workspace; polls and retries reuse what was read moments ago.
    """
    rt = runtime_of(memo)
    ref = WorkspaceRef.from_body(body)
    async with rt.lock(ref.uid):
        fresh = (rt.versions.current(ref.uid, body)
                 or await rt.kube.get_workspace(ref.namespace, ref.name))
        if fresh is None or (fresh.get("metadata") or {}).get("uid") != ref.uid:
            metrics.workspace_gone(ref.uid)
            return None  # deleted (or replaced by a namesake) meanwhile
        rt.versions.saw(ref.uid, version_of(fresh))
        started = time.monotonic()
        ref = WorkspaceRef.from_body(fresh)
        draft = StatusDraft.begin(fresh.get("status"), rt.clock(), ref.generation)
        visit = Visit(ref=ref, body=fresh, status=draft, runtime=rt, emit=_emitter(body),
                      fresh_inputs=fresh_inputs)
        result = "error"
        try:
            outcome: Outcome = await step(visit)
            result = "done" if outcome.requeue is None else "requeue"
        finally:
            # Even when a step fails, what happened before it (e.g. a created server's
            # id) must reach status.
            changes = draft.patch()
            if changes:
                rt.versions.forget(ref.uid)  # unknown until the write answers
                rt.versions.saw(ref.uid, await rt.kube.patch_workspace_status(
                    ref.namespace, ref.name, changes))
            metrics.workspace_seen(ref.uid, draft)
            metrics.RECONCILE_SECONDS.labels(getattr(step, "__name__", metrics.OTHER),
                                             result).observe(time.monotonic() - started)
    await rt.close_stale_clients()
    return outcome


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE, field="spec")
@kopf.on.update(*RESOURCE, field="metadata.annotations")
async def workspace_changed(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    await _run(body, memo, workspace.reconcile, fresh_inputs=retry == 0)


@kopf.timer(*RESOURCE, interval=SETTINGS.poll_interval,
            initial_delay=min(5.0, SETTINGS.poll_interval))
async def workspace_tick(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if body.get("metadata", {}).get("deletionTimestamp"):
        return
    rt, uid = runtime_of(memo), WorkspaceRef.from_body(body).uid
    if rt.watch_coverage.covers(uid):
        return  # its agent watcher reconciled it within the poll interval
    if rt.holds.holding(uid, body.get("metadata", {}).get("generation")):
        return  # a long wait of this spec is not over
    await _run(body, memo, workspace.reconcile, fresh_inputs=False)


def _has_agent(body: kopf.Body, **_: Any) -> bool:
    endpoint = (body.get("status") or {}).get("agentEndpoint") or {}
    return bool(endpoint.get("url")) and not body.get("metadata", {}).get("deletionTimestamp")


# On a stop the daemon ends by itself: at once from a held long-poll, after the reconcile
# it is running otherwise. Kopf cancels it only after the backoff, so that a reconcile is
# not cut off before it writes status.
@kopf.daemon(*RESOURCE, when=_has_agent, cancellation_backoff=60.0, cancellation_timeout=30.0)
async def workspace_agent_watch(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped,
                                **_: Any) -> None:
    """One long-poll on the workspace's agent while status names one; stopped when the
    endpoint leaves status (the server is gone), on delete and on operator exit."""
    rt = runtime_of(memo)
    uid = WorkspaceRef.from_body(body).uid

    async def reconcile() -> float | None:
        outcome = await _visit(body, memo, workspace.reconcile, fresh_inputs=False)
        return outcome.requeue if outcome is not None else None

    await agent_watch.watch(uid, agent=lambda: rt.watchable_agent(uid), reconcile=reconcile,
                            coverage=rt.watch_coverage, bound=SETTINGS.poll_interval,
                            stopped=stopped)


@kopf.on.delete(GROUP, VERSION, "namespacedworkspaceclasses")
async def namespaced_class_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A tenant's class goes only once no Workspace names it, and lets go of its
    Secrets then (reconcile/class_protection.py): deleting a namespace must not take the
    credentials its Workspaces' servers are deleted with."""
    rt = runtime_of(memo)
    meta = body.get("metadata") or {}
    waiting = await class_protection.release(rt.kube, meta.get("namespace", ""),
                                             meta.get("name", ""), body.get("spec"))
    if waiting is not None:
        raise kopf.TemporaryError(waiting, delay=SETTINGS.poll_interval)


@kopf.on.delete(*RESOURCE)
async def workspace_deleted(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    await _run(body, memo, workspace.finalize, fresh_inputs=retry == 0,
               hold_long_waits=False)
    runtime_of(memo).forget(WorkspaceRef.from_body(body).uid)
    metrics.workspace_gone(WorkspaceRef.from_body(body).uid)


async def _image_visit(body: kopf.Body, memo: kopf.Memo, *, deleting: bool = False
                       ) -> float | None:
    rt = runtime_of(memo)
    meta = body.get("metadata") or {}
    uid = meta.get("uid", "")
    async with rt.lock(uid):
        return await workspace_image.visit(
            rt.kube, rt.servers, rt.settings.namespace, meta.get("name", ""), uid,
            rt.clock(), _emitter(body), deleting=deleting)


@kopf.on.resume(*IMAGES)
@kopf.on.create(*IMAGES)
@kopf.on.update(*IMAGES, field="spec")
async def image_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Bake (or adopt) the image's current revision, step by step until it is Ready."""
    delay = await _image_visit(body, memo)
    if delay is not None:
        raise kopf.TemporaryError("baking", delay=delay)


@kopf.timer(*IMAGES, interval=IMAGE_RECHECK, initial_delay=IMAGE_RECHECK)
async def image_tick(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A Ready image is checked now and then: a snapshot deleted by hand is baked again."""
    if not (body.get("metadata") or {}).get("deletionTimestamp"):
        await _image_visit(body, memo)


@kopf.on.delete(*IMAGES)
async def image_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Its builders and snapshots go with it (a protected snapshot stays)."""
    delay = await _image_visit(body, memo, deleting=True)
    if delay is not None:
        raise kopf.TemporaryError("cleaning up", delay=delay)
    runtime_of(memo).forget((body.get("metadata") or {}).get("uid", ""))


def _has_pool(body: kopf.Body, **_: Any) -> bool:
    """A class with a warm pool, or with pool servers left from one (status says)."""
    size = ((body.get("spec") or {}).get("warmPool") or {}).get("size") or 0
    return bool(size) or bool((body.get("status") or {}).get("warmPool"))


@kopf.on.resume(*CLASSES, when=_has_pool)
@kopf.on.create(*CLASSES, when=_has_pool)
@kopf.on.update(*CLASSES, field="spec", when=_has_pool)
async def class_pool_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Fill, refresh or shrink the class's warm pool; looked at again soon while it
    fills, then by the timer."""
    delay = await warm_pool.visit(runtime_of(memo), body, _emitter(body))
    if delay is not None and delay < warm_pool.POLL_STEADY:
        raise kopf.TemporaryError("warm pool filling", delay=delay)


@kopf.timer(*CLASSES, interval=POOL_TICK, initial_delay=POOL_TICK, when=_has_pool)
async def class_pool_tick(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Refill after claims, mark booted servers ready, replace stuck ones."""
    if not (body.get("metadata") or {}).get("deletionTimestamp"):
        await warm_pool.visit(runtime_of(memo), body, _emitter(body))


@kopf.on.delete(*CLASSES, when=_has_pool)
async def class_pool_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Every pool server of the class goes with it (their Secrets are the class's)."""
    delay = await warm_pool.visit(runtime_of(memo), body, _emitter(body), deleting=True)
    if delay is not None:
        raise kopf.TemporaryError("deleting warm-pool servers", delay=delay)
