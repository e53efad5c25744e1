"""Where the gateway learns about workspaces: the Kubernetes API (list + watch of
Workspaces in all namespaces and of WorkspaceClasses), and the two writes-or-reads it
makes besides: an access Secret's data, and the annotation patch that wakes.

`Source` is the seam: the service needs only these calls, so tests can hand it an
in-memory source instead of an apiserver.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp

from agentspaces.dashboard.kubeapi import WORKSPACES, ApiError, Cluster, UserApi

log = logging.getLogger(__name__)

CLASSES = f"{WORKSPACES}/workspaceclasses"
ALL_WORKSPACES = f"{WORKSPACES}/workspaces"
MAX_BACKOFF_SECONDS = 30.0


class Source(Protocol):
    def workspaces(self) -> Mapping[str, Mapping[str, Any]]:
        """Every Workspace, by namespace/name, as last seen."""
        ...

    def classes(self) -> Mapping[str, Mapping[str, Any]]:
        """Every WorkspaceClass, by name."""
        ...

    async def run(self, changed: Callable[[], None]) -> None:
        """Keep the two maps current until cancelled; call `changed` after each change."""
        ...

    async def read_secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        ...

    async def patch_annotations(self, namespace: str, name: str,
                                annotations: Mapping[str, str]) -> None:
        ...

    async def aclose(self) -> None:
        ...


def object_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


class KubeSource:
    """The apiserver, with the gateway's own credentials (its ServiceAccount in the
    cluster, a kubeconfig outside)."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._objects: dict[str, dict[str, dict[str, Any]]] = {ALL_WORKSPACES: {},
                                                              CLASSES: {}}
        self.synced = asyncio.Event()  # both lists have been read once
        self._listed: set[str] = set()

    def _api(self) -> UserApi:
        return UserApi(self._cluster, self._cluster.own())  # own() re-reads a rotated token

    def workspaces(self) -> Mapping[str, Mapping[str, Any]]:
        return self._objects[ALL_WORKSPACES]

    def classes(self) -> Mapping[str, Mapping[str, Any]]:
        return self._objects[CLASSES]

    async def run(self, changed: Callable[[], None]) -> None:
        await asyncio.gather(self._follow(ALL_WORKSPACES, changed),
                             self._follow(CLASSES, changed))

    async def _follow(self, path: str, changed: Callable[[], None]) -> None:
        """List, then watch from there; list again when the watch expires (410) or
        fails, with a bounded backoff."""
        objects = self._objects[path]
        backoff = 1.0
        while True:
            try:
                items, version = await self._api().list_objects(path)
                objects.clear()
                objects.update({object_key(o): o for o in items})
                self._listed.add(path)
                if len(self._listed) == 2:
                    self.synced.set()
                changed()
                backoff = 1.0
                while version:
                    version = await self._watch(path, version, objects, changed)
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
                log.warning("watching %s failed (%s); listing again in %.0fs", path, err,
                            backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _watch(self, path: str, version: str, objects: dict[str, dict[str, Any]],
                     changed: Callable[[], None]) -> str:
        """One watch until the apiserver ends it: the version to go on from, or "" to
        list again."""
        async for event in self._api().watch_objects(path, version):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                return ""
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            if kind == "DELETED":
                objects.pop(object_key(obj), None)
            else:
                objects[object_key(obj)] = obj
            changed()
        return version

    async def aclose(self) -> None:
        await self._cluster.aclose()

    async def read_secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        try:
            return await self._api().read_secret_data(namespace, name)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def patch_annotations(self, namespace: str, name: str,
                                annotations: Mapping[str, str]) -> None:
        await self._api().patch_workspace(namespace, name,
                                          {"metadata": {"annotations": dict(annotations)}})
