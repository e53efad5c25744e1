"""Tenants' own classes through the real apiserver, the operator running as its
ServiceAccount with the shipped RBAC: two namespaces, each with a NamespacedWorkspaceClass
of the same name and its own Hetzner project (token), Cloudflare zone and token, bucket
and backup key. Neither sees the other's servers; a Workspace cannot reach the other's
class; admission refuses a class naming a Secret elsewhere; one tenant's key opens only
its own backups; the class and the Secrets a cleanup needs are kept while in use, so
deleting one tenant's namespace (everything in it at once) removes its servers, records,
class and Secrets, and nothing of the other's."""

from __future__ import annotations

import base64
import copy
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import hcloud
import pytest
import yaml

from tests.conftest import REPO, Kubectl
from tests.support.operator import OperatorProcess
from tests.support.stack import (
    OPERATOR_NAMESPACE,
    Clouds,
    condition,
    install_namespaced_class,
    running_clouds,
    running_s3,
    secret,
    start_operator,
    workspace,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
NSWC = "NamespacedWorkspaceClass"
CLASS = "dev"  # both tenants' classes have this name
SA = "agentspaces-operator"
RBAC = list(yaml.safe_load_all((REPO / "manifests" / "rbac.yaml").read_text()))
OPERATOR_ROLE = next(d for d in RBAC if d["kind"] == "ClusterRole"
                     and d["metadata"]["name"] == SA)
PLATFORM_KEY = os.urandom(32)
FINALIZER = "agentspaces.dev/finalizer"
IN_USE = "agentspaces.dev/in-use"


@dataclass
class Tenant:
    namespace: str
    zone: str
    hetzner_token: str
    cloudflare_token: str
    key: bytes


@dataclass
class World:
    clouds: Clouds
    a: Tenant
    b: Tenant


def _apply(kubectl: Kubectl, manifest: str, dry_run: bool = False) -> tuple[int, str]:
    args = ["apply", "-f", "-"] + (["--dry-run=server"] if dry_run else [])
    result = kubectl.plane.kubectl_run(*args, kubeconfig=kubectl.kubeconfig, input=manifest,
                                       check=False)
    return result.returncode, result.stderr


@pytest.fixture(scope="module")
def world(kubectl: Kubectl) -> Iterator[World]:
    kubectl.plane.kubectl_run("wait", "--for=condition=Established", "--timeout=60s",
                              "crd/namespacedworkspaceclasses.agentspaces.dev")
    kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    kubectl.apply(yaml.safe_dump_all(RBAC))
    suffix = uuid.uuid4().hex[:6]
    with running_clouds(dead_end_block=43) as clouds, running_s3() as s3:
        tenants = []
        for team in ("a", "b"):
            tenant = Tenant(f"tenant-{team}-{suffix}", f"team-{team}.example.org",
                            f"hz-{team}-{uuid.uuid4().hex}", f"cf-{team}-{uuid.uuid4().hex}",
                            os.urandom(32))
            clouds.hetzner.add_project(tenant.hetzner_token)
            clouds.cloudflare.add_zone(tenant.zone)
            clouds.cloudflare.tokens[tenant.cloudflare_token] = {tenant.zone}
            bucket = f"backups-{team}-{suffix}"
            boto3.client("s3", endpoint_url=s3.url, aws_access_key_id=s3.access_key,
                         aws_secret_access_key=s3.secret_key,
                         region_name="us-east-1").create_bucket(Bucket=bucket)
            kubectl("create", "namespace", tenant.namespace)
            install_namespaced_class(
                kubectl, tenant.namespace, CLASS, zone=tenant.zone,
                hetzner=(clouds.hetzner.url, tenant.hetzner_token),
                cloudflare=(clouds.cloudflare.url, tenant.cloudflare_token),
                storage={**s3.storage(), "bucket": bucket}, class_key=tenant.key)
            tenants.append(tenant)
        # B also has a class A's Workspaces might try to name.
        install_namespaced_class(
            kubectl, tenants[1].namespace, "only-b", zone=tenants[1].zone,
            hetzner=(clouds.hetzner.url, tenants[1].hetzner_token),
            cloudflare=(clouds.cloudflare.url, tenants[1].cloudflare_token))
        yield World(clouds, tenants[0], tenants[1])


def _service_account_operator(control_plane, kubectl: Kubectl, tmp: Path  # type: ignore[no-untyped-def]
                              ) -> OperatorProcess:
    token = kubectl("create", "token", SA, "-n", OPERATOR_NAMESPACE, "--duration=1h").strip()
    kubeconfig = control_plane.write_kubeconfig(f"sa-{tmp.name}",
                                                control_plane.kubeconfig_for_token(token))
    return start_operator(kubeconfig, tmp)


def _ws(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    return kubectl.get_json("workspace", name, "-n", ns) or {}


def _until(kubectl: Kubectl, name: str, ns: str, what: str, test: Any,
           timeout: float = 30) -> dict[str, Any]:
    return wait_for(lambda: (w := _ws(kubectl, name, ns)) and test(w) and w, timeout, what)


def _reason(ws: dict[str, Any], type_: str) -> str | None:
    return condition(ws, type_).get("reason")


def _server_ready(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    return _until(kubectl, name, ns, f"{name} has a server",
                  lambda w: condition(w, "ServerReady").get("status") == "True"
                  and condition(w, "DNSReady").get("status") == "True")


def _running(kubectl: Kubectl, name: str, ns: str, running: bool) -> None:
    kubectl("patch", "workspace", name, "-n", ns, "--type=merge", "-p",
            json.dumps({"spec": {"running": running}}))


def _tenant_ws(name: str, tenant: Tenant, on_delete: str = "Delete", **spec: Any) -> str:
    return workspace(name, tenant.namespace, CLASS, classKind=NSWC,
                     persistence={"enabled": True, "onDelete": on_delete}, **spec)


def _key_secret(tenant: Tenant, key: bytes) -> str:
    return yaml.safe_dump(secret(f"{CLASS}-key", tenant.namespace,
                                 {"key": base64.b64encode(key).decode()}))


def _names(clouds: Clouds, tenant: Tenant) -> set[str]:
    return {s["name"] for s in clouds.hetzner.project_servers(tenant.hetzner_token).values()}


def _record_owners(clouds: Clouds, tenant: Tenant) -> set[str]:
    """The uids in the records' ownership comments (agentspaces:<uid> <ns>/<name>)."""
    return {(r.get("comment") or "").split(" ")[0] for r in clouds.cloudflare.records(tenant.zone)}


def test_two_tenants_with_their_own_accounts_never_touch_each_other(
        control_plane, kubectl: Kubectl, world: World, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clouds, a, b = world.clouds, world.a, world.b
    op = _service_account_operator(control_plane, kubectl, tmp_path)
    try:
        for manifest in (_tenant_ws("a1", a), _tenant_ws("a2", a, on_delete="Retain"),
                         _tenant_ws("b1", b)):
            kubectl.apply(manifest)
        a1, a2, b1 = (_server_ready(kubectl, n, t.namespace)
                      for n, t in (("a1", a), ("a2", a), ("b1", b)))

        # Each project holds only its tenant's servers, labelled with the namespaced
        # class; B's token lists none of A's (and the platform's project is untouched).
        assert _names(clouds, a) == {a1["status"]["hostname"], a2["status"]["hostname"]}
        assert _names(clouds, b) == {b1["status"]["hostname"]}
        assert clouds.hetzner.servers == {}
        b_client = hcloud.Client(token=b.hetzner_token, api_endpoint=clouds.hetzner.url)
        assert {s.name for s in b_client.servers.get_all()} == _names(clouds, b)
        for server in clouds.hetzner.project_servers(a.hetzner_token).values():
            assert server["labels"]["agentspaces.dev/class"] == f"{a.namespace}_{CLASS}"
        # ... and each zone only its tenant's records.
        assert _record_owners(clouds, a) == {f"agentspaces:{w['metadata']['uid']}"
                                             for w in (a1, a2)}
        assert _record_owners(clouds, b) == {f"agentspaces:{b1['metadata']['uid']}"}

        # A Workspace in A cannot reach B's class: it is looked up in A only.
        kubectl.apply(workspace("stray", a.namespace, "only-b", classKind=NSWC))
        stray = _until(kubectl, "stray", a.namespace, "ClassNotFound",
                       lambda w: _reason(w, "CredentialsAvailable") == "ClassNotFound")
        assert f"{NSWC} {a.namespace}/only-b not found" in \
            condition(stray, "CredentialsAvailable")["message"]
        assert "server" not in stray["status"]
        assert len(_names(clouds, a)) == 2 and len(_names(clouds, b)) == 1

        # Each data key is wrapped by its tenant's key: with the platform's key in its
        # place A's workspace does not start (WrongKey, no server); B's does.
        for name, tenant in (("a1", a), ("b1", b)):
            _running(kubectl, name, tenant.namespace, False)
        for name, tenant in (("a1", a), ("b1", b)):
            _until(kubectl, name, tenant.namespace, f"{name} stopped",
                   lambda w: w["status"].get("phase") == "Stopped")
        kubectl.apply(_key_secret(a, PLATFORM_KEY))
        _running(kubectl, "a1", a.namespace, True)
        refused = _until(kubectl, "a1", a.namespace, "WrongKey",
                         lambda w: _reason(w, "BackupRestored") == "WrongKey")
        assert "server" not in refused["status"]
        assert len(_names(clouds, a)) == 1  # a2 only: a1 got no server
        # a1 is stopped before A's own key comes back, or its retried start would
        # (rightly) succeed with it.
        _running(kubectl, "a1", a.namespace, False)
        _until(kubectl, "a1", a.namespace, "a1's stop seen",
               lambda w: w["status"].get("observedGeneration") == w["metadata"]["generation"]
               and w["status"].get("phase") == "Stopped", timeout=90)
        kubectl.apply(_key_secret(a, a.key))
        _running(kubectl, "b1", b.namespace, True)
        b1 = _server_ready(kubectl, "b1", b.namespace)
        assert _reason(b1, "BackupRestored") != "WrongKey"
        assert len(_names(clouds, a)) == 1  # still a2 only

        # What a cleanup needs is kept while in use: the class by the operator's
        # finalizer, its Secrets and each workspace's agent and data-key Secrets by
        # agentspaces.dev/in-use.
        nswc = kubectl.get_json(NSWC.lower(), CLASS, "-n", a.namespace)
        assert nswc is not None and FINALIZER in nswc["metadata"]["finalizers"]
        kept = [f"{CLASS}-hetzner", f"{CLASS}-cloudflare", f"{CLASS}-r2", f"{CLASS}-key",
                "a2-agent", "a2-backup-key"]
        for name in kept:
            held = kubectl.get_json("secret", name, "-n", a.namespace)
            assert held is not None and IN_USE in held["metadata"]["finalizers"], name

        # Deleting tenant A's namespace, as the namespace controller would (this control
        # plane runs none): the namespace terminates (no new object in it), and its
        # Workspaces, class and Secrets are all deleted at once. Their servers and records
        # go with A's own token (no VM answers here, so there is no last backup: the
        # kept Secrets' part in one is in tests/unit/test_backup_step.py), then the
        # class and its Secrets; nothing of B's is touched.
        kubectl("delete", "namespace", a.namespace, "--wait=false")
        kubectl("delete", "workspaces,namespacedworkspaceclasses,secrets", "--all", "-n",
                a.namespace, "--wait=false")
        wait_for(lambda: not any(_ws(kubectl, n, a.namespace) for n in ("a1", "a2", "stray")),
                 90, "A's workspaces deleted")
        assert _names(clouds, a) == set() and clouds.cloudflare.records(a.zone) == []
        wait_for(lambda: kubectl.get_json(NSWC.lower(), CLASS, "-n", a.namespace) is None,
                 30, "A's class gone once its Workspaces are")
        wait_for(lambda: not any(kubectl.get_json("secret", n, "-n", a.namespace)
                                 for n in kept), 30, "A's kept Secrets gone")
        assert _names(clouds, b) == {b1["status"]["hostname"]}
        assert _record_owners(clouds, b) == {f"agentspaces:{b1['metadata']['uid']}"}
        assert condition(_ws(kubectl, "b1", b.namespace), "ServerReady")["status"] == "True"
        assert kubectl.get_json("secret", "b1-backup-key", "-n", b.namespace) is not None
        assert kubectl.get_json(NSWC.lower(), CLASS, "-n", b.namespace) is not None
    finally:
        op.stop()


@pytest.mark.parametrize(("field", "value", "message"), [
    (("hetzner", "tokenSecretRef"), {"name": "dev-hetzner", "namespace": OPERATOR_NAMESPACE},
     "hetzner.tokenSecretRef.namespace: a NamespacedWorkspaceClass's Secrets are in its own"),
    (("encryption", "keySecretRef"), {"name": "dev-key", "namespace": "tenant-b"},
     "encryption.keySecretRef.namespace"),
    (("allowedNamespaces",), {"from": "All"}, "only for its own namespace"),
    (("warmPool",), {"size": 2}, "warm pools are for WorkspaceClasses"),
])
def test_admission_refuses_a_namespaced_class_reaching_outside_its_namespace(
        kubectl: Kubectl, world: World, field: tuple[str, ...], value: Any,
        message: str) -> None:
    body = kubectl.get_json(NSWC.lower(), CLASS, "-n", world.b.namespace)
    assert body is not None
    spec = copy.deepcopy(body["spec"])
    node = spec
    for part in field[:-1]:
        node = node[part]
    node[field[-1]] = value
    manifest = yaml.safe_dump({"apiVersion": "agentspaces.dev/v1alpha1", "kind": NSWC,
                               "metadata": {"name": "reach", "namespace": world.b.namespace},
                               "spec": spec})
    code, err = _apply(kubectl, manifest, dry_run=True)
    assert code != 0 and message in err, err


def test_the_operator_needs_its_rule_for_namespaced_classes(
        control_plane, kubectl: Kubectl, world: World, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Removing the shipped rule (get namespacedworkspaceclasses) breaks a tenant's
    workspace: the RBAC stays least-privilege with this rule in it."""
    reduced = copy.deepcopy(OPERATOR_ROLE)
    reduced["rules"] = [r for r in reduced["rules"]
                        if r["resources"] != ["namespacedworkspaceclasses"]]
    assert len(reduced["rules"]) == len(OPERATOR_ROLE["rules"]) - 1
    kubectl.apply(yaml.safe_dump(reduced))
    op = _service_account_operator(control_plane, kubectl, tmp_path)
    try:
        kubectl.apply(_tenant_ws("denied", world.b))
        ws = _until(kubectl, "denied", world.b.namespace, "refused",
                    lambda w: _reason(w, "CredentialsAvailable") == "ClassNotFound")
        assert "403" in condition(ws, "CredentialsAvailable")["message"]
        assert "server" not in ws["status"]
    finally:
        op.stop()
        kubectl.apply(yaml.safe_dump(OPERATOR_ROLE))
        kubectl("delete", "workspace", "denied", "-n", world.b.namespace, "--wait=false")
