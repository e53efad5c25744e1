"""A tenant's class and the Secrets a cleanup needs stay while Workspaces use them
(reconcile/class_protection.py): no server before they are protected, and a deleted
class waits for the last Workspace naming it, then lets go of only the Secrets no
remaining Workspace's class needs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agentspaces.api.enums import Phase
from agentspaces.kube import KubeError, Owner
from agentspaces.reconcile import class_protection, workspace
from agentspaces.reconcile.class_protection import IN_USE, OPERATOR_FINALIZER
from tests.support.fakes import FakeKube
from tests.support.scope_builder import SETTINGS, ScopeBuilder
from tests.unit.test_stop_at_gateway import run

NSWC = "NamespacedWorkspaceClass"
NS = "team-a"
CLEANUP = {"hcloud", "cloudflare", "r2", "key"}


def _spec(**names: str) -> dict[str, Any]:
    n = {"hetzner": "hcloud", "dns": "cloudflare", "storage": "r2", "key": "key",
         "agent": "claude", **names}
    return {"hetzner": {"tokenSecretRef": {"name": n["hetzner"]}},
            "dns": {"zoneName": "example.com", "tokenSecretRef": {"name": n["dns"]}},
            "storage": {"bucket": "b", "credentialsSecretRef": {"name": n["storage"]}},
            "encryption": {"keySecretRef": {"name": n["key"]}},
            "agentCredentials": {"apiKeySecretRef": {"name": n["agent"]}}}


def test_the_secrets_a_cleanup_needs_are_the_clouds_and_the_key() -> None:
    assert class_protection.cleanup_secrets(_spec()) == CLEANUP
    assert class_protection.cleanup_secrets({"hetzner": {"tokenSecretRef": {"name": "h"}}}) \
        == {"h"}
    assert class_protection.cleanup_secrets(None) == set()


def _world(finalized: bool = True) -> ScopeBuilder:
    """Workspace demo in team-a using the namespaced class `standard` and its Secrets."""
    b = ScopeBuilder()
    for name in ("hcloud", "cloudflare"):
        b.kube.add_secret(NS, name, {"token": f"{name}-token"})
    b.kube.add_secret(NS, "claude", {"apiKey": "sk-ant-api03-for-tests"})
    meta: dict[str, Any] = {"name": "standard", "namespace": NS}
    if finalized:
        meta["finalizers"] = [OPERATOR_FINALIZER]
    b.kube.namespaced_classes[(NS, "standard")] = {
        "kind": NSWC, "metadata": meta,
        "spec": {**b.class_spec, "agentCredentials": {"apiKeySecretRef": {"name": "claude"}}}}
    del b.kube.classes["standard"]
    b.with_spec(classKind=NSWC)
    return b


def _finalizers(kube: FakeKube, name: str) -> tuple[str, ...]:
    return kube.secrets[(NS, name)].finalizers


async def test_no_server_until_kopf_has_put_its_finalizer_on_the_class() -> None:
    b = _world(finalized=False)
    outcome = await b.reconcile()
    assert outcome.requeue is not None and not b.servers.servers
    assert not b.kube.calls.only(["set_secret_finalizers"])
    b.kube.namespaced_classes[(NS, "standard")]["metadata"]["finalizers"] = [OPERATOR_FINALIZER]
    await b.reconcile()
    assert len(b.servers.servers) == 1


async def test_the_cleanup_secrets_are_held_before_the_server_once_and_others_kept() -> None:
    b = _world()
    b.kube.secrets[(NS, "hcloud")] = replace(b.kube.secrets[(NS, "hcloud")],
                                             finalizers=("example.com/other",))
    await b.reconcile()
    assert len(b.servers.servers) == 1
    assert _finalizers(b.kube, "hcloud") == ("example.com/other", IN_USE)
    assert _finalizers(b.kube, "cloudflare") == (IN_USE,)
    assert _finalizers(b.kube, "claude") == ()  # Claude Code's credential: not for cleanup
    patched = len(b.kube.calls.only(["set_secret_finalizers"]))
    b.with_spec(running=False)
    for _ in range(4):
        await b.reconcile()
    b.with_spec(running=True)
    await b.reconcile()
    assert len(b.kube.calls.only(["set_secret_finalizers"])) == patched  # already held


async def test_a_cluster_class_is_never_touched() -> None:
    b = ScopeBuilder()
    await b.reconcile()
    assert len(b.servers.servers) == 1
    assert not b.kube.calls.only(["set_secret_finalizers", "get_namespaced_workspace_class"])


async def test_a_changed_secret_during_the_hold_waits_and_creates_nothing() -> None:
    b = _world()
    original = b.kube.set_secret_finalizers

    async def racing(namespace: str, name: str, current: Any, finalizers: Any) -> None:
        b.kube.add_secret(namespace, name, {"token": "rotated"})  # a newer version
        await original(namespace, name, current, finalizers)

    b.kube.set_secret_finalizers = racing  # type: ignore[method-assign]
    outcome = await b.reconcile()
    assert outcome.requeue is not None and not b.servers.servers
    assert _finalizers(b.kube, "hcloud") == ()


def _kube_with(classes: dict[str, dict[str, Any]], workspaces: dict[str, str]) -> FakeKube:
    kube = FakeKube()
    for name in {*CLEANUP, "claude", "hcloud-2"}:
        kube.add_secret(NS, name, {"token": "t"})
        kube.secrets[(NS, name)] = replace(kube.secrets[(NS, name)], finalizers=(IN_USE,))
    for name, spec in classes.items():
        kube.namespaced_classes[(NS, name)] = {"kind": NSWC, "spec": spec,
                                               "metadata": {"name": name, "namespace": NS}}
    for ws, klass in workspaces.items():
        kube.workspaces[(NS, ws)] = {"metadata": {"name": ws, "namespace": NS},
                                     "spec": {"className": klass, "classKind": NSWC}}
    kube.workspaces[(NS, "other")] = {"metadata": {"name": "other", "namespace": NS},
                                      "spec": {"className": "dev"}}  # a cluster class
    return kube


async def test_a_deleted_class_waits_for_the_workspaces_naming_it() -> None:
    kube = _kube_with({"dev": _spec()}, {"w1": "dev", "w2": "dev"})
    waiting = await class_protection.release(kube, NS, "dev", _spec())
    assert waiting == "Workspaces still use it: w1, w2"
    assert all(_finalizers(kube, n) == (IN_USE,) for n in CLEANUP)


async def test_a_deleted_class_lets_go_of_the_secrets_no_remaining_class_needs() -> None:
    # "dev" is deleted; "small" shares its DNS token and key and is still used.
    kube = _kube_with({"dev": _spec(), "small": _spec(hetzner="hcloud-2", storage="r2-x")},
                      {"w3": "small"})
    assert await class_protection.release(kube, NS, "dev", _spec()) is None
    assert _finalizers(kube, "hcloud") == () and _finalizers(kube, "r2") == ()
    assert _finalizers(kube, "cloudflare") == (IN_USE,) and _finalizers(kube, "key") == (IN_USE,)
    assert _finalizers(kube, "claude") == (IN_USE,)  # never this module's to release
    # The last class goes: everything it held is let go.
    del kube.workspaces[(NS, "w3")]
    assert await class_protection.release(kube, NS, "small", _spec(hetzner="hcloud-2")) is None
    assert _finalizers(kube, "cloudflare") == () and _finalizers(kube, "key") == ()
    assert _finalizers(kube, "hcloud-2") == ()


async def test_a_stopped_workspace_keeps_its_class_too() -> None:
    b = _world()
    await b.reconcile()
    b.with_spec(running=False)
    for _ in range(4):
        await b.reconcile()
        b.clock.advance(5)
    assert b.status.get("phase") == Phase.STOPPED
    waiting = await class_protection.release(b.kube, NS, "standard", b.class_spec)
    assert waiting == "Workspaces still use it: demo"


async def test_a_workspaces_agent_secret_is_kept_until_its_delete_is_done() -> None:
    b = ScopeBuilder()
    await run(b)
    agent = ("team-a", "demo-agent")
    assert b.kube.secrets[agent].finalizers == (IN_USE,)
    outcome = None
    for _ in range(6):
        visit = b.visit()
        outcome = await workspace.finalize(visit)
        b.save(visit)
        if outcome.requeue is None:
            break
        assert b.kube.secrets[agent].finalizers == (IN_USE,)  # still needed meanwhile
        b.clock.advance(SETTINGS.boot_poll)
    assert outcome is not None and outcome.requeue is None and not b.servers.servers
    assert b.kube.secrets[agent].finalizers == ()


async def test_a_namespace_whose_secrets_the_operator_may_not_read_does_not_block_a_delete(
) -> None:
    b = ScopeBuilder()  # never started: nothing of it was made
    original = b.kube.read_secret

    async def refused(namespace: str, name: str) -> Any:
        if namespace == b.namespace:
            raise KubeError(403, "forbidden")
        return await original(namespace, name)

    b.kube.read_secret = refused  # type: ignore[method-assign]
    outcome = await workspace.finalize(b.visit())
    assert outcome.requeue is None


async def test_a_stale_kept_secret_of_a_force_removed_namesake_is_let_go_then_replaced(
) -> None:
    b = ScopeBuilder()
    stale = Owner(api_version="agentspaces.dev/v1alpha1", kind="Workspace", name="demo",
                  uid="uid-of-a-deleted-namesake")
    b.kube.add_secret("team-a", "demo-agent", {"token": "old"}, owner=stale, labels={
        "app.kubernetes.io/managed-by": "agentspaces", "agentspaces.dev/workspace": "demo",
        "agentspaces.dev/role": "agent"})
    b.kube.secrets[("team-a", "demo-agent")] = replace(
        b.kube.secrets[("team-a", "demo-agent")], finalizers=(IN_USE, "x/y"))
    await run(b)
    calls = [(c.method, c.args[:2]) for c in b.kube.calls
             if c.method in ("set_secret_finalizers", "delete_secret")
             and c.args[:2] == ("team-a", "demo-agent")]
    assert calls[:2] == [("set_secret_finalizers", ("team-a", "demo-agent")),
                         ("delete_secret", ("team-a", "demo-agent"))]
    assert b.kube.calls.only(["set_secret_finalizers"])[0].args[2] == ("x/y",)
    assert b.kube.secrets[("team-a", "demo-agent")].owner_uids == (b.uid,)
