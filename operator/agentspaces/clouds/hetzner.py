"""Hetzner Cloud: the server port and its adapter over the `hcloud` library.

The adapter is thin: it maps hcloud objects to `ServerInfo` and hcloud errors to the
three kinds the reconciler cares about (rate limited, transient, permanent). hcloud is
synchronous, so every call runs in a worker thread; its own retry loop (which sleeps
and also retries POSTs) is turned off because the reconciler requeues through Kopf
with backoff and treats `uniqueness_error` after a lost response as "adopt ours".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

LABEL_WORKSPACE_UID = "agentspaces.dev/workspace-uid"
LABEL_WORKSPACE = "agentspaces.dev/workspace"
LABEL_NAMESPACE = "agentspaces.dev/namespace"
LABEL_MANAGED_BY = "agentspaces.dev/managed-by"
MANAGED_BY = "agentspaces"


class CloudError(Exception):
    """A cloud call failed. `code` is the provider's error code, never a secret."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class CloudRateLimited(CloudError):
    pass


class CloudTransient(CloudError):
    pass


class CloudPermanent(CloudError):
    pass


@dataclass(frozen=True)
class ServerInfo:
    id: int
    name: str
    status: str
    ipv4: str | None
    ipv6: str | None
    server_type: str
    location: str
    labels: Mapping[str, str] = field(default_factory=dict)
    created: str | None = None

    @property
    def workspace_uid(self) -> str | None:
        return self.labels.get(LABEL_WORKSPACE_UID)


@dataclass(frozen=True)
class ServerRequest:
    name: str
    server_type: str
    location: str
    image: str
    labels: Mapping[str, str]
    user_data: str


class ServerProvider(Protocol):
    async def get(self, server_id: int) -> ServerInfo | None: ...
    async def find_by_uid(self, uid: str) -> list[ServerInfo]: ...
    async def find_by_name(self, name: str) -> ServerInfo | None: ...
    async def create(self, request: ServerRequest) -> ServerInfo: ...
    async def delete(self, server_id: int) -> None: ...
    async def list_managed(self) -> list[ServerInfo]: ...
