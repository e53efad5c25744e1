"""What a WorkspaceClass names, read once for every workspace of the class.

Every reconcile resolves its class and the class's Secrets (Hetzner and DNS tokens,
storage keys, the encryption key). With 1,000 workspaces of one class polled every
30 s, reading them afresh each time is most of the operator's apiserver traffic and
CPU (docs/scale.md), for objects that rarely change. So a found class or class Secret
is kept for `max_age` seconds, and concurrent readers of one missing entry share one
request.

What is not kept: anything not found or unreadable (a class or Secret created after
its Workspace is seen at the next visit), and the Secrets a Workspace owns, which the
operator writes itself and reads through the port directly. A `fresh` read (the first
reconcile after a change to the Workspace, and any start or stop) always goes to the
apiserver and refreshes the entry, so a class edited just before its workspace is
applied or restarted is never served old.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from agentspaces.api.model import CLASS_KIND, NAMESPACED_CLASS_KIND
from agentspaces.kube import KubePort, SecretData

T = TypeVar("T")


class _Entries(Generic[T]):
    def __init__(self, max_age: float, monotonic: Callable[[], float]) -> None:
        self._max_age = max_age
        self._monotonic = monotonic
        self._kept: dict[tuple[str, ...], tuple[float, T]] = {}
        self._pending: dict[tuple[str, ...], asyncio.Future[T | None]] = {}

    async def get(self, key: tuple[str, ...], read: Callable[[], Awaitable[T | None]],
                  *, fresh: bool) -> T | None:
        if not fresh:
            kept = self._kept.get(key)
            if kept is not None and self._monotonic() - kept[0] < self._max_age:
                return kept[1]
            pending = self._pending.get(key)
            if pending is not None:
                return await asyncio.shield(pending)
        # A task of its own, shielded: a reader cancelled meanwhile (an operator exit,
        # a daemon stopped) cancels neither the read nor the other readers' wait.
        task = asyncio.ensure_future(self._read_and_keep(key, read))
        if not fresh:
            self._pending[key] = task
        task.add_done_callback(lambda done: self._forget_pending(key, done))
        return await asyncio.shield(task)

    async def _read_and_keep(self, key: tuple[str, ...],
                             read: Callable[[], Awaitable[T | None]]) -> T | None:
        started = self._monotonic()
        value = await read()
        if value is None:
            self._kept.pop(key, None)
        elif self._max_age > 0:
            self._kept[key] = (started, value)
        return value

    def _forget_pending(self, key: tuple[str, ...], done: asyncio.Future[T | None]) -> None:
        if self._pending.get(key) is done:
            del self._pending[key]
        if not done.cancelled():
            done.exception()  # retrieved: a failed read with no reader left is not logged

    def __len__(self) -> int:
        return len(self._kept)


class ClassInputs:
    """WorkspaceClasses and the Secrets they name, kept for `max_age` seconds
    (0: always read)."""

    def __init__(self, kube: KubePort, max_age: float,
                 monotonic: Callable[[], float]) -> None:
        self._kube = kube
        self._classes: _Entries[Mapping[str, Any]] = _Entries(max_age, monotonic)
        self._secrets: _Entries[SecretData] = _Entries(max_age, monotonic)

    async def workspace_class(self, name: str, *, fresh: bool, kind: str = CLASS_KIND,
                              namespace: str = "") -> Mapping[str, Any] | None:
        """The cluster's WorkspaceClass `name`, or with `kind` NamespacedWorkspaceClass
        the one in `namespace`: keyed by all three, so two tenants' classes of one name
        (and a cluster class of that name) are never mixed up."""
        if kind == NAMESPACED_CLASS_KIND:
            return await self._classes.get(
                (kind, namespace, name),
                lambda: self._kube.get_namespaced_workspace_class(namespace, name),
                fresh=fresh)
        return await self._classes.get(
            (CLASS_KIND, "", name), lambda: self._kube.get_workspace_class(name), fresh=fresh)

    async def secret(self, namespace: str, name: str, *, fresh: bool) -> SecretData | None:
        return await self._secrets.get(
            (namespace, name), lambda: self._kube.read_secret(namespace, name), fresh=fresh)

    @property
    def kept(self) -> int:
        """How many classes and Secrets are held (for tests and metrics)."""
        return len(self._classes) + len(self._secrets)
