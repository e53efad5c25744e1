"""Everything one reconcile of one Workspace works with, in one object."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agentspaces.api.hostnames import recorded_label, workspace_host
from agentspaces.api.types import WorkspaceRef
from agentspaces.kube import Owner
from agentspaces.pki import AgentCredentials
from agentspaces.reconcile.credentials import ResolvedCredentials
from agentspaces.reconcile.status import StatusDraft
from agentspaces.runtime import Runtime

EventSink = Callable[[str, str, str], None]
"""(type Normal|Warning, reason, message) -> None"""


@dataclass(frozen=True)
class Outcome:
    """What the handler should tell Kopf: done, or come back after `requeue` seconds."""

    requeue: float | None = None
    message: str = ""

    @classmethod
    def done(cls) -> Outcome:
        return cls()

    @classmethod
    def after(cls, seconds: float, message: str) -> Outcome:
        return cls(requeue=seconds, message=message)


@dataclass
class Scope:
    ref: WorkspaceRef
    body: Mapping[str, Any]
    status: StatusDraft
    runtime: Runtime
    emit: EventSink
    creds: ResolvedCredentials | None = None
    agent_credentials: AgentCredentials | None = None
    activity: Any = None
    """The agent's latest activity report (set by the agent step for the idle policy)."""

    @property
    def spec_raw(self) -> Mapping[str, Any]:
        return self.body.get("spec") or {}

    @property
    def annotations(self) -> Mapping[str, str]:
        return (self.body.get("metadata") or {}).get("annotations") or {}

    @property
    def label(self) -> str:
        """The name once recorded in status.hostname (never renamed), else a new one."""
        return recorded_label(self.status.get("hostname"), self.ref.name, self.ref.namespace)

    @property
    def host(self) -> str:
        assert self.creds is not None
        return workspace_host(self.label, self.creds.klass.dns.base_domain)

    @property
    def owner(self) -> Owner:
        return Owner(api_version=self.body.get("apiVersion", "agentspaces.dev/v1alpha1"),
                     kind="Workspace", name=self.ref.name, uid=self.ref.uid)

    def secret_name(self, suffix: str) -> str:
        return f"{self.ref.name}-{suffix}"

    def agent_client(self) -> Any:
        """The pinned client for this workspace's agent (status.agentEndpoint)."""
        endpoint = self.status.get("agentEndpoint") or {}
        assert self.agent_credentials is not None and endpoint.get("url")
        return self.runtime.agent_client(self.ref.uid, endpoint["url"],
                                         self.agent_credentials.token,
                                         self.agent_credentials.cert_pem)
