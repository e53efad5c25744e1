"""The apiserver calls `kubectl ws` makes, as the user.

Built on `share_link_cli.KubeconfigCluster` (the same kubeconfig handling and the calls
`share-link` needs) with the few more that list, patch and explain. A refused call keeps
the apiserver's own message, which names the user, verb and resource a 403 lacks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from agentspaces.api.model import GROUP, VERSION
from agentspaces.share_link_cli import CliError, KubeconfigCluster, KubeError

PLURAL = "workspaces"


def _message(body: object, fallback: str) -> str:
    try:
        doc = json.loads(body) if isinstance(body, str | bytes) else None
    except ValueError:
        doc = None
    message = doc.get("message") if isinstance(doc, dict) else None
    return str(message) if message else fallback


class PluginCluster(KubeconfigCluster):
    @staticmethod
    def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, _request_timeout=30, **kwargs)
        except ApiException as err:
            raise KubeError(err.status or 0, _message(err.body, err.reason or "error")) \
                from None
        except HTTPError as err:
            raise CliError(f"the cluster is unreachable: {err}") from None

    def list_workspaces(self, namespace: str | None) -> list[Mapping[str, Any]]:
        """One namespace's, or every namespace's when namespace is None."""
        if namespace is None:
            doc = self._call(self._custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        else:
            doc = self._call(self._custom.list_namespaced_custom_object, GROUP, VERSION,
                             namespace, PLURAL)
        return list(doc.get("items") or [])

    def patch_workspace(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """A JSON merge patch (the client picks it for a dict body)."""
        self._call(self._custom.patch_namespaced_custom_object, GROUP, VERSION, namespace,
                   PLURAL, name, dict(patch))

    def get_class(self, name: str) -> Mapping[str, Any]:
        doc: Mapping[str, Any] = self._call(self._custom.get_cluster_custom_object, GROUP,
                                            VERSION, "workspaceclasses", name)
        return doc

    def list_events(self, namespace: str, name: str) -> list[Mapping[str, Any]]:
        """The Workspace's events (core/v1), as plain dicts."""
        events = self._call(self._core.list_namespaced_event, namespace,
                            field_selector=f"involvedObject.kind=Workspace,"
                                           f"involvedObject.name={name}")
        out: list[Mapping[str, Any]] = []
        for ev in events.items or []:
            when = ev.last_timestamp or ev.event_time or ev.first_timestamp or \
                (ev.metadata.creation_timestamp if ev.metadata else None)
            out.append({"time": when.isoformat() if when else "", "type": ev.type or "",
                        "reason": ev.reason or "", "message": ev.message or "",
                        "count": ev.count or 1})
        return out
