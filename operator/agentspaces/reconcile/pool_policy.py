"""A class's warm pool, as pure decisions: the names and labels of its servers, which of
them to create or delete, when one is ready, and which workspaces may claim one.

A pool has `size` slots. Slot i's server has a deterministic name and carries the slot,
the class and what it booted as labels, so a restart finds every one again and a lost
create response is adopted by name. A server is the pool's exactly while it carries
the pool label: a claim replaces every label (and the name) in one request, after which
it is the workspace's and the slot is empty again. docs/warm-pool.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from agentspaces.api.types import ServerSettings
from agentspaces.clouds.hetzner import (
    LABEL_CLASS,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    ServerInfo,
    class_label,
)

LABEL_POOL = "agentspaces.dev/pool"
LABEL_SLOT = "agentspaces.dev/pool-slot"
LABEL_BOOT = "agentspaces.dev/pool-boots"
"""What the server booted (a snapshot id or an image name): a pool of another boot is
replaced, so every waiting server runs the class's current image."""
MAX_CREATES_PER_VISIT = 5
"""Creates per visit, so refilling a large pool spreads over the Hetzner budget."""
BOOT_TIMEOUT = timedelta(minutes=20)
"""A pool server whose loader has not answered by then is replaced (a cold boot under
load takes minutes; longer means it will not come up)."""
SECRET_PREFIX = "agentspaces-pool-"


def slot_name(class_name: str, slot: int) -> str:
    """`pool-<class>-<slot>`: a valid server name (≤ 63 characters) for any class name."""
    stem = class_name if len(class_name) <= 48 else \
        f"{class_name[:39].rstrip('.-')}-{hashlib.sha256(class_name.encode()).hexdigest()[:8]}"
    return f"pool-{stem}-{slot}"


def secret_name(class_name: str, slot: int) -> str:
    """The Secret (operator namespace) with slot `slot`'s agent credentials."""
    return SECRET_PREFIX + slot_name(class_name, slot)


def selector(class_name: str) -> str:
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_POOL}={class_label(class_name)}"


def boot_label(image: str) -> str:
    """A label value for what a server boots: an image name or a snapshot id fit as they
    are (≤ 63 characters of [a-z0-9.-])."""
    return image[:63]


def labels(class_name: str, slot: int, image: str) -> dict[str, str]:
    value = class_label(class_name)
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_CLASS: value, LABEL_POOL: value,
            LABEL_SLOT: str(slot), LABEL_BOOT: boot_label(image)}


def slot_of(class_name: str, server: ServerInfo) -> int | None:
    """The slot of a server of this class's pool; None if it is not one (or its labels
    and name disagree, which no server we made has)."""
    if server.labels.get(LABEL_POOL) != class_label(class_name):
        return None
    text = server.labels.get(LABEL_SLOT, "")
    if not text.isdigit() or server.name != slot_name(class_name, int(text)):
        return None
    return int(text)


@dataclass(frozen=True)
class PoolPlan:
    keep: Mapping[int, ServerInfo]
    """Slot -> the server that stays in it."""
    create: tuple[int, ...]
    delete: tuple[ServerInfo, ...]
    reasons: Mapping[int, str]
    """Server id -> why it goes."""


def plan(class_name: str, size: int, want: ServerSettings, boots: str,
         servers: Iterable[ServerInfo], ready: set[int], now: datetime,
         unusable: Mapping[int, str] | None = None) -> PoolPlan:
    """Which servers stay, which go and which slots get a new one.

    A server goes when its slot is beyond `size`, it differs from what the pool boots now
    (type, location, `boots`), it shares its slot with an older one, it is `unusable`
    (id -> why: its credentials are gone, its loader is past the claim) or it has not been
    ready within BOOT_TIMEOUT. Servers already deleting are left out of everything.
    """
    keep: dict[int, ServerInfo] = {}
    reasons: dict[int, str] = {}
    unusable = unusable or {}
    servers = list(servers)
    for server in sorted(servers, key=lambda s: s.id):
        if server.status == "deleting":
            continue
        slot = slot_of(class_name, server)
        if slot is None:
            continue  # not this pool's (the selector found it, the name disagrees)
        if slot >= size:
            reasons[server.id] = f"the pool shrank to {size}"
        elif (server.server_type, server.location) != (want.type, want.location) or \
                server.labels.get(LABEL_BOOT) != boot_label(boots):
            reasons[server.id] = "the class boots other servers now"
        elif slot in keep:
            reasons[server.id] = f"slot {slot} has server {keep[slot].id}"
        elif server.id in unusable:
            reasons[server.id] = unusable[server.id]
        elif server.id not in ready and server.created is not None and \
                now - server.created > BOOT_TIMEOUT:
            reasons[server.id] = (f"not ready {int(BOOT_TIMEOUT.total_seconds() // 60)} "
                                  "minutes after its create")
        else:
            keep[slot] = server
    gone = {s.id: s for s in servers if s.id in reasons}
    missing = [slot for slot in range(size) if slot not in keep]
    return PoolPlan(keep=keep, create=tuple(missing[:MAX_CREATES_PER_VISIT]),
                    delete=tuple(gone[i] for i in sorted(gone)), reasons=reasons)


def claimable(want: ServerSettings, server: ServerSettings, own_image: bool) -> bool:
    """Whether a workspace booting `server` may take one of a pool that boots `want`:
    the same type, location and image, and no image of its own."""
    return not own_image and (server.type, server.location, server.image) == \
        (want.type, want.location, want.image)
