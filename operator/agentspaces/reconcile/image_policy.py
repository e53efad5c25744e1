"""Pure rules of a WorkspaceImage: what identifies a bake, what is ours in the project,
when a bake has failed and when it is retried, and whether a workspace may boot it.

No I/O: the reconcile (reconcile/workspace_image.py) and the server step's boot image
(reconcile/boot_image.py) call these with what they read.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agentspaces.api.image_model import WorkspaceImageSpec, WorkspaceImageStatus
from agentspaces.clouds.hetzner import LABEL_MANAGED_BY, MANAGED_BY, class_label
from agentspaces.vmconfig.bake import recipe_version

LABEL_IMAGE = "agentspaces.dev/workspace-image"
LABEL_IMAGE_UID = "agentspaces.dev/image-uid"
LABEL_REVISION = "agentspaces.dev/image-revision"
LABEL_ROLE = "agentspaces.dev/role"
BUILDER_ROLE = "image-builder"
RETRY_FIRST = timedelta(minutes=10)
RETRY_MAX = timedelta(hours=6)


def revision(spec: WorkspaceImageSpec) -> str:
    """What a baked image holds: the bake recipe of its base image's profile (bootstrap,
    packages, Claude Code pin), the base image, and the builder type (its disk is the
    image's). The location is not part of it: a snapshot boots in any location."""
    facts = {"recipe": recipe_version(spec.builder.base_image),
             "base": spec.builder.base_image, "type": spec.builder.type}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


def project_fingerprint(endpoint: str, token: str) -> str:
    """Names a Hetzner project without revealing its token: an image made with one token
    is offered only to classes whose token and endpoint are the same."""
    return hashlib.sha256(f"{endpoint}\n{token}".encode()).hexdigest()[:16]


def builder_name(name: str, rev: str) -> str:
    """The builder's server name: deterministic per image and revision (a restart finds
    it again), a valid hostname of at most 63 characters."""
    stem = re.sub(r"[^a-z0-9-]", "-", name.lower())[:44].strip("-") or "image"
    return f"wsi-{stem}-{rev[:8]}"


def image_labels(name: str, uid: str, rev: str) -> dict[str, str]:
    """Owner labels on the snapshots and builders of one WorkspaceImage."""
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_IMAGE: class_label(name),
            LABEL_IMAGE_UID: uid, LABEL_REVISION: rev}


def builder_labels(name: str, uid: str, rev: str) -> dict[str, str]:
    return {**image_labels(name, uid, rev), LABEL_ROLE: BUILDER_ROLE}


def ours_selector(uid: str) -> str:
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_IMAGE_UID}={uid}"


def is_builder_of(labels: Mapping[str, str], uid: str) -> bool:
    return labels.get(LABEL_IMAGE_UID) == uid and labels.get(LABEL_ROLE) == BUILDER_ROLE


def timed_out(created: datetime | None, now: datetime, timeout: timedelta) -> bool:
    """A builder still running after the bake timeout has failed (it powers itself off
    only after every step succeeded)."""
    return created is not None and now - created >= timeout


def retry_delay(failures: int) -> timedelta:
    """10 min after the first failed bake of a revision, doubling up to 6 h."""
    return min(RETRY_FIRST * (2 ** max(failures - 1, 0)), RETRY_MAX)


@dataclass(frozen=True)
class BootChoice:
    image_id: int | None
    os_profile: str | None
    why: str
    """For the event: what the server boots and why."""


def boot_choice(name: str, body: Mapping[str, Any] | None, project: str) -> BootChoice:
    """Whether a new server of a class naming WorkspaceImage `name` boots its snapshot
    (`image_id`) or, with `image_id` None, the class's own image, and why."""
    if body is None:
        return BootChoice(None, None, f"WorkspaceImage {name} not found")
    status = WorkspaceImageStatus.model_validate(body.get("status") or {})
    if status.image_id is None or status.os_profile is None:
        phase = status.phase or "Pending"
        return BootChoice(None, None, f"WorkspaceImage {name} has no image yet ({phase})")
    if status.project != project:
        return BootChoice(None, None, f"WorkspaceImage {name} is in another Hetzner project "
                                      "than the class")
    return BootChoice(status.image_id, status.os_profile,
                      f"WorkspaceImage {name} (snapshot {status.image_id}, revision "
                      f"{status.revision})")
