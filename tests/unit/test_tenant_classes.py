"""A tenant's own class (NamespacedWorkspaceClass): the model refuses what admission
refuses, `credentials.resolve` reads the class and every Secret it names only in the
Workspace's own namespace, and nothing keyed by a class name (the class cache, server
labels, the class firewall) mixes up two tenants' classes of one name."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from agentspaces.api.enums import Reason
from agentspaces.api.model import (
    CLASS_SECRET_REFS,
    NamespacedWorkspaceClassSpecModel,
    WorkspaceClassSpecModel,
)
from agentspaces.api.types import WorkspaceClass
from agentspaces.class_inputs import ClassInputs
from agentspaces.clouds.hetzner import LABEL_CLASS
from agentspaces.reconcile.class_protection import OPERATOR_FINALIZER
from agentspaces.reconcile.credentials import CredentialsProblem, ResolvedCredentials, resolve
from agentspaces.reconcile.firewall_step import firewall_name
from tests.support.clock import WallClock
from tests.support.fakes import FakeKube
from tests.support.scope_builder import NOW, OPERATOR_NAMESPACE, ScopeBuilder

NSWC = "NamespacedWorkspaceClass"
REF = {"name": "s"}


def _spec(**extra: Any) -> dict[str, Any]:
    return {"hetzner": {"tokenSecretRef": {"name": "hcloud"}},
            "dns": {"zoneName": "team.example", "tokenSecretRef": {"name": "cloudflare"}},
            **extra}


def _with_ref(path: tuple[str, ...], ref: dict[str, Any]) -> dict[str, Any]:
    """A class spec with the Secret reference at `path` (CLASS_SECRET_REFS) set."""
    spec = _spec(storage={"endpoint": "https://r2.example", "bucket": "tenant-bucket",
                          "credentialsSecretRef": {"name": "r2"}},
                 encryption={"keySecretRef": {"name": "key"}})
    node = spec
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = ref
    if path[0] == "agentCredentials" and path[1] == "gateway":
        node["baseUrl"] = "https://llm.example"
    return spec


# -- the model ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", CLASS_SECRET_REFS, ids=[".".join(p) for p in CLASS_SECRET_REFS])
def test_a_namespaced_class_names_no_secret_in_another_namespace(path: tuple[str, ...]) -> None:
    spec = _with_ref(path, {**REF, "namespace": "team-b"})
    WorkspaceClassSpecModel.parse(spec)  # the cluster class may
    with pytest.raises(ValueError, match=f"{'.'.join(path)}.namespace: a {NSWC}'s Secrets"):
        NamespacedWorkspaceClassSpecModel.parse(spec)
    NamespacedWorkspaceClassSpecModel.parse(_with_ref(path, REF))


@pytest.mark.parametrize(("extra", "message"), [
    ({"allowedNamespaces": {"from": "All"}}, "only for its own namespace"),
    ({"wakeGateway": {"ipv4": "192.0.2.1"}}, "the wake gateway serves WorkspaceClasses only"),
    ({"warmPool": {"size": 1}}, "warm pools are for WorkspaceClasses"),
])
def test_a_namespaced_class_refuses_what_only_a_cluster_class_means(
        extra: dict[str, Any], message: str) -> None:
    WorkspaceClassSpecModel.parse(_spec(**extra))
    with pytest.raises(ValueError, match=message):
        NamespacedWorkspaceClassSpecModel.parse(_spec(**extra))


def test_the_class_view_knows_its_kind_namespace_and_cloud_name() -> None:
    body = {"kind": NSWC, "metadata": {"name": "dev", "namespace": "team-a"}, "spec": _spec()}
    klass = WorkspaceClass.from_body(body)
    assert (klass.namespaced, klass.namespace, klass.label_name) == (True, "team-a",
                                                                      "team-a_dev")
    assert klass.title == f"{NSWC} team-a/dev"
    cluster = WorkspaceClass.from_body({"metadata": {"name": "dev"}, "spec": _spec()})
    assert (cluster.namespaced, cluster.namespace, cluster.label_name) == (False, None, "dev")
    assert firewall_name(klass) != firewall_name(cluster)
    with pytest.raises(ValueError, match=r"metadata\.namespace"):
        WorkspaceClass.from_body({**body, "metadata": {"name": "dev"}})


# -- resolve -----------------------------------------------------------------------------

def _tenant(kube: FakeKube, namespace: str, token: str, *, storage: bool = False,
            key: bytes | None = None) -> None:
    """A namespaced class `dev` in `namespace` with its own Secrets there."""
    extra: dict[str, Any] = {}
    kube.add_secret(namespace, "hcloud", {"token": token})
    kube.add_secret(namespace, "cloudflare", {"token": f"cf-{token}"})
    if storage:
        extra = {"storage": {"endpoint": "https://r2.example", "bucket": f"b-{namespace}",
                             "credentialsSecretRef": {"name": "r2"}},
                 "encryption": {"keySecretRef": {"name": "key"}}}
        kube.add_secret(namespace, "r2", {"accessKeyId": f"id-{namespace}",
                                          "secretAccessKey": f"sk-{namespace}"})
        kube.add_secret(namespace, "key", {"key": base64.b64encode(key or b"k" * 32).decode()})
    kube.namespaced_classes[(namespace, "dev")] = {
        "kind": NSWC, "metadata": {"name": "dev", "namespace": namespace},
        "spec": _spec(**extra)}


def _workspace(kind: str | None = NSWC, **spec: Any) -> dict[str, Any]:
    return {"className": "dev", "repository": {"url": "https://github.com/example/app"},
            **({"classKind": kind} if kind else {}), **spec}


def _secret_namespaces(kube: FakeKube) -> set[object]:
    return {c.args[0] for c in kube.calls.only(["read_secret"])}


async def test_a_namespaced_class_and_all_its_secrets_come_from_the_workspace_namespace(
) -> None:
    kube = FakeKube()
    key_a, key_b = os.urandom(32), os.urandom(32)
    _tenant(kube, "team-a", "hz-a", storage=True, key=key_a)
    _tenant(kube, "team-b", "hz-b", storage=True, key=key_b)
    kube.classes["dev"] = {"metadata": {"name": "dev"}, "spec": _spec()}  # the platform's
    kube.add_secret(OPERATOR_NAMESPACE, "hcloud", {"token": "platform"})
    kube.add_secret(OPERATOR_NAMESPACE, "cloudflare", {"token": "platform"})

    got = await resolve(kube, _workspace(), "team-a", OPERATOR_NAMESPACE)
    assert isinstance(got, ResolvedCredentials)
    assert (got.hetzner_token, got.dns_token, got.storage_access_key) == ("hz-a", "cf-hz-a",
                                                                         "id-team-a")
    assert got.class_key == key_a  # the tenant's key wraps its backups' data keys
    assert _secret_namespaces(kube) == {"team-a"}
    assert kube.calls.only(["get_workspace_class"]) == []

    cluster = await resolve(kube, _workspace(kind=None), "team-a", OPERATOR_NAMESPACE)
    assert isinstance(cluster, ResolvedCredentials) and cluster.hetzner_token == "platform"


async def test_another_namespace_class_is_not_found_and_nothing_of_it_is_read() -> None:
    kube = FakeKube()
    _tenant(kube, "team-b", "hz-b")
    got = await resolve(kube, _workspace(), "team-a", OPERATOR_NAMESPACE)
    assert isinstance(got, CredentialsProblem) and got.reason == Reason.CLASS_NOT_FOUND
    assert got.message == f"{NSWC} team-a/dev not found"
    assert kube.calls.only(["get_namespaced_workspace_class"])[0].args == ("team-a", "dev")
    assert kube.calls.only(["read_secret"]) == []


async def test_a_class_naming_another_namespace_secret_is_refused_without_reading_it() -> None:
    """Admission refuses such a class; one that got past it (an older CRD) is refused
    here, before any Secret is read."""
    kube = FakeKube()
    _tenant(kube, "team-a", "hz-a")
    _tenant(kube, "team-b", "hz-b")
    kube.namespaced_classes[("team-a", "dev")]["spec"]["hetzner"]["tokenSecretRef"] = {
        "name": "hcloud", "namespace": "team-b"}
    got = await resolve(kube, _workspace(), "team-a", OPERATOR_NAMESPACE)
    assert isinstance(got, CredentialsProblem) and got.reason == Reason.CLASS_INVALID
    assert "hetzner.tokenSecretRef.namespace" in got.message
    assert kube.calls.only(["read_secret"]) == []


async def test_a_class_body_from_another_namespace_is_refused() -> None:
    kube = FakeKube()
    _tenant(kube, "team-b", "hz-b")
    kube.namespaced_classes[("team-a", "dev")] = kube.namespaced_classes[("team-b", "dev")]
    got = await resolve(kube, _workspace(), "team-a", OPERATOR_NAMESPACE)
    assert isinstance(got, CredentialsProblem) and got.reason == Reason.CLASS_INVALID
    assert kube.calls.only(["read_secret"]) == []


async def test_the_tenant_key_secret_gone_refuses_only_that_tenant() -> None:
    kube = FakeKube()
    _tenant(kube, "team-a", "hz-a", storage=True)
    _tenant(kube, "team-b", "hz-b", storage=True)
    del kube.secrets[("team-a", "key")]
    spec = _workspace(persistence={"enabled": True})
    gone = await resolve(kube, spec, "team-a", OPERATOR_NAMESPACE)
    assert isinstance(gone, CredentialsProblem) and gone.reason == Reason.SECRET_NOT_FOUND
    assert "team-a/key" in gone.message
    assert isinstance(await resolve(kube, spec, "team-b", OPERATOR_NAMESPACE),
                      ResolvedCredentials)


async def test_the_class_cache_keeps_kinds_and_namespaces_apart() -> None:
    kube, clock = FakeKube(), WallClock(NOW)
    _tenant(kube, "team-a", "hz-a")
    _tenant(kube, "team-b", "hz-b")
    kube.classes["dev"] = {"metadata": {"name": "dev"}, "spec": _spec()}
    inputs = ClassInputs(kube, 10, clock.monotonic)
    a = await inputs.workspace_class("dev", fresh=False, kind=NSWC, namespace="team-a")
    b = await inputs.workspace_class("dev", fresh=False, kind=NSWC, namespace="team-b")
    cluster = await inputs.workspace_class("dev", fresh=False)
    assert a is not None and b is not None and cluster is not None
    assert (a["metadata"]["namespace"], b["metadata"]["namespace"]) == ("team-a", "team-b")
    assert "namespace" not in cluster["metadata"]
    for namespace in ("team-a", "team-b"):
        got = await resolve(kube, _workspace(), namespace, OPERATOR_NAMESPACE,
                            shared=inputs, fresh=False)
        assert isinstance(got, ResolvedCredentials)
        assert got.hetzner_token == f"hz-{namespace[-1]}"


# -- a reconcile -------------------------------------------------------------------------

async def test_a_server_of_a_namespaced_class_carries_the_class_with_its_namespace() -> None:
    world = ScopeBuilder()  # workspace demo in team-a
    world.kube.add_secret("team-a", "hcloud", {"token": "hz-a"})
    world.kube.add_secret("team-a", "cloudflare", {"token": "cf-a"})
    world.kube.namespaced_classes[("team-a", "standard")] = {
        "kind": NSWC, "metadata": {"name": "standard", "namespace": "team-a",
                                   "finalizers": [OPERATOR_FINALIZER]},
        "spec": {**world.class_spec, "dns": {**world.class_spec["dns"]}}}
    del world.kube.classes["standard"]
    world.with_spec(classKind=NSWC)
    await world.reconcile()
    servers = list(world.servers.servers.values())
    assert len(servers) == 1 and servers[0].labels[LABEL_CLASS] == "team-a_standard"
    assert {c.args[0] for c in world.kube.calls.only(["read_secret"])} == {"team-a"}
