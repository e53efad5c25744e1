"""The agent step over a fake agent: delivery, the start, and what a poll writes."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from agentspaces.api.enums import AgentState, ConditionStatus, Reason, StoppedBy
from agentspaces.api.enums import ConditionType as T
from agentspaces.clouds.hetzner import ServerInfo
from agentspaces.pki import AgentCredentials
from agentspaces.reconcile import agent_step
from agentspaces.reconcile.outcome import Outcome
from agentspaces.reconcile.owned_secrets import Access
from agentspaces.reconcile.scope import Scope
from agentspaces_vm.contracts import Activity, AgentStatus, BootStage, format_time
from tests.support.fakes import FakeAgent
from tests.support.scope_builder import NOW, SETTINGS, ScopeBuilder

T0 = NOW  # the server became Running
M = timedelta(minutes=1)


class World:
    """The agent step across reconciles of one running workspace; each starts from the
    status the last one stored, as the operator's do."""

    def __init__(self, agent: FakeAgent) -> None:
        self.builder = ScopeBuilder().with_status({"startedAt": format_time(T0)})
        self.builder.agent = self.agent = agent

    def wait(self, delta: timedelta) -> None:
        self.builder.clock.advance(delta.total_seconds())

    def poll(self) -> tuple[Scope, Outcome | None, StoppedBy | None, dict[str, Any]]:
        """One running reconcile of the agent: the step, then the idle policy."""
        scope = self.builder.scope()
        scope.server = ServerInfo(id=7, name="demo", status="running", ipv4="192.0.2.7",
                                  ipv6=None, server_type="cx23", location="fsn1")
        scope.access = Access(username="agent", password="pw", scrypt_hash="$scrypt$x")
        scope.agent_credentials = AgentCredentials(
            cert_pem="cert", key_pem="key", token="token", token_sha256="t",
            fingerprint_sha256="ab" * 32)
        outcome = asyncio.run(agent_step.reconcile(scope))
        stop = agent_step.idle_stop(scope) if outcome is None else None
        patch = scope.status.patch()
        self.builder.save(scope)
        return scope, outcome, stop, patch


def ready(last_activity: datetime, state: str = "waiting") -> AgentStatus:
    return AgentStatus(version="test", boot_stage=BootStage.READY, secrets_version=None,
                       activity=Activity(agent_state=state, agent_state_since=T0,
                                         last_activity_time=last_activity,
                                         reasons=("ssh",)))


def test_a_new_agent_gets_its_secrets_then_the_start() -> None:
    world = World(FakeAgent())
    scope, outcome, _, _ = world.poll()
    assert outcome is not None and outcome.requeue == SETTINGS.boot_poll
    assert world.agent.calls.methods() == ["agent_status", "put_config", "put_secrets", "start"]
    status = scope.status
    assert status.secrets_version == agent_step.secrets_version(
        scope, scope.access, share_links=True)  # type: ignore[arg-type]
    assert status.agent_endpoint is not None
    assert status.agent_endpoint.url == f"https://192.0.2.7:{scope.klass.agent_port}"
    assert status.agent_endpoint.certificate_sha256 == "ab" * 32
    assert status.reason(T.AGENT_READY) == Reason.AGENT_BOOTING
    # Delivered once: the next poll finds the agent booting with the current secrets.
    world.agent.calls.clear()
    _, outcome, _, _ = world.poll()
    assert world.agent.calls.methods() == ["agent_status"] and outcome is not None


def test_a_failed_boot_names_the_agents_message() -> None:
    world = World(FakeAgent(state=AgentStatus(version="test", boot_stage=BootStage.FAILED,
                                              boot_message="clone failed: 403")))
    scope, outcome, _, _ = world.poll()
    assert outcome is not None and outcome.requeue == 300
    assert scope.status.reason(T.AGENT_READY) == Reason.BOOT_FAILED
    assert scope.status.message(T.AGENT_READY) == "clone failed: 403"


def test_activity_is_written_when_it_changes_not_on_every_poll() -> None:
    agent = FakeAgent(state=ready(T0 + 50 * M))
    world = World(agent)
    world.wait(51 * M)
    scope, outcome, stop, patch = world.poll()
    assert outcome is None and stop is None
    assert scope.status.is_true(T.AGENT_READY)
    assert scope.activity is not None and scope.activity.agent_state is AgentState.WAITING
    assert patch["activity"] == {"agentState": "waiting",
                                 "agentStateSince": format_time(T0),
                                 "lastActivityTime": format_time(T0 + 50 * M),
                                 "reasons": ["ssh"], "idle": False}
    # The next poll: activity 40s newer (below the resolution), 30s later.
    agent.state = ready(T0 + 50 * M + timedelta(seconds=40))
    world.wait(timedelta(seconds=30))
    _, _, _, patch = world.poll()
    assert patch == {}
    # Newer by a minute or more: written.
    agent.state = ready(T0 + 52 * M)
    world.wait(M)
    _, _, _, patch = world.poll()
    assert patch == {"activity": {"lastActivityTime": format_time(T0 + 52 * M)}}


def test_ready_is_announced_once_as_an_event() -> None:
    agent = FakeAgent(state=AgentStatus(version="test", boot_stage=BootStage.CLONING,
                                        secrets_version=None))
    world = World(agent)
    world.poll()
    assert "Ready" not in world.builder.reasons()
    agent.state = ready(T0)
    world.wait(M)
    world.poll()
    world.wait(M)
    world.poll()
    assert world.builder.reasons().count("Ready") == 1


def test_a_missed_poll_decides_on_the_recorded_report() -> None:
    agent = FakeAgent(state=ready(T0 + 2 * 60 * M))
    world = World(agent)
    world.wait(2 * 60 * M + M)  # running for 2h, active a minute ago
    world.poll()
    agent.reachable = False
    world.wait(timedelta(seconds=30))
    scope, outcome, stop, _ = world.poll()
    # Not "no report yet, quiet since the start 2h ago": that would stop the workspace.
    assert outcome is None and stop is None
    assert scope.status.failed_agent_polls == 1
    assert scope.status.reason(T.IDLE) == Reason.ACTIVE
    assert scope.status.is_true(T.AGENT_READY)


def test_an_unreachable_agent_is_an_alarm_not_a_stop() -> None:
    agent = FakeAgent(state=ready(T0))
    world = World(agent)
    world.wait(M)
    world.poll()
    agent.reachable = False
    for _ in range(SETTINGS.unreachable_after):
        world.wait(5 * M)
        scope, outcome, stop, _ = world.poll()
        assert outcome is None and stop is None
    assert scope.status.reason(T.AGENT_READY) == Reason.AGENT_UNREACHABLE
    idle = next(c for c in scope.status.conditions if c.type == T.IDLE)
    assert (idle.status, idle.reason) == (ConditionStatus.UNKNOWN, Reason.AGENT_UNREACHABLE)
    # Answering again clears the count; an hour of quiet then stops it.
    agent.reachable = True
    world.wait(60 * M)
    scope, outcome, stop, _ = world.poll()
    assert scope.status.failed_agent_polls is None and stop is StoppedBy.INACTIVITY


def test_an_agent_state_this_operator_does_not_know_is_recorded_as_unknown() -> None:
    agent = FakeAgent(state=replace(ready(T0), activity=Activity(
        agent_state="pondering", agent_state_since=T0)))
    world = World(agent)
    world.wait(M)
    scope, _, _, patch = world.poll()
    assert scope.status.activity is not None
    assert scope.status.activity.agent_state is AgentState.UNKNOWN
    assert patch["activity"]["agentState"] == "unknown"  # the CRD's enum accepts it
