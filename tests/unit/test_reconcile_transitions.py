"""The workspace state machine as a table: where earlier reconciles left the workspace
(status), what changed since in the clouds, the cluster or the spec, and what the agent
reports -> the cloud and agent writes one `workspace.reconcile` makes, the phase and
the conditions it records. Everything runs against the in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from agentspaces.api.enums import ConditionStatus, Phase, Reason
from agentspaces.api.enums import ConditionType as T
from agentspaces.clouds.errors import ErrorKind
from agentspaces.reconcile import workspace
from agentspaces.reconcile.outcome import Outcome, Wait
from agentspaces_vm.contracts import BootStage
from tests.support.fakes import AGENT_WRITES, DNS_WRITES, SERVER_WRITES, hetzner_error
from tests.support.scope_builder import SETTINGS, ScopeBuilder

TRUE, FALSE = ConditionStatus.TRUE, ConditionStatus.FALSE
RECORDS = ("create_record",) * 4  # A and AAAA, for the host and its wildcard
DELETED_RECORDS = ("delete_record",) * 4


# -- where earlier reconciles left the workspace ---------------------------------------

async def _pass(b: ScopeBuilder) -> Outcome:
    outcome = await b.reconcile()
    b.clock.advance(SETTINGS.boot_poll)
    return outcome


async def creating(b: ScopeBuilder) -> None:
    """The server was created and is initializing."""
    await _pass(b)


async def starting(b: ScopeBuilder) -> None:
    """The server runs, DNS points at it, the agent was told to start."""
    await creating(b)
    b.servers.boot()
    await _pass(b)


async def running(b: ScopeBuilder) -> None:
    await starting(b)
    b.agent.report_ready(b.clock())
    await _pass(b)


async def stopping(b: ScopeBuilder) -> None:
    """The user stopped it: the server's delete was sent."""
    await running(b)
    b.with_spec(running=False)
    await _pass(b)


async def stopped(b: ScopeBuilder) -> None:
    await stopping(b)
    await _pass(b)


async def new(b: ScopeBuilder) -> None:
    """Never reconciled."""


STATUS: dict[str, tuple[Callable[[ScopeBuilder], Awaitable[None]], Phase | None]] = {
    "new": (new, None),
    "creating": (creating, Phase.STARTING),
    "starting": (starting, Phase.STARTING),
    "running": (running, Phase.RUNNING),
    "stopping": (stopping, Phase.STOPPING),
    "stopped": (stopped, Phase.STOPPED),
}


# -- what changed since --------------------------------------------------------------

def _foreign_server_at_our_name(b: ScopeBuilder) -> None:
    b.servers.add_foreign(b.label)


def _server_deleted_out_of_band(b: ScopeBuilder) -> None:
    for server_id in b.servers.ids():
        b.servers.delete_out_of_band(server_id)
    b.clock.advance(SETTINGS.inventory_interval)  # a listing newer than the server


WORLD: dict[str, Callable[[ScopeBuilder], Any]] = {
    "unchanged": lambda b: None,
    "server booted": lambda b: b.servers.boot(),
    "server deleted out of band": _server_deleted_out_of_band,
    "foreign server at our name": _foreign_server_at_our_name,
    "hetzner token Secret missing": lambda b: b.without_secret("hcloud"),
    "class allows only cpx32": lambda b: b.with_class(limits={"serverTypes": ["cpx32"]}),
    "user stops it": lambda b: b.with_spec(running=False),
    "user starts it": lambda b: b.with_spec(running=True),
    "hetzner refuses the token": lambda b: b.servers.fail_next("find_by_uid", hetzner_error(
        ErrorKind.UNAUTHORIZED, "unauthorized", "unable to authenticate")),
}

AGENT: dict[str, Callable[[ScopeBuilder], Any]] = {
    "as left": lambda b: None,
    "waiting for start": lambda b: b.agent.set_stage(BootStage.WAITING_FOR_START),
    "ready": lambda b: b.agent.report_ready(b.clock()),
    "unreachable": lambda b: setattr(b.agent, "reachable", False),
}


@dataclass(frozen=True)
class Row:
    status: str
    world: str
    agent: str
    phase: Phase
    conditions: dict[T, tuple[ConditionStatus, str]]
    server_writes: tuple[str, ...] = ()
    dns_writes: tuple[str, ...] = ()
    agent_writes: tuple[str, ...] = ()
    no_calls: bool = False
    """Not even a read: no Hetzner, Cloudflare or agent call at all."""
    requeue: float | None = None

    def __str__(self) -> str:
        return f"{self.status} + {self.world} + agent {self.agent}"


TABLE = [
    Row("new", "unchanged", "as left", Phase.STARTING,
        {T.SERVER_READY: (FALSE, Reason.SERVER_CREATING),
         T.CREDENTIALS_AVAILABLE: (TRUE, Reason.CREDENTIALS_FOUND),
         T.ACCEPTED: (TRUE, Reason.SPEC_ACCEPTED),
         T.READY: (FALSE, Reason.SERVER_CREATING)},
        server_writes=("create",), requeue=Wait.RECORDED),
    Row("creating", "unchanged", "as left", Phase.STARTING,
        {T.SERVER_READY: (FALSE, Reason.SERVER_STARTING)},
        requeue=SETTINGS.boot_poll),
    Row("creating", "server booted", "waiting for start", Phase.STARTING,
        {T.SERVER_READY: (TRUE, Reason.SERVER_RUNNING),
         T.DNS_READY: (TRUE, Reason.DNS_RECORDS_READY),
         T.AGENT_READY: (FALSE, Reason.AGENT_BOOTING),
         T.READY: (FALSE, Reason.AGENT_BOOTING)},
        dns_writes=RECORDS, agent_writes=("put_config", "put_secrets", "start"),
        requeue=SETTINGS.boot_poll),
    Row("starting", "unchanged", "ready", Phase.RUNNING,
        {T.AGENT_READY: (TRUE, Reason.AGENT_READY),
         T.READY: (TRUE, Reason.READY)}),
    Row("running", "unchanged", "ready", Phase.RUNNING,
        {T.SERVER_READY: (TRUE, Reason.SERVER_RUNNING),
         T.DNS_READY: (TRUE, Reason.DNS_RECORDS_READY),
         T.READY: (TRUE, Reason.READY)}),
    Row("running", "user stops it", "ready", Phase.STOPPING,
        {T.SERVER_READY: (FALSE, Reason.SERVER_DELETING),
         T.READY: (FALSE, Reason.NOT_RUNNING)},
        server_writes=("delete",), requeue=SETTINGS.boot_poll),
    Row("stopping", "unchanged", "as left", Phase.STOPPED,
        {T.SERVER_READY: (FALSE, Reason.STOPPED),
         T.DNS_READY: (FALSE, Reason.DNS_RECORDS_REMOVED),
         T.AGENT_READY: (FALSE, Reason.STOPPED),
         T.READY: (FALSE, Reason.NOT_RUNNING)},
        dns_writes=DELETED_RECORDS),
    Row("stopped", "unchanged", "as left", Phase.STOPPED,
        {T.SERVER_READY: (FALSE, Reason.STOPPED), T.READY: (FALSE, Reason.NOT_RUNNING)},
        no_calls=True),
    Row("stopped", "user starts it", "as left", Phase.STARTING,
        {T.SERVER_READY: (FALSE, Reason.SERVER_CREATING)},
        server_writes=("create",), requeue=Wait.RECORDED),
    Row("running", "server deleted out of band", "ready", Phase.CREATING,
        {T.SERVER_READY: (FALSE, Reason.SERVER_MISSING),
         T.READY: (FALSE, Reason.SERVER_MISSING)},
        requeue=Wait.REFUSED_SERVER),
    Row("new", "hetzner token Secret missing", "as left", Phase.PENDING,
        {T.CREDENTIALS_AVAILABLE: (FALSE, Reason.SECRET_NOT_FOUND),
         T.READY: (FALSE, Reason.SECRET_NOT_FOUND)},
        no_calls=True, requeue=Wait.CREDENTIALS),
    Row("new", "class allows only cpx32", "as left", Phase.FAILED,
        {T.ACCEPTED: (FALSE, Reason.NOT_ALLOWED_BY_CLASS),
         T.READY: (FALSE, Reason.NOT_ALLOWED_BY_CLASS)},
        no_calls=True, requeue=SETTINGS.poll_interval),
    Row("new", "hetzner refuses the token", "as left", Phase.CREATING,
        {T.SERVER_READY: (FALSE, Reason.CREDENTIALS_INVALID),
         T.CREDENTIALS_AVAILABLE: (FALSE, Reason.CREDENTIALS_INVALID),
         T.READY: (FALSE, Reason.CREDENTIALS_INVALID)},
        requeue=Wait.PERMANENT),
    # One failed poll of a ready agent is not an outage (AGENTSPACES_UNREACHABLE_AFTER).
    Row("running", "unchanged", "unreachable", Phase.RUNNING,
        {T.AGENT_READY: (TRUE, Reason.AGENT_READY), T.READY: (TRUE, Reason.READY)}),
    Row("starting", "unchanged", "unreachable", Phase.STARTING,
        {T.AGENT_READY: (FALSE, Reason.AGENT_BOOTING)},
        requeue=SETTINGS.boot_poll),
    Row("new", "foreign server at our name", "as left", Phase.FAILED,
        {T.SERVER_READY: (FALSE, Reason.SERVER_NAME_TAKEN),
         T.READY: (FALSE, Reason.SERVER_NAME_TAKEN)},
        server_writes=("create",), requeue=Wait.PERMANENT),
]


def _writes(calls: list[str], kinds: frozenset[str]) -> tuple[str, ...]:
    return tuple(sorted(m for m in calls if m in kinds))


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c.get("reason", "")) for c in status["conditions"]}


@pytest.mark.parametrize("row", TABLE, ids=str)
async def test_reconcile_transition(scope_builder: ScopeBuilder, row: Row) -> None:
    b = scope_builder
    prepare, reached = STATUS[row.status]
    await prepare(b)
    assert b.status.get("phase") == reached, "the table's starting status was not reached"
    WORLD[row.world](b)
    AGENT[row.agent](b)
    b.clear_calls()

    outcome = await b.reconcile()

    servers, dns, agent = (b.servers.calls.methods(), b.dns.calls.methods(),
                           b.agent.calls.methods())
    if row.no_calls:
        assert (servers, dns, agent) == ([], [], [])
    assert _writes(servers, SERVER_WRITES) == tuple(sorted(row.server_writes))
    assert _writes(dns, DNS_WRITES) == tuple(sorted(row.dns_writes))
    assert _writes(agent, AGENT_WRITES) == tuple(sorted(row.agent_writes))
    assert b.status.get("phase") == row.phase
    conditions = _conditions(b.status)
    for type_, expected in row.conditions.items():
        assert conditions[type_] == expected, type_
    assert outcome.requeue == row.requeue


async def test_a_stop_walks_stopping_then_stopped_and_leaves_nothing_in_any_cloud(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    await running(b)
    b.with_spec(running=False)
    phases = []
    for _ in range(3):
        await _pass(b)
        phases.append(b.status.get("phase"))
    assert phases == [Phase.STOPPING, Phase.STOPPED, Phase.STOPPED]
    assert b.servers.ids() == []
    assert b.dns.in_zone("example.com") == []
    assert b.status.get("stoppedBy") == "user"
    assert "server" not in b.status and "dns" not in b.status


async def test_status_is_not_written_when_a_steady_reconcile_changes_nothing(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    await running(b)
    await _pass(b)
    visit = b.visit()
    await workspace.reconcile(visit)
    assert visit.status.patch() == {}



async def _running_then_key_gone(b: ScopeBuilder) -> None:
    b.kube.add_secret(b.namespace, "anthropic", {"apiKey": "sk-ant-api03-test"})
    b.with_spec(agent={"apiKeySecretRef": {"name": "anthropic"}})
    await running(b)
    b.kube.secrets.pop((b.namespace, "anthropic"))
    await _pass(b)  # still asked to run: the missing key is reported, the server kept
    assert _conditions(b.status)[T.CREDENTIALS_AVAILABLE] == (FALSE, Reason.SECRET_NOT_FOUND)
    assert len(b.servers.ids()) == 1


async def test_a_workspace_secret_that_is_gone_never_blocks_a_stop(
        scope_builder: ScopeBuilder) -> None:
    """Stop and delete need only the class's Secrets: a missing Claude Code key blocks a
    start, never the cleanup of a billed server."""
    b = scope_builder
    await _running_then_key_gone(b)
    b.with_spec(running=False)
    for _ in range(2):
        await _pass(b)
    assert b.status.get("phase") == Phase.STOPPED
    assert b.servers.ids() == [] and b.dns.in_zone("example.com") == []


async def test_a_workspace_secret_that_is_gone_never_blocks_a_delete(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    await _running_then_key_gone(b)
    outcome = None
    for _ in range(3):
        visit = b.visit()
        outcome = await workspace.finalize(visit)
        b.save(visit)
        b.clock.advance(SETTINGS.boot_poll)
        if outcome == Outcome.done():
            break
    assert outcome == Outcome.done()
    assert b.servers.ids() == [] and b.dns.in_zone("example.com") == []
