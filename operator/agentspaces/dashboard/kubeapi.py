"""The dashboard's Kubernetes client: every call carries the credentials of the person
using the page (the caller's kubeconfig, their bearer token, or impersonation of the
user an authenticating proxy names), so the apiserver's RBAC decides what they see and
do. One aiohttp session per process; credentials travel per request, never shared."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from agentspaces.api.model import GROUP, VERSION

WORKSPACES = f"/apis/{GROUP}/{VERSION}"
# A watch is re-opened after this long (the apiserver ends it; a re-list follows 410).
WATCH_SECONDS = 240
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)


class ApiError(Exception):
    """A non-2xx answer: the apiserver's Status (reason, message, details.causes)."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        self.status = status
        self.body = dict(body)
        super().__init__(f"{status}: {self.message}")

    @property
    def message(self) -> str:
        return str(self.body.get("message") or self.body.get("reason") or "error")

    @property
    def causes(self) -> list[dict[str, Any]]:
        return list((self.body.get("details") or {}).get("causes") or [])


@dataclass(frozen=True)
class Credentials:
    """The headers that say who a request is for."""

    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def bearer(cls, token: str) -> Credentials:
        return cls({"Authorization": f"Bearer {token}"})

    def impersonating(self, user: str, groups: list[str]) -> Credentials:
        """The app's own credentials asking to act as `user` (an OIDC proxy's user)."""
        return Credentials({**self.headers, "Impersonate-User": user,
                            **({"Impersonate-Group": ",".join(groups)} if groups else {})})


@dataclass
class Cluster:
    """Where the apiserver is, how to trust it, and the process's own credentials (a
    kubeconfig's user in local mode; the ServiceAccount's for impersonation)."""

    url: str
    ssl_context: ssl.SSLContext
    own: Callable[[], Credentials] = Credentials
    _session: aiohttp.ClientSession | None = None

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None
                        ) -> Cluster:
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
        return cls._from_configuration(cfg)

    @classmethod
    def in_cluster(cls) -> Cluster:
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
        return cls._from_configuration(cfg)

    @classmethod
    def _from_configuration(cls, cfg: Any) -> Cluster:
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.cert_file and cfg.key_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)

        def own() -> Credentials:
            # In a pod the ServiceAccount token file rotates; the hook re-reads it.
            if cfg.refresh_api_key_hook is not None:
                cfg.refresh_api_key_hook(cfg)
            auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get(
                "BearerToken")
            return Credentials({"Authorization": auth} if auth else {})

        return cls(url=cfg.host.rstrip("/"), ssl_context=ctx, own=own)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl_context, limit=50),
                timeout=REQUEST_TIMEOUT)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def without_own_credentials(self) -> Cluster:
        """The same apiserver, trusted the same way, with no identity of the process's
        own (token mode: only the user's token is ever sent). A client certificate in
        the context would still be one, so the context is made anew without it."""
        pem = _ca_pem(self.ssl_context)
        ctx = ssl.create_default_context(cadata=pem) if pem else ssl.create_default_context()
        if self.ssl_context.verify_mode == ssl.CERT_NONE:  # insecure-skip-tls-verify
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return Cluster(url=self.url, ssl_context=ctx)


def _ca_pem(ctx: ssl.SSLContext) -> str:
    return "".join(ssl.DER_cert_to_PEM_cert(der) for der in
                   ctx.get_ca_certs(binary_form=True)) or ""


class UserApi:
    """The calls the pages make, as one user."""

    def __init__(self, cluster: Cluster, credentials: Credentials) -> None:
        self.cluster = cluster
        self.credentials = credentials

    async def _call(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                    body: Any = None, content_type: str = "application/json"
                    ) -> dict[str, Any]:
        headers = {**self.credentials.headers, "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with self.cluster.session().request(
                method, self.cluster.url + path, params=params, data=data,
                headers=headers) as resp:
            text = await resp.text()
            try:
                payload = json.loads(text) if text else {}
            except ValueError:
                payload = {"message": text[:500]}
            if resp.status >= 400:
                raise ApiError(resp.status, payload if isinstance(payload, dict) else {})
            return payload if isinstance(payload, dict) else {}

    @staticmethod
    def _workspaces(namespace: str | None, name: str | None = None) -> str:
        base = (f"{WORKSPACES}/namespaces/{quote(namespace, safe='')}/workspaces"
                if namespace else f"{WORKSPACES}/workspaces")
        return base + (f"/{quote(name, safe='')}" if name else "")

    async def whoami(self) -> str:
        review = await self._call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                  body={"apiVersion": "authentication.k8s.io/v1",
                                        "kind": "SelfSubjectReview"})
        return str(((review.get("status") or {}).get("userInfo") or {}).get("username", ""))

    async def list_workspaces(self, namespace: str | None, name: str | None = None
                              ) -> tuple[list[dict[str, Any]], str]:
        params = {"fieldSelector": f"metadata.name={name}"} if name else None
        listing = await self._call("GET", self._workspaces(namespace), params=params)
        return list(listing.get("items") or []), str(
            (listing.get("metadata") or {}).get("resourceVersion", ""))

    async def watch_workspaces(self, namespace: str | None, resource_version: str,
                               name: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """The watch events after `resource_version` until the apiserver ends the watch
        (WATCH_SECONDS); an ERROR event (410 Gone) tells the caller to list again."""
        params = {"fieldSelector": f"metadata.name={name}"} if name else {}
        async for event in self.watch_objects(self._workspaces(namespace), resource_version,
                                              params):
            yield event

    async def list_objects(self, path: str) -> tuple[list[dict[str, Any]], str]:
        """Any collection (e.g. WorkspaceClasses) and the resourceVersion to watch from."""
        listing = await self._call("GET", path)
        return list(listing.get("items") or []), str(
            (listing.get("metadata") or {}).get("resourceVersion", ""))

    async def watch_objects(self, path: str, resource_version: str,
                            params: Mapping[str, str] | None = None
                            ) -> AsyncIterator[dict[str, Any]]:
        """Watch events of any collection, as watch_workspaces describes them."""
        query = {"watch": "1", "resourceVersion": resource_version,
                 "timeoutSeconds": str(WATCH_SECONDS), "allowWatchBookmarks": "true",
                 **(params or {})}
        timeout = aiohttp.ClientTimeout(total=WATCH_SECONDS + 30, connect=10,
                                        sock_read=None)
        async with self.cluster.session().get(
                self.cluster.url + path, params=query,
                headers={**self.credentials.headers, "Accept": "application/json"},
                timeout=timeout) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, await _json_or_empty(resp))
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)

    async def get_workspace(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._call("GET", self._workspaces(namespace, name))

    async def create_workspace(self, namespace: str, manifest: Mapping[str, Any]
                               ) -> dict[str, Any]:
        return await self._call("POST", self._workspaces(namespace), body=manifest)

    async def patch_workspace(self, namespace: str, name: str, patch: Mapping[str, Any]
                              ) -> dict[str, Any]:
        return await self._call("PATCH", self._workspaces(namespace, name), body=patch,
                                content_type="application/merge-patch+json")

    async def delete_workspace(self, namespace: str, name: str) -> None:
        await self._call("DELETE", self._workspaces(namespace, name))

    async def list_classes(self) -> list[dict[str, Any]]:
        listing = await self._call("GET", f"{WORKSPACES}/workspaceclasses")
        return list(listing.get("items") or [])

    async def list_namespaced_classes(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's own NamespacedWorkspaceClasses. Empty when the user may not
        list them (the example tenant roles do not grant it) or the CRD is absent: the
        cluster classes still make a usable form. No namespace (not yet typed), none."""
        if not namespace:
            return []
        try:
            listing = await self._call(
                "GET", f"{WORKSPACES}/namespaces/{quote(namespace, safe='')}"
                       "/namespacedworkspaceclasses")
        except ApiError as err:
            if err.status in (403, 404):
                return []
            raise
        return list(listing.get("items") or [])

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        return (await self.read_secret_data(namespace, name)).get(key)

    async def read_secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """Every key of a Secret, decoded."""
        import base64

        secret = await self._call(
            "GET", f"/api/v1/namespaces/{quote(namespace, safe='')}/secrets/"
                   f"{quote(name, safe='')}")
        return {key: base64.b64decode(value).decode(errors="replace")
                for key, value in (secret.get("data") or {}).items() if value}

    async def list_events(self, namespace: str, name: str, limit: int = 20
                          ) -> list[dict[str, Any]]:
        listing = await self._call(
            "GET", f"/api/v1/namespaces/{quote(namespace, safe='')}/events",
            params={"fieldSelector": f"involvedObject.kind=Workspace,"
                                     f"involvedObject.name={name}"})
        items = list(listing.get("items") or [])
        items.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""),
                   reverse=True)
        return items[:limit]


async def _json_or_empty(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        payload = await asyncio.wait_for(resp.json(content_type=None), 5)
    except (ValueError, TimeoutError, aiohttp.ClientError):
        return {}
    return payload if isinstance(payload, dict) else {}
