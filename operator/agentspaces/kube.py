"""The few Kubernetes reads and writes the domain needs, behind a small port.

Kopf owns watching and status patching; this module reads WorkspaceClasses and
Secrets and manages the Secrets a Workspace owns. The official client is synchronous,
so calls run in worker threads and never block the event loop.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from agentspaces.api.schema import GROUP, VERSION


@dataclass(frozen=True)
class Owner:
    """The Workspace that owns a Secret (garbage-collected with it)."""

    api_version: str
    kind: str
    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name,
                "uid": self.uid, "controller": True, "blockOwnerDeletion": True}


@dataclass(frozen=True)
class SecretData:
    data: Mapping[str, str]
    resource_version: str
    owner_uids: tuple[str, ...]
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class KubePort(Protocol):
    async def get_workspace(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...
    async def patch_workspace_status(self, namespace: str, name: str,
                                     patch: Mapping[str, Any]) -> None: ...
    async def get_workspace_class(self, name: str) -> Mapping[str, Any] | None: ...
    async def read_secret(self, namespace: str, name: str) -> SecretData | None: ...
    async def create_secret(self, namespace: str, name: str, data: Mapping[str, str],
                            owner: Owner | None, labels: Mapping[str, str],
                            annotations: Mapping[str, str] | None = None) -> SecretData: ...
    async def replace_secret_data(self, namespace: str, name: str,
                                  data: Mapping[str, str]) -> None: ...
    async def release_secret(self, namespace: str, name: str, owner_uid: str,
                             labels: Mapping[str, str] | None = None,
                             annotations: Mapping[str, str] | None = None) -> None: ...
    async def delete_secret(self, namespace: str, name: str) -> None: ...


def _decode(secret: client.V1Secret) -> SecretData:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
    owners = tuple(ref.uid for ref in secret.metadata.owner_references or [])
    return SecretData(data=data, resource_version=secret.metadata.resource_version or "",
                      owner_uids=owners, labels=dict(secret.metadata.labels or {}),
                      annotations=dict(secret.metadata.annotations or {}))


def _encode(data: Mapping[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


class KubernetesApi:
    """`KubePort` over the official client (in-cluster config or KUBECONFIG)."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = client.ApiClient()
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ApiException as exc:
            raise KubeError(exc.status or 0, exc.reason or "error") from None

    async def get_workspace(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            return await self._run(self._custom.get_namespaced_custom_object, GROUP,  # type: ignore[no-any-return]
                                   VERSION, namespace, "workspaces", name)
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def patch_workspace_status(self, namespace: str, name: str,
                                     patch: Mapping[str, Any]) -> None:
        """A JSON merge patch of .status (a dict body is sent as merge-patch)."""
        try:
            await self._run(self._custom.patch_namespaced_custom_object_status, GROUP,
                            VERSION, namespace, "workspaces", name, {"status": dict(patch)})
        except KubeError as err:
            if err.status != 404:  # gone: nothing left to describe
                raise

    async def get_workspace_class(self, name: str) -> Mapping[str, Any] | None:
        try:
            return await self._run(self._custom.get_cluster_custom_object, GROUP, VERSION,  # type: ignore[no-any-return]
                                   "workspaceclasses", name)
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        try:
            secret = await self._run(self._core.read_namespaced_secret, name, namespace)
        except KubeError as err:
            if err.status == 404:
                return None
            raise
        return _decode(secret)

    async def create_secret(self, namespace: str, name: str, data: Mapping[str, str],
                            owner: Owner | None, labels: Mapping[str, str],
                            annotations: Mapping[str, str] | None = None) -> SecretData:
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=name, namespace=namespace, labels=dict(labels),
                annotations=dict(annotations) if annotations else None,
                owner_references=[owner.reference()] if owner else None),
            type="Opaque", data=_encode(data))
        try:
            created = await self._run(self._core.create_namespaced_secret, namespace, body)
        except KubeError as err:
            if err.status != 409:
                raise
            existing = await self.read_secret(namespace, name)
            if existing is None:
                raise
            return existing
        return _decode(created)

    async def replace_secret_data(self, namespace: str, name: str,
                                  data: Mapping[str, str]) -> None:
        await self._run(self._core.patch_namespaced_secret, name, namespace,
                        {"data": _encode(data)})

    async def release_secret(self, namespace: str, name: str, owner_uid: str,
                             labels: Mapping[str, str] | None = None,
                             annotations: Mapping[str, str] | None = None) -> None:
        """Drop one owner reference so the Secret outlives its Workspace, and add
        labels/annotations that say why it was kept."""
        try:
            secret = await self._run(self._core.read_namespaced_secret, name, namespace)
        except KubeError as err:
            if err.status == 404:
                return
            raise
        refs = [r for r in secret.metadata.owner_references or [] if r.uid != owner_uid]
        # A JSON patch (a list body): a strategic merge would keep the removed entry.
        value = [client.ApiClient().sanitize_for_serialization(r) for r in refs]
        ops: list[dict[str, Any]] = [{"op": "replace", "path": "/metadata/ownerReferences",
                                      "value": value}]
        for field_name, extra in (("labels", labels), ("annotations", annotations)):
            if extra:
                current = getattr(secret.metadata, field_name) or {}
                ops.append({"op": "add", "path": f"/metadata/{field_name}",
                            "value": {**current, **extra}})
        await self._run(self._core.patch_namespaced_secret, name, namespace, ops)

    async def delete_secret(self, namespace: str, name: str) -> None:
        try:
            await self._run(self._core.delete_namespaced_secret, name, namespace)
        except KubeError as err:
            if err.status != 404:
                raise
