"""The few Kubernetes reads and writes the domain needs, behind a small port.

Kopf owns watching and status patching; this module reads WorkspaceClasses, Secrets
and Namespaces' labels, manages the Secrets a Workspace owns, and keeps the Leases that
claim hostnames (reconcile/host_claim.py). The official client is synchronous, so
calls run in worker threads and never block the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from agentspaces.api.image_model import IMAGE_PLURAL
from agentspaces.api.model import GROUP, VERSION
from agentspaces.api.quota_model import QUOTA_PLURAL


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
class OwnerRef:
    kind: str
    name: str
    uid: str


@dataclass(frozen=True)
class SecretData:
    data: Mapping[str, str]
    resource_version: str
    owner_uids: tuple[str, ...]
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    owners: tuple[OwnerRef, ...] = ()
    uid: str = ""
    not_text: tuple[str, ...] = ()
    """Keys whose values are not UTF-8 text: left out of `data`, never decoded."""
    finalizers: tuple[str, ...] = ()


@dataclass(frozen=True)
class LeaseData:
    """A Lease's holder and metadata (the hostname claims use nothing else)."""

    name: str
    holder: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    resource_version: str


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class KubePort(Protocol):
    async def aclose(self) -> None: ...
    async def get_workspace(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...
    async def patch_workspace_status(self, namespace: str, name: str,
                                     patch: Mapping[str, Any]) -> str | None: ...
    async def get_workspace_class(self, name: str) -> Mapping[str, Any] | None: ...
    async def get_namespaced_workspace_class(self, namespace: str, name: str
                                             ) -> Mapping[str, Any] | None: ...
    async def read_secret(self, namespace: str, name: str) -> SecretData | None: ...
    async def namespace_labels(self, name: str) -> Mapping[str, str] | None: ...
    async def create_secret(self, namespace: str, name: str, data: Mapping[str, str],
                            owner: Owner | None, labels: Mapping[str, str],
                            annotations: Mapping[str, str] | None = None,
                            finalizers: Sequence[str] = ()) -> SecretData: ...
    async def replace_secret_data(self, namespace: str, name: str,
                                  data: Mapping[str, str]) -> None: ...
    async def release_secret(self, namespace: str, name: str, owner_uid: str,
                             labels: Mapping[str, str] | None = None,
                             annotations: Mapping[str, str] | None = None) -> None: ...
    async def delete_secret(self, namespace: str, name: str, uid: str | None = None
                            ) -> None: ...
    async def read_lease(self, namespace: str, name: str) -> LeaseData | None: ...
    async def create_lease(self, namespace: str, name: str, holder: str,
                           labels: Mapping[str, str], annotations: Mapping[str, str]
                           ) -> LeaseData | None: ...
    async def replace_lease(self, namespace: str, current: LeaseData, holder: str,
                            labels: Mapping[str, str], annotations: Mapping[str, str]
                            ) -> bool: ...
    async def delete_lease(self, namespace: str, current: LeaseData) -> None: ...
    async def list_workspaces(self, namespace: str) -> list[Mapping[str, Any]]: ...
    async def set_secret_finalizers(self, namespace: str, name: str, current: SecretData,
                                    finalizers: Sequence[str]) -> None: ...
    async def list_workspace_quotas(self, namespace: str) -> list[Mapping[str, Any]]: ...
    async def get_workspace_image(self, name: str) -> Mapping[str, Any] | None: ...
    async def patch_workspace_class_status(self, name: str,
                                           patch: Mapping[str, Any]) -> None: ...
    async def patch_workspace_image_status(self, name: str,
                                           patch: Mapping[str, Any]) -> None: ...
    async def patch_workspace_quota_status(self, namespace: str, name: str,
                                           patch: Mapping[str, Any]) -> None: ...


def _decode(secret: Mapping[str, Any]) -> SecretData:
    """A Secret as the apiserver sends it (JSON): decoding it without the client's
    models skips their date parsing, which was most of a poll's Secret read."""
    # Every value the operator reads is text (tokens, base64 keys, passwords). A binary
    # value put there by a user must become a condition, not an exception every retry.
    data: dict[str, str] = {}
    not_text: list[str] = []
    for key, value in (secret.get("data") or {}).items():
        try:
            data[key] = base64.b64decode(value).decode()
        except (ValueError, UnicodeDecodeError):
            not_text.append(key)
    meta = secret.get("metadata") or {}
    refs = tuple(OwnerRef(kind=ref.get("kind", ""), name=ref.get("name", ""),
                          uid=ref.get("uid", ""))
                 for ref in meta.get("ownerReferences") or [])
    return SecretData(data=data, resource_version=meta.get("resourceVersion") or "",
                      owner_uids=tuple(ref.uid for ref in refs),
                      labels=dict(meta.get("labels") or {}),
                      annotations=dict(meta.get("annotations") or {}), owners=refs,
                      uid=meta.get("uid") or "", not_text=tuple(sorted(not_text)),
                      finalizers=tuple(meta.get("finalizers") or ()))


def _lease(lease: client.V1Lease) -> LeaseData:
    return LeaseData(name=lease.metadata.name, holder=(lease.spec and lease.spec.holder_identity)
                     or "", labels=dict(lease.metadata.labels or {}),
                     annotations=dict(lease.metadata.annotations or {}),
                     resource_version=lease.metadata.resource_version or "")


def _lease_body(namespace: str, name: str, holder: str, labels: Mapping[str, str],
                annotations: Mapping[str, str], resource_version: str | None = None
                ) -> client.V1Lease:
    return client.V1Lease(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels),
                                     annotations=dict(annotations),
                                     resource_version=resource_version),
        spec=client.V1LeaseSpec(holder_identity=holder))


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
        self._api_client = api_client
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._coordination = client.CoordinationV1Api(api_client)

    async def aclose(self) -> None:
        """Close the open connections and the client's thread pool on shutdown
        (ApiClient.close alone leaves urllib3's connection pools open)."""
        def close() -> None:
            self._api_client.rest_client.pool_manager.clear()
            self._api_client.close()

        await asyncio.to_thread(close)

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
                                     patch: Mapping[str, Any]) -> str | None:
        """A JSON merge patch of .status (a dict body is sent as merge-patch); the
        Workspace's resourceVersion after it (None when it is gone)."""
        try:
            written = await self._run(self._custom.patch_namespaced_custom_object_status,
                                      GROUP, VERSION, namespace, "workspaces", name,
                                      {"status": dict(patch)})
        except KubeError as err:
            if err.status != 404:  # gone: nothing left to describe
                raise
            return None
        return str((written.get("metadata") or {}).get("resourceVersion") or "") or None

    async def get_workspace_class(self, name: str) -> Mapping[str, Any] | None:
        try:
            return await self._run(self._custom.get_cluster_custom_object, GROUP, VERSION,  # type: ignore[no-any-return]
                                   "workspaceclasses", name)
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def get_namespaced_workspace_class(self, namespace: str, name: str
                                             ) -> Mapping[str, Any] | None:
        """A tenant's own class (NamespacedWorkspaceClass) in `namespace`."""
        try:
            return await self._run(self._custom.get_namespaced_custom_object, GROUP,  # type: ignore[no-any-return]
                                   VERSION, namespace, "namespacedworkspaceclasses", name)
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def namespace_labels(self, name: str) -> Mapping[str, str] | None:
        """A Namespace's labels (a class's allowedNamespaces selector); None if absent."""
        try:
            found = await self._run(self._core.read_namespace, name)
        except KubeError as err:
            if err.status == 404:
                return None
            raise
        return dict(found.metadata.labels or {})

    async def _run_json(self, fn: Any, *args: Any) -> Any:
        """`fn`'s answer as parsed JSON, without the client's models."""
        answer = await self._run(fn, *args, _preload_content=False)
        return json.loads(answer.data)

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        try:
            secret = await self._run_json(self._core.read_namespaced_secret, name, namespace)
        except KubeError as err:
            if err.status == 404:
                return None
            raise
        return _decode(secret)

    async def create_secret(self, namespace: str, name: str, data: Mapping[str, str],
                            owner: Owner | None, labels: Mapping[str, str],
                            annotations: Mapping[str, str] | None = None,
                            finalizers: Sequence[str] = ()) -> SecretData:
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=name, namespace=namespace, labels=dict(labels),
                annotations=dict(annotations) if annotations else None,
                finalizers=list(finalizers) or None,
                owner_references=[owner.reference()] if owner else None),
            type="Opaque", data=_encode(data))
        try:
            created = await self._run_json(self._core.create_namespaced_secret, namespace,
                                           body)
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

    async def delete_secret(self, namespace: str, name: str, uid: str | None = None
                            ) -> None:
        """Delete a Secret; with `uid`, only that very object (a precondition, so a
        Secret re-created under the same name in between is never deleted)."""
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid)) \
            if uid else None
        try:
            await self._run(self._core.delete_namespaced_secret, name, namespace,
                            body=options)
        except KubeError as err:
            if err.status not in (404, 409):  # 409: the uid precondition failed
                raise

    async def read_lease(self, namespace: str, name: str) -> LeaseData | None:
        try:
            return _lease(await self._run(self._coordination.read_namespaced_lease, name,
                                          namespace))
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def create_lease(self, namespace: str, name: str, holder: str,
                           labels: Mapping[str, str], annotations: Mapping[str, str]
                           ) -> LeaseData | None:
        """The created Lease, or None when one with that name exists already."""
        body = _lease_body(namespace, name, holder, labels, annotations)
        try:
            return _lease(await self._run(self._coordination.create_namespaced_lease,
                                          namespace, body))
        except KubeError as err:
            if err.status == 409:
                return None
            raise

    async def replace_lease(self, namespace: str, current: LeaseData, holder: str,
                            labels: Mapping[str, str], annotations: Mapping[str, str]
                            ) -> bool:
        """Take `current` over; False when it changed since it was read (409)."""
        body = _lease_body(namespace, current.name, holder, labels, annotations,
                           current.resource_version)
        try:
            await self._run(self._coordination.replace_namespaced_lease, current.name,
                            namespace, body)
        except KubeError as err:
            if err.status in (404, 409):
                return False
            raise
        return True

    async def delete_lease(self, namespace: str, current: LeaseData) -> None:
        """Delete `current` only if nobody changed it since it was read."""
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(
            resource_version=current.resource_version))
        try:
            await self._run(self._coordination.delete_namespaced_lease, current.name,
                            namespace, body=options)
        except KubeError as err:
            if err.status not in (404, 409):
                raise

    # -- WorkspaceQuotas (reconcile/quota_step.py): read only when a start is decided --
    async def list_workspaces(self, namespace: str) -> list[Mapping[str, Any]]:
        found = await self._run(self._custom.list_namespaced_custom_object, GROUP, VERSION,
                                namespace, "workspaces")
        return list(found.get("items") or [])

    async def set_secret_finalizers(self, namespace: str, name: str, current: SecretData,
                                    finalizers: Sequence[str]) -> None:
        """Replace a Secret's finalizers, only if it is still the version `current` was
        read at (a JSON patch testing resourceVersion: another writer's finalizer is never
        dropped); a Secret already gone is left alone."""
        ops = [{"op": "test", "path": "/metadata/resourceVersion",
                "value": current.resource_version},
               {"op": "add", "path": "/metadata/finalizers", "value": list(finalizers)}]
        try:
            await self._run(self._core.patch_namespaced_secret, name, namespace, ops)
        except KubeError as err:
            if err.status != 404:
                raise

    async def list_workspace_quotas(self, namespace: str) -> list[Mapping[str, Any]]:
        """The namespace's WorkspaceQuotas; none when the CRD is not installed (404)."""
        try:
            found = await self._run(self._custom.list_namespaced_custom_object, GROUP,
                                    VERSION, namespace, QUOTA_PLURAL)
        except KubeError as err:
            if err.status == 404:
                return []
            raise
        return list(found.get("items") or [])

    async def patch_workspace_quota_status(self, namespace: str, name: str,
                                           patch: Mapping[str, Any]) -> None:
        """A JSON merge patch of the quota's .status; a quota gone meanwhile is skipped."""
        try:
            await self._run(self._custom.patch_namespaced_custom_object_status, GROUP,
                            VERSION, namespace, QUOTA_PLURAL, name, {"status": dict(patch)})
        except KubeError as err:
            if err.status != 404:
                raise

    async def get_workspace_image(self, name: str) -> Mapping[str, Any] | None:
        """A WorkspaceImage; None when it (or its CRD) is not there."""
        try:
            return await self._run(self._custom.get_cluster_custom_object, GROUP, VERSION,  # type: ignore[no-any-return]
                                   IMAGE_PLURAL, name)
        except KubeError as err:
            if err.status == 404:
                return None
            raise

    async def patch_workspace_class_status(self, name: str,
                                           patch: Mapping[str, Any]) -> None:
        """A JSON merge patch of a WorkspaceClass's .status (its warm pool); a class gone
        meanwhile is skipped."""
        try:
            await self._run(self._custom.patch_cluster_custom_object_status, GROUP, VERSION,
                            "workspaceclasses", name, {"status": dict(patch)})
        except KubeError as err:
            if err.status != 404:
                raise

    async def patch_workspace_image_status(self, name: str,
                                           patch: Mapping[str, Any]) -> None:
        """A JSON merge patch of the image's .status; an image gone meanwhile is skipped."""
        try:
            await self._run(self._custom.patch_cluster_custom_object_status, GROUP, VERSION,
                            IMAGE_PLURAL, name, {"status": dict(patch)})
        except KubeError as err:
            if err.status != 404:
                raise
