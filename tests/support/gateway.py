"""The wake gateway in tests: an in-memory workspace source (what the apiserver would
show), and Workspace/WorkspaceClass/Secret bodies in the shapes the operator writes."""

from __future__ import annotations

import asyncio
import copy
import hashlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from agentspaces.api.hostnames import workspace_label
from agentspaces_vm.password_hash import hash_password

BASE_DOMAIN = "ws.example.test"
USERNAME = "agent"


class MemorySource:
    """Workspaces, classes and Secrets held in memory; every change is announced like
    a watch event. Records the wake patches it is asked for."""

    def __init__(self) -> None:
        self._workspaces: dict[str, dict[str, Any]] = {}
        self._classes: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, str]] = {}
        self.patches: list[tuple[str, str, dict[str, str]]] = []
        self.secret_reads = 0
        self._changed: Callable[[], None] = lambda: None
        self._version = 0

    # the Source protocol
    def workspaces(self) -> Mapping[str, Mapping[str, Any]]:
        return self._workspaces

    def classes(self) -> Mapping[str, Mapping[str, Any]]:
        return self._classes

    async def run(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        changed()
        await asyncio.Event().wait()  # until cancelled

    async def read_secret(self, namespace: str, name: str) -> Mapping[str, str] | None:
        self.secret_reads += 1
        found = self.secrets.get(f"{namespace}/{name}")
        return dict(found) if found is not None else None

    async def patch_annotations(self, namespace: str, name: str,
                                annotations: Mapping[str, str]) -> None:
        self.patches.append((namespace, name, dict(annotations)))
        body = self._workspaces[f"{namespace}/{name}"]
        body["metadata"].setdefault("annotations", {}).update(annotations)
        self._bump(body)

    async def aclose(self) -> None:
        pass

    # what a test does to the cluster
    def _bump(self, body: dict[str, Any]) -> None:
        self._version += 1
        body["metadata"]["resourceVersion"] = str(self._version)
        self._changed()

    def put_class(self, body: dict[str, Any]) -> None:
        self._classes[body["metadata"]["name"]] = body
        self._bump(body)

    def put(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        self._workspaces[f"{meta['namespace']}/{meta['name']}"] = copy.deepcopy(body)
        self._bump(self._workspaces[f"{meta['namespace']}/{meta['name']}"])

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self._workspaces[f"{namespace}/{name}"])

    def delete(self, namespace: str, name: str) -> None:
        self._workspaces.pop(f"{namespace}/{name}", None)
        self._changed()

    def put_secret(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        self.secrets[f"{namespace}/{name}"] = dict(data)


def gateway_class(name: str, *, tls_mode: str = "none", http_port: int = 80,
                  https_port: int = 443, ttl: int = 60, wake_gateway: bool = True
                  ) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "hetzner": {"tokenSecretRef": {"name": "hetzner"}},
        "dns": {"zoneName": "example.test", "baseDomain": BASE_DOMAIN, "ttl": ttl,
                "tokenSecretRef": {"name": "cloudflare"}},
        "tls": {"mode": tls_mode, "httpPort": http_port, "httpsPort": https_port},
    }
    if wake_gateway:
        spec["wakeGateway"] = {"ipv4": "203.0.113.10"}
    return {"apiVersion": "agentspaces.dev/v1alpha1", "kind": "WorkspaceClass",
            "metadata": {"name": name}, "spec": spec}


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def host_of(name: str, namespace: str) -> str:
    return f"{workspace_label(name, namespace)}.{BASE_DOMAIN}"


def stopped_workspace(name: str, namespace: str, class_name: str, *,
                      ports: list[dict[str, Any]] | None = None,
                      stopped_by: str = "inactivity", running: bool = True,
                      on_request: bool | None = None, changed_at: float = 0.0
                      ) -> dict[str, Any]:
    """A workspace stopped for inactivity, its records at the gateway."""
    spec: dict[str, Any] = {"className": class_name,
                            "repository": {"url": "https://git.example.test/app.git"},
                            "running": running, "access": {"ports": ports or []}}
    if on_request is not None:
        spec["wake"] = {"onRequest": on_request}
    return {
        "apiVersion": "agentspaces.dev/v1alpha1", "kind": "Workspace",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}",
                     "annotations": {}},
        "spec": spec,
        "status": {
            "phase": "Stopped", "hostname": workspace_label(name, namespace),
            "stoppedBy": stopped_by if running else "user",
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "Stopped",
                 "message": "stopped after 30m idle"},
                {"type": "ServerReady", "status": "False", "reason": "Stopped",
                 "message": "no server while stopped"},
            ],
            "dns": {"target": "Gateway", "changedAt": rfc3339(changed_at)},
        },
    }


def starting(body: dict[str, Any], message: str) -> dict[str, Any]:
    """The operator acting on the wake: a server being made."""
    out = copy.deepcopy(body)
    out["status"].update(phase="Starting", stoppedBy=None,
                         wakeHandled=out["metadata"]["annotations"].get(
                             "agentspaces.dev/wake"))
    out["status"]["conditions"] = [
        {"type": "Ready", "status": "False", "reason": "Starting", "message": message},
        {"type": "ServerReady", "status": "False", "reason": "Creating",
         "message": "creating server <b>cx23</b>"},
    ]
    return out


def running_at(body: dict[str, Any], ipv4: str, *, ready_at: float, changed_at: float,
               target: str = "Server") -> dict[str, Any]:
    out = copy.deepcopy(body)
    out["status"].update(phase="Running", stoppedBy=None, server={"id": 7, "ipv4": ipv4})
    out["status"]["conditions"] = [
        {"type": "Ready", "status": "True", "reason": "Running", "message": "",
         "lastTransitionTime": rfc3339(ready_at)}]
    out["status"]["dns"] = {"target": target, "changedAt": rfc3339(changed_at)}
    return out


def access_secret(password: str, share_key: str, session_key: str,
                  username: str = USERNAME) -> dict[str, str]:
    """The access Secret's data as the operator keeps it (decoded)."""
    return {"username": username, "password": password,
            "scryptHash": hash_password(password, log_n=10),
            "passwordSha256": hashlib.sha256(password.encode()).hexdigest(),
            "shareLinkKey": share_key, "sessionKey": session_key}
