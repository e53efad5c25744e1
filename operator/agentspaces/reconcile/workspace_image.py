"""A WorkspaceImage's bake: builder server -> it powers itself off -> snapshot ->
builder deleted -> superseded snapshots deleted. And its cleanup on delete.

Every step is found again from the cloud, not from status: snapshots and builders carry
the image's uid and revision as labels, a builder's name is deterministic, so a restart
at any point adopts what was made and creates nothing twice. The snapshot workspaces
boot (status.imageId) stays until a newer revision is available; a snapshot someone
protected is never deleted. docs/images.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from agentspaces.api.durations import parse_duration
from agentspaces.api.enums import ConditionStatus
from agentspaces.api.image_model import (
    BakeFailure,
    BuilderStatus,
    WorkspaceImageSpec,
    WorkspaceImageStatus,
)
from agentspaces.api.status import Condition
from agentspaces.clouds.errors import CloudError
from agentspaces.clouds.hetzner import ServerInfo, ServerProvider, ServerRequest
from agentspaces.clouds.hetzner_images import ImageInfo, ImageProvider
from agentspaces.kube import KubeError, KubePort
from agentspaces.reconcile import image_policy as policy
from agentspaces.vmconfig.bake import render_bake_user_data

log = logging.getLogger(__name__)

Emit = Callable[[str, str, str], None]
READY = "Ready"
POLL_BAKING = 20.0
POLL_SNAPSHOT = 10.0
RETRY_PROBLEM = 60.0


class ImageCloud(ServerProvider, ImageProvider, Protocol):
    """The one Hetzner adapter, seen as both ports."""


@dataclass
class ImageVisit:
    name: str
    uid: str
    spec_raw: Mapping[str, Any]
    status: WorkspaceImageStatus
    kube: KubePort
    cloud: Callable[[str, str], ImageCloud]
    """(token, endpoint) -> the project's adapter."""
    operator_namespace: str
    now: datetime
    emit: Emit


def _condition(status: WorkspaceImageStatus, ok: bool, reason: str, message: str,
               now: datetime) -> None:
    value = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
    for cond in status.conditions:
        if cond.type == READY:
            if cond.status != value:
                cond.last_transition_time = now
            cond.status, cond.reason, cond.message = value, reason, message
            return
    status.conditions.append(Condition(type=READY, status=value, reason=reason,
                                       message=message, last_transition_time=now))


async def _token(visit: ImageVisit, spec: WorkspaceImageSpec) -> str | tuple[str, str]:
    """The project's token, or (reason, message)."""
    ref = spec.hetzner.token_secret_ref
    namespace = ref.namespace or visit.operator_namespace
    try:
        secret = await visit.kube.read_secret(namespace, ref.name)
    except KubeError as err:
        return "SecretNotFound", f"cannot read Secret {namespace}/{ref.name}: {err.status}"
    if secret is None:
        return "SecretNotFound", f"Secret {namespace}/{ref.name} not found"
    value = (secret.data.get(ref.key) or "").strip()
    if not value:
        return "SecretKeyMissing", f"Secret {namespace}/{ref.name} has no key {ref.key!r}"
    return value


async def _project(visit: ImageVisit) -> tuple[WorkspaceImageSpec, ImageCloud, str] | float:
    """The spec, the project's adapter and fingerprint; or a retry delay once the Ready
    condition says what is wrong."""
    try:
        spec = WorkspaceImageSpec.model_validate(visit.spec_raw)
    except ValueError as err:
        _condition(visit.status, False, "SpecInvalid", str(err)[:1024], visit.now)
        return RETRY_PROBLEM
    token = await _token(visit, spec)
    if isinstance(token, tuple):
        _condition(visit.status, visit.status.image_id is not None, *token, visit.now)
        return RETRY_PROBLEM
    endpoint = spec.hetzner.endpoint
    return spec, visit.cloud(token, endpoint), policy.project_fingerprint(endpoint, token)


async def _builders(cloud: ImageCloud, uid: str) -> list[ServerInfo]:
    return [s for s in await cloud.list_managed() if policy.is_builder_of(s.labels, uid)]


async def _delete_builders(visit: ImageVisit, cloud: ImageCloud,
                           keep: int | None = None) -> None:
    for builder in await _builders(cloud, visit.uid):
        if builder.id != keep:
            await cloud.delete(builder.id)
            visit.emit("Normal", "BuilderDeleted",
                       f"deleted builder server {builder.id} ({builder.name})")


async def _collect(visit: ImageVisit, cloud: ImageCloud, snapshots: list[ImageInfo],
                   keep: int) -> None:
    """Delete the superseded snapshots: every one of ours but `keep` that is finished and
    not protected (a protected one is someone's decision to keep it)."""
    for old in snapshots:
        if old.id == keep or old.status == "creating":
            continue
        if old.protected:
            log.info("WorkspaceImage %s: snapshot %s is protected; left", visit.name, old.id)
            continue
        await cloud.delete_image(old.id)
        visit.emit("Normal", "SnapshotDeleted", f"deleted superseded snapshot {old.id} "
                   f"(revision {old.labels.get(policy.LABEL_REVISION)})")


def _ready(visit: ImageVisit, image: ImageInfo, rev: str, project: str, profile: str) -> None:
    status = visit.status
    if status.image_id != image.id:
        started = status.builder.created_at if status.builder is not None else None
        status.built_at = visit.now
        status.bake_seconds = (int((visit.now - started).total_seconds())
                               if started is not None else None)
        visit.emit("Normal", "ImageReady", f"snapshot {image.id} (revision {rev}) is ready")
    status.image_id, status.revision, status.os_profile = image.id, rev, profile
    status.project = project
    status.image_size_gb = image.image_size
    status.disk_size_gb = int(image.disk_size)
    status.builder, status.failure, status.phase = None, None, "Ready"
    status.checked_at = visit.now
    _condition(status, True, "Baked", f"snapshot {image.id}, revision {rev}", visit.now)


async def reconcile(visit: ImageVisit) -> float | None:
    """One step of the bake; the delay until the next, None when the image is current."""
    found = await _project(visit)
    if isinstance(found, float):
        return found
    spec, cloud, project = found
    try:
        return await _step(visit, spec, cloud, project)
    except CloudError as err:
        _condition(visit.status, visit.status.image_id is not None, "CloudError",
                   f"Hetzner: {err}"[:1024], visit.now)
        return RETRY_PROBLEM


async def _step(visit: ImageVisit, spec: WorkspaceImageSpec, cloud: ImageCloud,
                project: str) -> float | None:
    status, now = visit.status, visit.now
    rev = policy.revision(spec)
    profile = spec.builder.base_image
    snapshots = await cloud.list_snapshots(policy.ours_selector(visit.uid))
    current = [s for s in snapshots if s.labels.get(policy.LABEL_REVISION) == rev]
    available = [s for s in current if s.available]
    if available:
        image = max(available, key=lambda s: s.id)
        settled = status.phase == "Ready" and status.builder is None \
            and status.image_id == image.id and len(snapshots) == 1
        _ready(visit, image, rev, project, profile)
        if not settled:  # a Ready image's recheck costs one list call
            await _delete_builders(visit, cloud)
            await _collect(visit, cloud, snapshots, keep=image.id)
        return None
    if current:
        status.phase = "Snapshotting"
        return POLL_SNAPSHOT
    if status.image_id is not None and not any(s.id == status.image_id for s in snapshots):
        visit.emit("Warning", "SnapshotMissing",
                   f"snapshot {status.image_id} is gone from the project; baking again")
        status.image_id = status.revision = status.image_size_gb = None
    usable = status.image_id is not None  # an older revision boots while this one bakes
    name = policy.builder_name(visit.name, rev)
    builder = await cloud.find_by_name(name)
    if builder is not None and not policy.is_builder_of(builder.labels, visit.uid):
        _condition(status, usable, "BuilderNameTaken",
                   f"a server named {name} exists and is not this image's builder", now)
        status.phase = "Failed"
        return RETRY_PROBLEM
    if builder is None:
        failure = status.failure
        if failure is not None and failure.revision == rev and now < failure.retry_at:
            status.phase = "Failed"
            return (failure.retry_at - now).total_seconds()
        await _delete_builders(visit, cloud)  # of an earlier revision
        builder = await _create_builder(cloud, visit, spec, rev, name)
        status.builder = BuilderStatus(id=builder.id, name=builder.name, revision=rev,
                                       created_at=builder.created or now)
        status.phase = "Baking"
        _condition(status, usable, "Baking" if not usable else "Rebaking",
                   f"builder server {builder.id} is installing revision {rev}", now)
        visit.emit("Normal", "BakeStarted", f"builder server {builder.id} ({name}) for "
                                            f"revision {rev}")
        return POLL_BAKING
    if status.builder is None or status.builder.id != builder.id:
        status.builder = BuilderStatus(id=builder.id, name=builder.name, revision=rev,
                                       created_at=builder.created or now)
    if builder.status == "off":
        made = await cloud.create_snapshot(
            builder.id, f"agentspaces WorkspaceImage {visit.name} revision {rev}",
            policy.image_labels(visit.name, visit.uid, rev))
        status.phase = "Snapshotting"
        visit.emit("Normal", "SnapshotStarted",
                   f"snapshot {made.id} of builder server {builder.id}")
        return POLL_SNAPSHOT
    if policy.timed_out(builder.created, now, parse_duration(spec.bake_timeout)):
        await cloud.delete(builder.id)
        count = (status.failure.count + 1
                 if status.failure is not None and status.failure.revision == rev else 1)
        retry_at = now + policy.retry_delay(count)
        message = (f"builder server {builder.id} did not power off within "
                   f"{spec.bake_timeout}: deleted; the next bake starts at "
                   f"{retry_at.isoformat()}")
        status.failure = BakeFailure(revision=rev, count=count, retry_at=retry_at,
                                     message=message)
        status.builder, status.phase = None, "Failed"
        _condition(status, usable, "BakeTimedOut", message, now)
        visit.emit("Warning", "BakeTimedOut", message)
        return (retry_at - now).total_seconds()
    status.phase = "Baking"
    return POLL_BAKING


async def _create_builder(cloud: ImageCloud, visit: ImageVisit, spec: WorkspaceImageSpec,
                          rev: str, name: str) -> ServerInfo:
    request = ServerRequest(
        name=name, server_type=spec.builder.type, location=spec.builder.location,
        image=spec.builder.base_image,
        labels=policy.builder_labels(visit.name, visit.uid, rev),
        user_data=render_bake_user_data(spec.builder.base_image))
    try:
        return await cloud.create(request)
    except CloudError as err:
        if err.code != "uniqueness_error":
            raise
        existing = await cloud.find_by_name(name)  # a lost response: ours if labelled so
        if existing is None or not policy.is_builder_of(existing.labels, visit.uid):
            raise
        return existing


async def cleanup(visit: ImageVisit) -> float | None:
    """On delete: every builder and unprotected snapshot of this image; None when done,
    else the delay before trying again (the project cannot be reached yet)."""
    found = await _project(visit)
    if isinstance(found, float):
        visit.emit("Warning", "CleanupBlocked",
                   "cannot reach the Hetzner project to delete this image's snapshots; "
                   "retrying (remove the finalizer to leave them)")
        return found
    _, cloud, _ = found
    try:
        await _delete_builders(visit, cloud)
        for image in await cloud.list_snapshots(policy.ours_selector(visit.uid)):
            if image.protected:
                visit.emit("Warning", "SnapshotKept",
                           f"snapshot {image.id} is protected: left in the project")
                continue
            await cloud.delete_image(image.id)
    except CloudError as err:
        log.warning("WorkspaceImage %s cleanup: %s", visit.name, err)
        return RETRY_PROBLEM
    return None


def as_image_cloud(provider: ServerProvider) -> ImageCloud:
    """The Hetzner adapter implements both ports (clouds/hetzner.py)."""
    return cast(ImageCloud, provider)


async def visit(kube: KubePort, cloud: Callable[[str, str], ServerProvider],
                operator_namespace: str, name: str, uid: str, now: datetime, emit: Emit,
                *, deleting: bool = False) -> float | None:
    """Read the image afresh, run one reconcile (or the cleanup) and write its status;
    the delay until the next visit, None when there is nothing more to do. Callers hold
    the image's lock, so a timer and a change never interleave."""
    body = await kube.get_workspace_image(name)
    if body is None or (body.get("metadata") or {}).get("uid") != uid:
        return None  # gone, or replaced by a namesake meanwhile
    status = WorkspaceImageStatus.model_validate(body.get("status") or {})
    before = status.model_dump(by_alias=True, mode="json")
    image_visit = ImageVisit(name=name, uid=uid, spec_raw=body.get("spec") or {},
                             status=status, kube=kube,
                             cloud=lambda token, endpoint: as_image_cloud(cloud(token, endpoint)),
                             operator_namespace=operator_namespace, now=now, emit=emit)
    try:
        if deleting:
            return await cleanup(image_visit)
        return await reconcile(image_visit)
    finally:
        after = status.model_dump(by_alias=True, mode="json")
        if after != before and not deleting:
            await kube.patch_workspace_image_status(name, after)
