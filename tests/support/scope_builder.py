"""One workspace in memory: its class and Secrets, its status, a runtime wired to fakes.

`ScopeBuilder` holds the world one unit test reconciles against: a WorkspaceClass and
a Workspace parsed by the real api/types.py, a `FakeKube` holding them and their
Secrets, `FakeServers`/`FakeDns`/`FakeAgent` behind a real `Runtime` (through its
factory arguments), a hand-moved clock and the events emitted. `visit()` and
`scope()` build what the reconciler and the steps take; `reconcile()` runs
`workspace.reconcile` once and stores the status patch as the handler would.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentspaces.api.types import WorkspaceClass, WorkspaceRef, WorkspaceSpec
from agentspaces.clouds.hetzner import ServerInfo, workspace_labels
from agentspaces.kube import Owner
from agentspaces.pki import AgentCredentials
from agentspaces.reconcile import workspace
from agentspaces.reconcile.credentials import ResolvedCredentials
from agentspaces.reconcile.outcome import Outcome
from agentspaces.reconcile.scope import Scope, Visit
from agentspaces.reconcile.status import StatusDraft
from agentspaces.runtime import Runtime
from agentspaces.settings import OperatorSettings
from tests.support.clock import WallClock
from tests.support.fakes import FakeAgent, FakeDns, FakeKube, FakeServers, apply_merge_patch

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
ZONE = "example.com"
OPERATOR_NAMESPACE = "agentspaces-system"
SETTINGS = OperatorSettings(namespace=OPERATOR_NAMESPACE, poll_interval=30,
                            inventory_interval=600, boot_poll=5, agent_concurrency=4,
                            unreachable_after=3, backup_part_mib=16, backup_url_ttl=3600,
                            agent_timeout=5)
HETZNER_TOKEN = "hetzner-token-for-tests"
DNS_TOKEN = "cloudflare-token-for-tests"
ACCESS_PASSWORD = "access-password-for-tests"


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


def quick_user_data(ref: WorkspaceRef, spec: WorkspaceSpec, klass: WorkspaceClass, *,
                    host: str, agent_credentials: AgentCredentials, **_: Any) -> str:
    """Stands in for `vmconfig.userdata.render_user_data` (about 50 ms a call: YAML and
    source stripping) in step tests; the user-data itself is tested in test_userdata."""
    return f"#cloud-config\n# {ref.namespace}/{ref.name} at {host}\n"


class ScopeBuilder:
    """The world of one workspace `demo` in namespace `team-a`, class `standard`."""

    def __init__(self, name: str = "demo", namespace: str = "team-a") -> None:
        self.clock = WallClock(NOW)
        self.servers = FakeServers(clock=self.clock)
        self.dns = FakeDns()
        self.dns.add_zone(ZONE)
        self.kube = FakeKube()
        self.agent = FakeAgent()
        self.events: list[Event] = []
        self.runtime = Runtime(SETTINGS, self.kube, clock=self.clock,
                               monotonic=self.clock.monotonic,
                               server_factory=lambda token, endpoint: self.servers,
                               dns_factory=lambda token, endpoint: self.dns,
                               agent_factory=self._connect_agent)
        # A fresh uid per builder: process-wide caches keyed by uid (the hostname
        # claim) never carry one test's state into another.
        self.uid = str(uuid.uuid4())
        self.name, self.namespace = name, namespace
        self.class_spec: dict[str, Any] = {
            "hetzner": {"tokenSecretRef": {"name": "hcloud"}},
            "server": {"type": "cx23", "location": "fsn1", "image": "ubuntu-24.04"},
            "dns": {"zoneName": ZONE, "tokenSecretRef": {"name": "cloudflare"}},
        }
        self.body: dict[str, Any] = {
            "apiVersion": "agentspaces.dev/v1alpha1", "kind": "Workspace",
            "metadata": {"name": name, "namespace": namespace, "uid": self.uid,
                         "generation": 1},
            "spec": {"className": "standard",
                     "repository": {"url": "https://github.com/example/app"}},
        }
        self.kube.workspaces[(namespace, name)] = self.body
        self.kube.add_secret(OPERATOR_NAMESPACE, "hcloud", {"token": HETZNER_TOKEN})
        self.kube.add_secret(OPERATOR_NAMESPACE, "cloudflare", {"token": DNS_TOKEN})
        self._seed_access_secret()
        self._install_class()

    # -- the world ------------------------------------------------------------------
    def with_class(self, **spec: Any) -> ScopeBuilder:
        """Replace top-level entries of the class spec (e.g. limits=...)."""
        self.class_spec.update(spec)
        self._install_class()
        return self

    def with_spec(self, **spec: Any) -> ScopeBuilder:
        """Replace top-level entries of the workspace spec (e.g. running=False)."""
        self.body["spec"].update(spec)
        self.body["metadata"]["generation"] += 1
        return self

    def with_status(self, status: dict[str, Any] | None) -> ScopeBuilder:
        self.body["status"] = copy.deepcopy(status) if status is not None else None
        return self

    def without_secret(self, name: str) -> ScopeBuilder:
        self.kube.secrets.pop((OPERATOR_NAMESPACE, name), None)
        return self

    @property
    def status(self) -> dict[str, Any]:
        """The stored status (what the last reconcile patched)."""
        return dict(self.body.get("status") or {})

    @property
    def ref(self) -> WorkspaceRef:
        return WorkspaceRef.from_body(self.body)

    @property
    def label(self) -> str:
        return self.visit().label

    def labels(self) -> dict[str, str]:
        """The labels the operator puts on this workspace's server."""
        return workspace_labels(self.uid, self.name, self.namespace, "standard")

    def add_our_server(self, status: str = "running") -> ServerInfo:
        """A server of this workspace made earlier (say, before an operator restart)."""
        return self.servers.add_server(self.label, self.labels(), status=status)

    def clear_calls(self) -> None:
        for log in (self.servers.calls, self.dns.calls, self.kube.calls, self.agent.calls):
            log.clear()
        self.events.clear()

    # -- what the reconciler takes ---------------------------------------------------
    def emit(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]

    def visit(self, *, fresh_inputs: bool = True) -> Visit:
        ref = self.ref
        draft = StatusDraft.begin(self.body.get("status"), self.clock(), ref.generation)
        return Visit(ref=ref, body=copy.deepcopy(self.body), status=draft,
                     runtime=self.runtime, emit=self.emit, fresh_inputs=fresh_inputs)

    def scope(self) -> Scope:
        """A visit with credentials resolved as `credentials.resolve` would."""
        klass = WorkspaceClass.from_body(self.kube.classes["standard"])
        spec = WorkspaceSpec.from_spec(self.body["spec"], klass)
        creds = ResolvedCredentials(
            klass=klass, spec=spec, hetzner_token=HETZNER_TOKEN, dns_token=DNS_TOKEN,
            storage_access_key=None, storage_secret_key=None, class_key=None,
            class_key_previous=None, anthropic_api_key=None, repository_token=None)
        return Scope.resolved(self.visit(), creds)

    def save(self, visit: Visit) -> None:
        """Store what the visit changed, as the handler's status patch does."""
        patch = visit.status.patch()
        if patch:
            self.body["status"] = apply_merge_patch(self.body.get("status"), patch)

    async def reconcile(self, *, fresh_inputs: bool = True) -> Outcome:
        """One `workspace.reconcile`, its status stored (`fresh_inputs=False`: as a poll,
        which may reuse the class and its Secrets)."""
        visit = self.visit(fresh_inputs=fresh_inputs)
        try:
            return await workspace.reconcile(visit)
        finally:
            self.save(visit)

    # -- internals -------------------------------------------------------------------
    def _install_class(self) -> None:
        self.kube.classes["standard"] = {
            "apiVersion": "agentspaces.dev/v1alpha1", "kind": "WorkspaceClass",
            "metadata": {"name": "standard"}, "spec": copy.deepcopy(self.class_spec)}

    def _seed_access_secret(self) -> None:
        # A stored access Secret whose hash fields match its password: the reconciler
        # reads it and skips scrypt (tens of milliseconds) on every test.
        owner = Owner(api_version="agentspaces.dev/v1alpha1", kind="Workspace",
                      name=self.name, uid=self.uid)
        self.kube.add_secret(
            self.namespace, f"{self.name}-access",
            {"username": "agent", "password": ACCESS_PASSWORD,
             "scryptHash": "$scrypt$ln=4,r=8,p=1$c2FsdA$not-checked-by-the-operator",
             "passwordSha256": hashlib.sha256(ACCESS_PASSWORD.encode()).hexdigest()},
            labels={"app.kubernetes.io/managed-by": "agentspaces",
                    "agentspaces.dev/workspace": self.name, "agentspaces.dev/role": "access"},
            owner=owner)

    def _connect_agent(self, url: str, token: str, cert_pem: str, timeout: float
                       ) -> FakeAgent:
        self.agent.connections.append(url)
        return self.agent

