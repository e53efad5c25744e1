"""A project's own images in the Hetzner emulator: snapshots (and backups) made with
POST /servers/{id}/actions/create_image, shaped as the real `image` object.

An image is "creating" while its action runs (the state's `snapshot_seconds`, or
`action_seconds` when unset) and "available" after; its server stays locked meanwhile.
Each project sees only its own images, next to the shared system catalogue. Ids are
unique across projects (the state's id block), as image ids are global at Hetzner.
Where the API reference names no error code (changing a system image, making a server
from a too big image), the emulator answers forbidden and invalid_input.

`emit(event, image)` tells VM backends (through the emulator's hooks) that an image was
made ("image_created", at the create_image call: the server's disk as it is then) or is
gone ("image_deleted"); the emulator wires it to its hook dispatcher.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

from . import hetzner_catalog as catalog
from .hetzner_errors import ApiError, invalid_input, locked, not_found
from .hetzner_labels import label_errors
from .hetzner_state import CloudState, now_iso

IMAGE_TYPES = ("snapshot", "backup")
ImageEvent = Callable[[str, dict[str, Any]], None]


def _no_listener(event: str, image: dict[str, Any]) -> None:
    """`ImageBook.emit` until an emulator wires its hooks."""


def _not_own(image_id: int) -> ApiError:
    return ApiError(403, "forbidden", f"image {image_id} is a system image")


class ImageBook:
    """The project's snapshots and backups; shares the servers' lock and actions."""

    def __init__(self, state: CloudState) -> None:
        self._state = state
        self._images: dict[int, dict[str, Any]] = {}
        # Above every catalogue id and below the action ids (hetzner_state.py).
        self._ids = itertools.count(350_000_001 + state.id_block * 100_000)
        self.emit: ImageEvent = _no_listener

    # -- reading ---------------------------------------------------------------------
    def all(self) -> list[dict[str, Any]]:
        """Every image the project can see: the system catalogue, then its own."""
        with self._state.lock:
            own = [copy.deepcopy(i) for _, i in sorted(self._images.items())]
        return catalog.image_dicts() + own

    def own(self) -> dict[int, dict[str, Any]]:
        with self._state.lock:
            return copy.deepcopy(self._images)

    def get(self, image_id: int) -> dict[str, Any]:
        image = next((i for i in self.all() if i["id"] == image_id), None)
        if image is None:
            raise not_found("image", image_id)
        return image

    def for_server(self, ref: object, architecture: str) -> dict[str, Any] | None:
        """The image a new server names: an available own image by id, else a system
        image (catalog.find_image). One still creating is as unknown as a missing one."""
        with self._state.lock:
            image = next((i for i in self._images.values()
                          if str(i["id"]) == str(ref) and i["status"] == "available"), None)
            if image is not None:
                return copy.deepcopy(image)
        return catalog.find_image(ref, architecture)

    def _require_own(self, image_id: int) -> dict[str, Any]:
        image = self._images.get(image_id)
        if image is not None:
            return image
        if any(i["id"] == image_id for i in catalog.image_dicts()):
            raise _not_own(image_id)
        raise not_found("image", image_id)

    # -- writing ---------------------------------------------------------------------
    def create(self, server_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """{image, action} of POST /servers/{id}/actions/create_image."""
        kind = body.get("type", "snapshot")
        description, labels = body.get("description"), body.get("labels") or {}
        errors: dict[str, list[str]] = {}
        if kind not in IMAGE_TYPES:
            errors["type"] = [f"must be one of {', '.join(IMAGE_TYPES)}"]
        if description is not None and not isinstance(description, str):
            errors["description"] = ["must be a string"]
        if label_errors(labels):
            errors["labels"] = label_errors(labels)
        if errors:
            raise invalid_input(errors)
        state = self._state
        seconds = (state.snapshot_seconds if state.snapshot_seconds is not None
                   else state.action_seconds)
        with state.lock:
            image_id = next(self._ids)

            def done() -> None:
                made = self._images.get(image_id)
                if made is not None:
                    made.update(status="available", image_size=state.snapshot_size_gb)
            server, action = state.locking_action(server_id, "create_image", seconds, done)
            source = server["image"] or {}
            created = now_iso()
            image: dict[str, Any] = {
                "id": image_id, "type": kind, "status": "creating", "name": None,
                "description": description or f"{server['name']}-{created}",
                "image_size": None, "disk_size": server["primary_disk_size"],
                "created": created,
                "created_from": {"id": server["id"], "name": server["name"]},
                "bound_to": server["id"] if kind == "backup" else None,
                "os_flavor": source.get("os_flavor", "unknown"),
                "os_version": source.get("os_version"), "rapid_deploy": False,
                "protection": {"delete": False}, "deprecated": None, "deleted": None,
                "labels": dict(labels),
                "architecture": server["server_type"]["architecture"],
            }
            self._images[image_id] = image
            # Under the lock: a server created from the image, or the source's delete,
            # reaches the hooks after this.
            self.emit("image_created", copy.deepcopy(image))
            return {"image": copy.deepcopy(image), "action": action}

    def update(self, image_id: int, body: dict[str, Any]) -> dict[str, Any]:
        description, labels, kind = body.get("description"), body.get("labels"), body.get("type")
        errors: dict[str, list[str]] = {}
        if description is not None and not isinstance(description, str):
            errors["description"] = ["must be a string"]
        if labels is not None and label_errors(labels):
            errors["labels"] = label_errors(labels)
        if kind is not None and kind != "snapshot":
            errors["type"] = ["can only be converted to snapshot"]
        if errors:
            raise invalid_input(errors)
        with self._state.lock:
            image = self._require_own(image_id)
            if description is not None:
                image["description"] = description
            if labels is not None:
                image["labels"] = dict(labels)
            if kind == "snapshot":  # a backup kept: no longer bound to its server
                image.update(type="snapshot", bound_to=None)
            return copy.deepcopy(image)

    def delete(self, image_id: int) -> None:
        with self._state.lock:
            image = self._require_own(image_id)
            if image["protection"]["delete"]:
                raise ApiError(403, "protected", f"image {image_id} is delete protected")
            if image["status"] == "creating":
                raise locked("image", image_id)
            self.emit("image_deleted", self._images.pop(image_id))

    def change_protection(self, image_id: int, body: dict[str, Any]) -> dict[str, Any]:
        delete = body.get("delete")
        if delete is not None and not isinstance(delete, bool):
            raise invalid_input({"delete": ["must be a boolean"]})
        with self._state.lock:
            image = self._require_own(image_id)
            if image["type"] != "snapshot":
                raise ApiError(403, "forbidden", "only snapshots can be protected")
            if delete is not None:
                image["protection"]["delete"] = delete
            return self._state.finished_action("change_protection",
                                               [{"id": image_id, "type": "image"}])

    def forget_server(self, server_id: int) -> None:
        """A deleted server takes its backups with it; snapshots stay."""
        with self._state.lock:
            for image_id in [i for i, image in self._images.items()
                             if image["bound_to"] == server_id]:
                self.emit("image_deleted", self._images.pop(image_id))
