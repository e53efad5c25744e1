"""Every branch of finding, creating and deleting a workspace's server, against the
in-memory Hetzner fake: what the step records, and which API calls it makes and does
not make (a foreign server is never deleted, a lost response never makes a second one).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from agentspaces.api.enums import ConditionStatus, ConditionType, Reason
from agentspaces.clouds.errors import ErrorKind
from agentspaces.reconcile import server_step
from agentspaces.reconcile.outcome import Wait
from agentspaces.reconcile.scope import Scope
from agentspaces.vmconfig import userdata
from tests.support.fakes import Call, hetzner_error
from tests.support.scope_builder import SETTINGS, ScopeBuilder

FALSE, TRUE = ConditionStatus.FALSE, ConditionStatus.TRUE


def server_ready(scope: Scope) -> tuple[ConditionStatus, str | None]:
    found = next(c for c in scope.status.conditions if c.type == ConditionType.SERVER_READY)
    return found.status, found.reason


async def created(b: ScopeBuilder) -> int:
    """Create the workspace's server (status stored) and return its id."""
    scope = b.scope()
    await server_step.reconcile(scope)
    b.save(scope)
    assert scope.status.server is not None and scope.status.server.id is not None
    b.clear_calls()
    return scope.status.server.id


async def running_server(b: ScopeBuilder) -> int:
    """Create the workspace's server, boot it and record it running; its id."""
    server_id = await created(b)
    b.servers.boot()
    running = b.scope()
    await server_step.reconcile(running)
    b.save(running)
    b.clear_calls()
    return server_id


async def test_a_missing_server_is_created_and_its_id_recorded_first(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    scope = b.scope()
    outcome = await server_step.reconcile(scope)

    assert b.servers.calls == [Call("find_by_uid", (b.uid,)), Call("create", (b.label,))]
    (server_id,) = b.servers.ids()
    made = b.servers.servers[server_id]
    assert made.workspace_uid == b.uid and made.status == "initializing"
    assert scope.status.server is not None
    assert (scope.status.server.id, scope.status.server.name) == (server_id, b.label)
    assert server_ready(scope) == (FALSE, Reason.SERVER_CREATING)
    # The id reaches status before anything else is done with the server.
    assert outcome is not None and outcome.requeue == Wait.RECORDED
    assert scope.server is None
    # Fresh agent credentials, bound to this server so the next one gets new ones.
    agent_secret = b.kube.secrets[(b.namespace, f"{b.name}-agent")]
    assert agent_secret.data["serverId"] == str(server_id)


async def test_the_create_call_carries_the_real_user_data_with_fresh_credentials(
        scope_builder: ScopeBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    b = scope_builder
    monkeypatch.setattr(server_step, "render_user_data", userdata.render_user_data)
    scope = b.scope()
    await server_step.reconcile(scope)

    ((server_id, text),) = b.servers.user_data.items()
    assert text.startswith("#cloud-config")
    agent_secret = b.kube.secrets[(b.namespace, f"{b.name}-agent")].data
    # The VM gets the credentials stored (and bound) for this very server.
    assert agent_secret["serverId"] == str(server_id)
    assert agent_secret["tokenSha256"] in text
    assert agent_secret["token"] not in text  # only the operator holds the token


async def test_a_recorded_server_is_waited_for_then_put_on_the_scope(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    server_id = await created(b)

    booting = b.scope()
    outcome = await server_step.reconcile(booting)
    assert b.servers.calls == [Call("get", (server_id,))]
    assert server_ready(booting) == (FALSE, Reason.SERVER_STARTING)
    assert outcome is not None and outcome.requeue == SETTINGS.boot_poll

    b.servers.boot(server_id)
    b.clear_calls()
    running = b.scope()
    assert await server_step.reconcile(running) is None
    assert b.servers.calls == [Call("get", (server_id,))]
    assert running.server is not None and running.server.id == server_id
    assert server_ready(running) == (TRUE, Reason.SERVER_RUNNING)
    assert running.status.started_at == b.clock()


async def test_our_server_found_by_its_uid_label_is_adopted_not_created(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    ours = b.add_our_server()
    scope = b.scope()
    await server_step.reconcile(scope)

    assert b.servers.calls == [Call("find_by_uid", (b.uid,))]
    assert b.servers.ids() == [ours.id]
    assert scope.status.server is not None and scope.status.server.id == ours.id
    assert Reason.SERVER_ADOPTED in b.reasons()


async def test_a_foreign_server_at_our_name_is_refused_and_left_alone(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    foreign = b.servers.add_foreign(b.label)
    scope = b.scope()
    outcome = await server_step.reconcile(scope)

    assert b.servers.calls == [Call("find_by_uid", (b.uid,)), Call("create", (b.label,)),
                               Call("find_by_name", (b.label,))]
    assert b.servers.servers == {foreign.id: foreign}  # not deleted, not changed
    assert scope.status.server is None
    assert server_ready(scope) == (FALSE, Reason.SERVER_NAME_TAKEN)
    assert outcome is not None and outcome.requeue == Wait.PERMANENT
    assert ("Warning", Reason.SERVER_NAME_TAKEN) in [(e.type, e.reason) for e in b.events]


async def test_a_lost_create_response_is_adopted_on_the_retry_without_a_duplicate(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    b.servers.lose_next_create_response()
    first = b.scope()
    outcome = await server_step.reconcile(first)
    b.save(first)
    # The server exists, but the step could not know: nothing recorded, retry soon.
    (server_id,) = b.servers.ids()
    assert first.status.server is None
    assert server_ready(first) == (FALSE, Reason.CLOUD_API_ERROR)
    assert outcome is not None and outcome.requeue == SETTINGS.boot_poll * 2

    b.clear_calls()
    retry = b.scope()
    await server_step.reconcile(retry)
    assert b.servers.calls == [Call("find_by_uid", (b.uid,))]  # no second create
    assert b.servers.ids() == [server_id]
    assert retry.status.server is not None and retry.status.server.id == server_id
    assert Reason.SERVER_ADOPTED in b.reasons()


async def test_uniqueness_error_from_a_retried_create_adopts_the_server_it_made(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    b.servers.lose_next_create_response(retried=True)
    scope = b.scope()
    await server_step.reconcile(scope)

    assert b.servers.calls == [Call("find_by_uid", (b.uid,)), Call("create", (b.label,)),
                               Call("find_by_name", (b.label,))]
    (server_id,) = b.servers.ids()
    assert scope.status.server is not None and scope.status.server.id == server_id
    assert server_ready(scope) == (FALSE, Reason.SERVER_CREATING)
    assert Reason.SERVER_ADOPTED in b.reasons()


async def test_a_server_deleted_out_of_band_is_reported_then_replaced(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    old_id = await running_server(b)
    b.servers.delete_out_of_band(old_id)
    b.clock.advance(SETTINGS.inventory_interval)  # the next listing is newer than the server

    missing = b.scope()
    outcome = await server_step.reconcile(missing)
    b.save(missing)
    # Absent from the inventory, confirmed by one GET before anything is recreated.
    assert b.servers.calls == [Call("list_managed"), Call("get", (old_id,))]
    assert missing.status.server is None
    assert server_ready(missing) == (FALSE, Reason.SERVER_MISSING)
    assert outcome is not None and outcome.requeue == Wait.REFUSED_SERVER
    assert Reason.SERVER_MISSING in b.reasons()

    b.clear_calls()
    replaced = b.scope()
    await server_step.reconcile(replaced)
    (new_id,) = b.servers.ids()
    assert new_id > old_id
    assert b.servers.calls == [Call("find_by_uid", (b.uid,)), Call("create", (b.label,))]
    assert replaced.status.server is not None and replaced.status.server.id == new_id


async def test_a_ready_server_newer_than_the_inventory_is_trusted_without_a_get(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    server_id = await running_server(b)

    steady = b.scope()
    assert await server_step.reconcile(steady) is None
    # One listing (shared by all workspaces of the project), no GET of this server.
    assert b.servers.calls == [Call("list_managed")]
    assert steady.server is not None and steady.server.id == server_id


async def test_a_server_a_listing_missed_is_confirmed_once_not_on_every_poll(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    first = b.scope()
    inventory = b.runtime.inventory(first.creds.hetzner_token, first.klass.hetzner_endpoint)
    await inventory.snapshot()  # listed before the server exists
    b.servers.clock = lambda: b.clock() - timedelta(seconds=5)  # Hetzner's clock behind
    server_id = await running_server(b)

    # The listing lacks the server yet looks newer than it: one GET finds it ...
    steady = b.scope()
    assert await server_step.reconcile(steady) is None
    assert b.servers.calls == [Call("get", (server_id,))]
    b.save(steady)
    b.clear_calls()
    # ... and later polls find it in the inventory, until the next listing.
    for _ in range(3):
        assert await server_step.reconcile(b.scope()) is None
    assert b.servers.calls == []


async def test_status_naming_a_foreign_server_clears_the_id_and_touches_nothing(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    foreign = b.servers.add_foreign("someone-elses-server")
    b.with_status({"server": {"id": foreign.id, "name": foreign.name}})
    scope = b.scope()
    outcome = await server_step.reconcile(scope)

    assert b.servers.calls == [Call("get", (foreign.id,))]
    assert b.servers.servers == {foreign.id: foreign}
    assert scope.status.server is None
    assert server_ready(scope) == (FALSE, Reason.SERVER_NOT_OURS)
    assert outcome is not None and outcome.requeue == Wait.REFUSED_SERVER
    assert ("Warning", Reason.SERVER_NOT_OURS) in [(e.type, e.reason) for e in b.events]


async def test_duplicate_servers_of_ours_keep_the_oldest_and_delete_the_rest(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    keep = b.add_our_server()
    extra = b.servers.add_server(f"{b.label}-2", b.labels())
    foreign = b.servers.add_foreign(f"{b.label}-3")
    scope = b.scope()
    await server_step.reconcile(scope)

    assert b.servers.calls == [Call("find_by_uid", (b.uid,)), Call("delete", (extra.id,))]
    assert b.servers.ids() == [keep.id, foreign.id]
    assert scope.status.server is not None and scope.status.server.id == keep.id
    assert "DuplicateServer" in b.reasons()


async def test_a_rate_limited_create_makes_nothing_and_waits(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    b.servers.fail_next("create", hetzner_error(ErrorKind.RATE_LIMITED, "rate_limit_exceeded",
                                                "limit reached"))
    scope = b.scope()
    outcome = await server_step.reconcile(scope)

    assert b.servers.ids() == []
    assert scope.status.server is None
    assert server_ready(scope) == (FALSE, Reason.RATE_LIMITED)
    assert outcome is not None and outcome.requeue == Wait.RATE_LIMITED


async def test_a_refused_server_type_says_so_and_waits_for_a_person(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    b.servers.fail_next("create", hetzner_error(ErrorKind.PERMANENT, "server_type_not_found",
                                                "server type cx23 not found"))
    scope = b.scope()
    outcome = await server_step.reconcile(scope)

    assert b.servers.ids() == []
    assert server_ready(scope) == (FALSE, Reason.SERVER_TYPE_NOT_FOUND)
    assert outcome is not None and outcome.requeue == Wait.PERMANENT
    assert ("Warning", Reason.SERVER_TYPE_NOT_FOUND) in [(e.type, e.reason) for e in b.events]


async def test_user_data_too_large_creates_nothing_and_waits_for_a_spec_change(
        scope_builder: ScopeBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    b = scope_builder

    def too_large(*args: Any, **kwargs: Any) -> str:
        raise userdata.UserDataTooLarge(40000, 32768, "shorten agent.instructions")

    monkeypatch.setattr(server_step, "render_user_data", too_large)
    scope = b.scope()
    outcome = await server_step.reconcile(scope)

    assert b.servers.calls == [Call("find_by_uid", (b.uid,))]  # no create call
    assert server_ready(scope) == (FALSE, Reason.USER_DATA_TOO_LARGE)
    assert outcome is not None
    assert outcome.requeue == SETTINGS.poll_interval * Wait.USER_DATA_TOO_LARGE_POLLS


async def test_delete_removes_our_server_and_waits_until_it_is_gone(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    ours = b.add_our_server()
    foreign = b.servers.add_foreign("someone-elses-server")
    b.with_status({"server": {"id": ours.id, "name": ours.name}})
    scope = b.scope()
    outcome = await server_step.delete(scope)
    b.save(scope)

    assert b.servers.calls == [Call("get", (ours.id,)), Call("delete", (ours.id,))]
    assert b.servers.ids() == [foreign.id]
    assert outcome is not None and outcome.requeue == SETTINGS.boot_poll

    b.clear_calls()
    gone = b.scope()
    assert await server_step.delete(gone) is None
    assert b.servers.calls == [Call("get", (ours.id,))]
    assert gone.status.server is None


async def test_delete_without_a_recorded_id_finds_ours_by_label_and_spares_others(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    ours = b.add_our_server()
    namesake = b.servers.add_foreign(f"{b.label}-x", {**b.labels(),
                                                       "agentspaces.dev/workspace-uid": "other"})
    scope = b.scope()
    await server_step.delete(scope)

    assert b.servers.calls == [Call("find_by_uid", (b.uid,)), Call("delete", (ours.id,))]
    assert b.servers.ids() == [namesake.id]


async def test_delete_refuses_a_foreign_server_named_in_status(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    foreign = b.servers.add_foreign("someone-elses-server")
    b.with_status({"server": {"id": foreign.id}})
    scope = b.scope()
    outcome = await server_step.delete(scope)

    assert b.servers.calls == [Call("get", (foreign.id,))]
    assert b.servers.ids() == [foreign.id]
    assert scope.status.server is None
    assert server_ready(scope) == (FALSE, Reason.SERVER_NOT_OURS)
    assert outcome is not None and outcome.requeue == Wait.REFUSED_SERVER
