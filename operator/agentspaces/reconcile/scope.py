"""Everything one reconcile of one Workspace works with.

A `Visit` is what every trigger starts with (the object, its status draft, the
runtime); a `Scope` is a visit whose credentials are resolved, so no step ever checks
for missing credentials. Steps put what they learn on the scope (the server, the
access Secret, the agent credentials, the data key, the agent's activity) for the
steps after them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agentspaces.agent_client import AgentPort
from agentspaces.api.hostnames import recorded_label, workspace_host
from agentspaces.api.types import WorkspaceClass, WorkspaceRef, WorkspaceSpec
from agentspaces.kube import Owner
from agentspaces.reconcile.credentials import ResolvedCredentials
from agentspaces.reconcile.outcome import Outcome
from agentspaces.reconcile.status import StatusDraft
from agentspaces.runtime import Runtime

if TYPE_CHECKING:  # only types: these modules build on the scope themselves
    from agentspaces.clouds.hetzner import ServerInfo
    from agentspaces.persistence.keys import DataKey
    from agentspaces.pki import AgentCredentials
    from agentspaces.reconcile.idle import ActivityReport
    from agentspaces.reconcile.owned_secrets import Access

__all__ = ["EventSink", "Outcome", "Scope", "Visit"]

EventSink = Callable[[str, str, str], None]
"""(type Normal|Warning, reason, message) -> None"""


@dataclass
class Visit:
    """One reconcile of one Workspace, before its credentials are resolved."""

    ref: WorkspaceRef
    body: Mapping[str, Any]
    status: StatusDraft
    runtime: Runtime
    emit: EventSink
    fresh_inputs: bool = True
    """Read the class and its Secrets from the apiserver, not from what other workspaces'
    reconciles read moments ago (class_inputs.py)."""

    def now(self) -> datetime:
        return self.runtime.clock()

    @property
    def spec_raw(self) -> Mapping[str, Any]:
        return self.body.get("spec") or {}

    @property
    def annotations(self) -> Mapping[str, str]:
        return (self.body.get("metadata") or {}).get("annotations") or {}

    @property
    def label(self) -> str:
        """The name once recorded in status.hostname (never renamed), else a new one."""
        return recorded_label(self.status.hostname, self.ref.name, self.ref.namespace)

    @property
    def owner(self) -> Owner:
        return Owner(api_version=self.body.get("apiVersion", "agentspaces.dev/v1alpha1"),
                     kind="Workspace", name=self.ref.name, uid=self.ref.uid)

    def secret_name(self, suffix: str) -> str:
        return f"{self.ref.name}-{suffix}"


@dataclass
class Scope(Visit):
    """A visit with its class, spec and Secrets resolved."""

    creds: ResolvedCredentials = field(kw_only=True)
    server: ServerInfo | None = None
    """The running server (set by the server step)."""
    access: Access | None = None
    agent_credentials: AgentCredentials | None = None
    data_key: DataKey | None = None
    activity: ActivityReport | None = None
    """The agent's latest activity report (set by the agent step for the idle policy)."""

    @classmethod
    def resolved(cls, visit: Visit, creds: ResolvedCredentials) -> Scope:
        return cls(**{f.name: getattr(visit, f.name) for f in fields(Visit)}, creds=creds)

    @property
    def spec(self) -> WorkspaceSpec:
        return self.creds.spec

    @property
    def klass(self) -> WorkspaceClass:
        return self.creds.klass

    @property
    def host(self) -> str:
        return workspace_host(self.label, self.klass.dns.base_domain)

    def agent(self) -> AgentPort:
        """The pinned client for this workspace's agent (status.agentEndpoint)."""
        endpoint = self.status.agent_endpoint
        assert self.agent_credentials is not None and endpoint is not None and endpoint.url
        return self.runtime.agent_client(self.ref.uid, endpoint.url,
                                         self.agent_credentials.token,
                                         self.agent_credentials.cert_pem)
