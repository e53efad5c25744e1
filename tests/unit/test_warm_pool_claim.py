"""A workspace taking a warm-pool server (reconcile/warm_pool.claim, from the server
step): only a server the pool offered, still the pool's, with its credentials bound to
it; the credentials become the workspace's before the one rename-and-relabel request;
and otherwise the workspace's server is created as before."""

from __future__ import annotations

from dataclasses import replace

from agentspaces import metrics
from agentspaces.pki import generate
from agentspaces.reconcile import pool_policy, server_step, warm_pool
from agentspaces.reconcile.owned_secrets import SERVER_KEY
from agentspaces.runtime import PoolState
from tests.support.scope_builder import OPERATOR_NAMESPACE, ScopeBuilder

POOL_SERVER = {"type": "cx23", "location": "fsn1", "image": "debian-13"}


def _boots(source: str) -> float:
    return metrics.REGISTRY.get_sample_value("agentspaces_server_boots_total",
                                             {"source": source}) or 0.0


def _pooled(b: ScopeBuilder, slot: int, *, bound: bool = True) -> int:
    """A ready pool server of class `standard` in `slot`, its Secret bound to it."""
    server = b.servers.add_server(pool_policy.slot_name("standard", slot),
                                  pool_policy.labels("standard", slot, "debian-13"))
    creds = generate(server.name, b.clock())
    b.kube.add_secret(OPERATOR_NAMESPACE, pool_policy.secret_name("standard", slot),
                      {**creds.to_secret_data(),
                       SERVER_KEY: str(server.id) if bound else "999"})
    b.runtime.pools.setdefault("standard", PoolState()).ready.add(server.id)
    return server.id


def _with_pool(b: ScopeBuilder) -> ScopeBuilder:
    return b.with_class(server=POOL_SERVER, warmPool={"size": 2})


async def test_a_ready_pool_server_becomes_the_workspaces(
        scope_builder: ScopeBuilder) -> None:
    b = _with_pool(scope_builder)
    sid = _pooled(b, 0)
    before = _boots("pool")
    scope = b.scope()
    await server_step.reconcile(scope)
    assert scope.status.server is not None and scope.status.server.id == sid
    server = b.servers.servers[sid]
    assert server.name == b.label and dict(server.labels) == b.labels()
    assert b.servers.calls.methods().count("create") == 0
    pool_creds = b.kube.secrets[(OPERATOR_NAMESPACE, pool_policy.secret_name("standard", 0))]
    ours = b.kube.secrets[(b.namespace, f"{b.name}-agent")]
    assert ours.data["token"] == pool_creds.data["token"]
    assert ours.data[SERVER_KEY] == str(sid)
    assert b.runtime.pools["standard"].ready == set()
    assert _boots("pool") == before + 1
    assert "PoolClaim" in b.reasons()


async def test_no_offered_server_means_a_create(scope_builder: ScopeBuilder) -> None:
    b = _with_pool(scope_builder)
    scope = b.scope()
    await server_step.reconcile(scope)
    assert b.servers.calls.methods().count("create") == 1
    assert b.servers.calls.methods().count("relabel") == 0


async def test_a_workspace_booting_its_own_image_never_claims(
        scope_builder: ScopeBuilder) -> None:
    b = _with_pool(scope_builder).with_spec(server={"image": "ubuntu-24.04"})
    sid = _pooled(b, 0)
    await server_step.reconcile(b.scope())
    assert b.servers.calls.methods().count("relabel") == 0
    assert sid in b.runtime.pools["standard"].ready  # still on offer for the next one


async def test_a_server_no_longer_the_pools_or_not_bound_is_passed_over(
        scope_builder: ScopeBuilder) -> None:
    b = _with_pool(scope_builder)
    taken = _pooled(b, 0)
    b.servers.servers[taken] = replace(b.servers.servers[taken], labels={"someone": "else"})
    unbound = _pooled(b, 1, bound=False)
    scope = b.scope()
    await server_step.reconcile(scope)
    assert b.servers.calls.methods().count("relabel") == 0
    assert b.servers.calls.methods().count("create") == 1
    assert scope.status.server is not None and scope.status.server.id not in (taken, unbound)
    assert b.runtime.pools["standard"].ready == set()
    assert b.servers.servers[unbound].name == pool_policy.slot_name("standard", 1)


async def test_a_namespaced_class_or_no_pool_makes_no_pool_call(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder.with_class(server=POOL_SERVER)  # no warmPool
    _pooled(b, 0)
    scope = b.scope()
    assert await warm_pool.claim(scope) is None
    assert b.servers.calls.methods().count("get") == 0


async def test_a_server_of_the_class_previous_settings_is_passed_over(
        scope_builder: ScopeBuilder) -> None:
    b = _with_pool(scope_builder)
    old = _pooled(b, 0)
    b.servers.servers[old] = replace(b.servers.servers[old], server_type="cx33")
    await server_step.reconcile(b.scope())
    assert b.servers.calls.methods().count("relabel") == 0
    assert b.servers.calls.methods().count("create") == 1


# -- the pool's visit ------------------------------------------------------------------

def _class_body(b: ScopeBuilder) -> dict[str, object]:
    body = b.kube.classes["standard"]
    body.setdefault("metadata", {})["uid"] = "class-uid"
    return body


async def test_a_visit_fills_the_pool_with_bound_credentials_and_writes_status(
        scope_builder: ScopeBuilder) -> None:
    b = _with_pool(scope_builder)
    events: list[tuple[str, str, str]] = []
    delay = await warm_pool.visit(b.runtime, _class_body(b),
                                  lambda *e: events.append(e))
    assert delay == warm_pool.POLL_FILLING
    servers = b.servers.servers.values()
    assert sorted(s.name for s in servers) == ["pool-standard-0", "pool-standard-1"]
    for server in servers:
        slot = pool_policy.slot_of("standard", server)
        assert slot is not None
        secret = b.kube.secrets[(OPERATOR_NAMESPACE, pool_policy.secret_name("standard", slot))]
        assert secret.data[SERVER_KEY] == str(server.id)
        assert secret.owners[0].kind == "WorkspaceClass"
    status = b.kube.classes["standard"]["status"]["warmPool"]
    assert (status["size"], status["ready"], status["booting"]) == (2, 0, 2)
    assert [e[1] for e in events] == ["PoolServerCreated", "PoolServerCreated"]


async def test_a_class_without_a_pool_costs_no_call(scope_builder: ScopeBuilder) -> None:
    b = scope_builder.with_class(server=POOL_SERVER)
    assert await warm_pool.visit(b.runtime, _class_body(b), lambda *e: None) is None
    assert b.servers.calls == [] and "status" not in b.kube.classes["standard"]


async def test_a_delete_that_cannot_reach_the_project_says_so_and_retries(
        scope_builder: ScopeBuilder) -> None:
    b = _with_pool(scope_builder).without_secret("hcloud")
    events: list[tuple[str, str, str]] = []
    delay = await warm_pool.visit(b.runtime, _class_body(b), lambda *e: events.append(e),
                                  deleting=True)
    assert delay == warm_pool.RETRY_PROBLEM
    assert [e[1] for e in events] == ["PoolCleanupBlocked"]
    assert b.servers.calls == []
