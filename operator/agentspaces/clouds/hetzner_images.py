"""Hetzner snapshots: the image port the operator bakes workspace images through, and the
mapping of hcloud's image objects onto it. `HcloudServers` (clouds/hetzner.py) implements
the port; a snapshot's id is what a `ServerRequest.image` names to boot from it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from hcloud.images import BoundImage


@dataclass(frozen=True)
class ImageInfo:
    id: int
    description: str
    status: str
    """creating, available or unavailable."""
    labels: Mapping[str, str] = field(default_factory=dict)
    image_size: float | None = None
    """GB in Hetzner's storage (what a snapshot is billed by); None while creating."""
    disk_size: float = 0.0
    """GB of disk a server needs to boot from it."""
    created: datetime | None = None
    created_from: int | None = None
    """The server it was made from."""
    protected: bool = False
    """Delete protection: deleting it fails until this is lifted."""

    @property
    def available(self) -> bool:
        return self.status == "available"


class ImageProvider(Protocol):
    async def list_snapshots(self, label_selector: str) -> list[ImageInfo]: ...
    async def get_image(self, image_id: int) -> ImageInfo | None: ...
    async def create_snapshot(self, server_id: int, description: str,
                              labels: Mapping[str, str]) -> ImageInfo: ...
    async def delete_image(self, image_id: int) -> None: ...


def image_info(image: BoundImage) -> ImageInfo:
    source = image.created_from
    protection = image.protection
    return ImageInfo(
        id=int(image.id or 0),
        description=str(image.description or ""),
        status=str(image.status or ""),
        labels=dict(image.labels or {}),
        image_size=float(image.image_size) if image.image_size is not None else None,
        disk_size=float(image.disk_size or 0),
        created=image.created,
        created_from=int(source.id) if source is not None and source.id is not None else None,
        protected=bool(protection and protection.get("delete")),
    )
