"""WorkspaceImage: a Hetzner snapshot with the workspace software installed (spec), and
what the operator baked (status).

A cluster-scoped kind apart from the classes: an image belongs to one Hetzner project,
and any class of that project may boot from it (`server.workspaceImage`). docs/images.md.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from agentspaces.api.model import (
    ApiModel,
    Duration,
    DurationAtLeast,
    HetznerSpec,
    Location,
    ServerType,
)
from agentspaces.api.status import INT64, LIST_MAP, Condition, StatusModel, Timestamp

IMAGE_KIND = "WorkspaceImage"
IMAGE_PLURAL = "workspaceimages"

# The OS profiles whose bootstrap has a bake mode (vmconfig.bake.BAKE_PROFILES).
BakeProfileName = Literal["debian-13"]


class BuilderSpec(ApiModel):
    """The short-lived server the image is baked on."""

    type: ServerType = Field(
        "cx23", description="Its disk size becomes the image's: a workspace booting from "
                            "the image needs a server type with at least that disk.")
    location: Location = "fsn1"
    base_image: BakeProfileName = Field(
        "debian-13", description="The system image the software is installed on (an OS "
                                 "profile with a bake mode).")


class WorkspaceImageSpec(ApiModel):
    """Bake, keep current and garbage-collect one snapshot in a Hetzner project."""

    hetzner: HetznerSpec = Field(description="The project the snapshot is made in; classes "
                                             "of the same project can boot from it.")
    builder: BuilderSpec = Field(default_factory=BuilderSpec)
    bake_timeout: Annotated[Duration, DurationAtLeast("1m")] = Field(
        "45m", description="A builder that has not powered itself off by then failed: it "
                           "is deleted and the bake retried later.")


ImagePhase = Literal["Pending", "Baking", "Snapshotting", "Ready", "Failed"]


class BuilderStatus(StatusModel):
    id: int = Field(json_schema_extra=INT64)
    name: str
    revision: str
    created_at: Timestamp | None = Field(None, alias="createdAt")


class BakeFailure(StatusModel):
    revision: str = Field(description="The revision whose bake failed.")
    count: int = Field(description="Failed bakes of it in a row.")
    retry_at: Timestamp = Field(alias="retryAt", description="When the next bake starts.")
    message: str = Field(max_length=1024)


class WorkspaceImageStatus(StatusModel):
    """The snapshot workspaces boot from, and the bake in progress."""

    phase: ImagePhase | None = None
    revision: str | None = Field(
        None, description="What the image in imageId holds: a digest of the bake recipe "
                          "(bootstrap, packages, Claude Code pin), the base image and the "
                          "builder type.")
    image_id: int | None = Field(None, alias="imageId", json_schema_extra=INT64,
                                 description="The Hetzner snapshot id.")
    image_size_gb: float | None = Field(None, alias="imageSizeGB",
                                        description="Its compressed size (billed per GB).")
    disk_size_gb: int | None = Field(None, alias="diskSizeGB",
                                     description="The smallest disk a server booting it needs.")
    os_profile: str | None = Field(None, alias="osProfile",
                                   description="The user-data it boots with.")
    project: str | None = Field(None, description="A digest of the endpoint and token it "
                                                   "was made with: a class of another "
                                                   "project cannot boot it.")
    built_at: Timestamp | None = Field(None, alias="builtAt")
    bake_seconds: int | None = Field(None, alias="bakeSeconds",
                                     description="Builder created to snapshot available.")
    builder: BuilderStatus | None = None
    failure: BakeFailure | None = None
    checked_at: Timestamp | None = Field(None, alias="checkedAt",
                                         description="When the snapshot was last seen.")
    conditions: list[Condition] = Field(default_factory=list, max_length=8,
                                        json_schema_extra=LIST_MAP)
