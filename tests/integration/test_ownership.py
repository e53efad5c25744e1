"""Names a Workspace does not own stay untouched: hostnames are claimed in the cluster
(a colliding name gets `NameTaken`, never the victim's server name or DNS records,
even while the victim is stopped), a recorded hostname survives the change of naming
scheme, and a Secret at one of a workspace's names that is not the workspace's is
reported (`SecretConflict`), never read into use, overwritten or deleted.

All against the real apiserver, the real operator process and the cloud emulators."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentspaces.api.hostnames import workspace_label
from tests.conftest import Kubectl
from tests.support.operator import OperatorProcess
from tests.support.stack import (
    OPERATOR_NAMESPACE,
    ZONE,
    Clouds,
    condition,
    install_class,
    running_clouds,
    running_s3,
    secret,
    start_operator,
    workspace,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "owners"
PERSIST_CLASS = "owners-persist"


@pytest.fixture(scope="module")
def clouds(kubectl: Kubectl) -> Iterator[Clouds]:
    with running_clouds(dead_end_block=23) as c, running_s3() as s3:
        install_class(kubectl, c, CLASS)
        install_class(kubectl, c, PERSIST_CLASS, storage=s3.storage())
        yield c


@pytest.fixture
def operator(control_plane, clouds: Clouds,  # type: ignore[no-untyped-def]
             tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = start_operator(control_plane.admin_kubeconfig, tmp_path)
    yield proc
    proc.stop()


def _ws(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any] | None:
    return kubectl.get_json("workspace", name, "-n", ns)


def _until(kubectl: Kubectl, name: str, ns: str, what: str, test: Any,
           timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: (w := _ws(kubectl, name, ns)) and test(w) and w, timeout, what)


def _running(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    return _until(kubectl, name, ns, f"{name} server and DNS ready", lambda w: all(
        condition(w, t).get("status") == "True" for t in ("ServerReady", "DNSReady")))


def _delete(kubectl: Kubectl, name: str, ns: str) -> None:
    kubectl("delete", "workspace", name, "-n", ns, "--wait=false")
    wait_for(lambda: _ws(kubectl, name, ns) is None, 60, f"{name} deleted")


def _servers_of(clouds: Clouds, uid: str) -> list[dict[str, Any]]:
    return [s for s in clouds.hetzner.servers.values()
            if s["labels"].get("agentspaces.dev/workspace-uid") == uid]


def _records_at(clouds: Clouds, label: str) -> list[dict[str, Any]]:
    host = f"{label}.{ZONE}"
    return [r for r in clouds.cloudflare.records()
            if r["name"] == host or r["name"].endswith("." + host)]


def _lease(kubectl: Kubectl, label: str) -> dict[str, Any] | None:
    return kubectl.get_json("lease", f"host-{label}", "-n", OPERATOR_NAMESPACE)


def _claim(label: str, holder: dict[str, Any]) -> str:
    meta = holder["metadata"]
    return yaml.safe_dump({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": f"host-{label}", "namespace": OPERATOR_NAMESPACE,
                     "annotations": {"agentspaces.dev/workspace":
                                     f"{meta['namespace']}/{meta['name']}"}},
        "spec": {"holderIdentity": meta["uid"]}})


def _secret_doc(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    doc = kubectl.get_json("secret", name, "-n", ns)
    assert doc is not None, f"Secret {name} is gone"
    return {"uid": doc["metadata"]["uid"], "rv": doc["metadata"]["resourceVersion"],
            "data": doc.get("data"), "labels": doc["metadata"].get("labels"),
            "owners": doc["metadata"].get("ownerReferences")}


def _conflict(kubectl: Kubectl, name: str, ns: str, secret_name: str) -> dict[str, Any]:
    ws = _until(kubectl, name, ns, f"{name} SecretConflict",
                lambda w: condition(w, "Ready").get("reason") == "SecretConflict")
    assert secret_name in condition(ws, "Ready")["message"]
    return ws


def test_long_names_cut_to_the_same_readable_part_get_distinct_hostnames(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    first, second = "project-" + "q" * 47, "project-" + "q" * 47 + "x"  # names <= 63
    for name in (first, second):
        kubectl.apply(workspace(name, namespace, CLASS))
    a, b = (_running(kubectl, n, namespace) for n in (first, second))
    la, lb = a["status"]["hostname"], b["status"]["hostname"]
    assert la != lb and len(la) <= 63 and len(lb) <= 63
    assert la[:-13] == lb[:-13]  # identical readable part: only the hash tells them apart
    assert {s["name"] for s in _servers_of(clouds, a["metadata"]["uid"])} == {la}
    assert {s["name"] for s in _servers_of(clouds, b["metadata"]["uid"])} == {lb}
    for ws, label in ((a, la), (b, lb)):
        assert (_lease(kubectl, label) or {}).get("spec", {}).get("holderIdentity") == \
            ws["metadata"]["uid"]
    for name in (first, second):
        _delete(kubectl, name, namespace)
    assert _lease(kubectl, la) is None and _lease(kubectl, lb) is None  # released


def test_a_claimed_hostname_is_never_handed_to_another_workspace(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    kubectl.apply(workspace("victim", namespace, CLASS))
    victim = _running(kubectl, "victim", namespace)
    victim_label = victim["status"]["hostname"]
    kubectl("patch", "workspace", "victim", "-n", namespace, "--type", "merge",
            "-p", '{"spec":{"running":false}}')
    _until(kubectl, "victim", namespace, "victim stopped",
           lambda w: w.get("status", {}).get("phase") == "Stopped")
    assert _records_at(clouds, victim_label) == []  # stopped: no record holds the name

    # An intruder whose label collides with the victim's meets the victim's claim.
    attacker_ns = f"{namespace}-x"
    kubectl("create", "namespace", attacker_ns)
    attacker_label = workspace_label("intruder", attacker_ns)
    kubectl.apply(_claim(attacker_label, victim))
    kubectl.apply(workspace("intruder", attacker_ns, CLASS))
    intruder = _until(kubectl, "intruder", attacker_ns, "intruder NameTaken",
                      lambda w: condition(w, "ServerReady").get("reason") == "NameTaken")
    assert attacker_label in condition(intruder, "ServerReady")["message"]
    assert intruder["status"]["phase"] == "Failed"
    assert condition(intruder, "Ready")["status"] == "False"
    assert _servers_of(clouds, intruder["metadata"]["uid"]) == []
    assert [s for s in clouds.hetzner.servers.values() if s["name"] == attacker_label] == []
    assert _records_at(clouds, attacker_label) == []
    assert not any(intruder["metadata"]["uid"] in (r.get("comment") or "")
                   for r in clouds.cloudflare.records())

    # The victim keeps its name and starts again.
    kubectl("patch", "workspace", "victim", "-n", namespace, "--type", "merge",
            "-p", '{"spec":{"running":true}}')
    restarted = _running(kubectl, "victim", namespace)
    assert restarted["status"]["hostname"] == victim_label
    assert [s["name"] for s in _servers_of(clouds, victim["metadata"]["uid"])] == \
        [victim_label]
    assert {r["name"] for r in _records_at(clouds, victim_label) if r["type"] == "A"} == \
        {f"{victim_label}.{ZONE}", f"*.{victim_label}.{ZONE}"}

    # Deleting the intruder leaves the claim it never held; deleting the victim frees
    # its own, and a claim whose holder is gone is taken over.
    _delete(kubectl, "intruder", attacker_ns)
    assert _lease(kubectl, attacker_label) is not None
    _delete(kubectl, "victim", namespace)
    assert _lease(kubectl, victim_label) is None
    kubectl.apply(workspace("intruder", attacker_ns, CLASS))
    heir = _running(kubectl, "intruder", attacker_ns)
    assert heir["status"]["hostname"] == attacker_label
    lease = _lease(kubectl, attacker_label)
    assert lease is not None and lease["spec"]["holderIdentity"] == heir["metadata"]["uid"]
    _delete(kubectl, "intruder", attacker_ns)
    assert _lease(kubectl, attacker_label) is None


def test_a_recorded_hostname_of_the_old_scheme_is_kept(
        control_plane, kubectl: Kubectl, clouds: Clouds, namespace: str,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    """A workspace from before the longer hash keeps its name: server and records."""
    legacy = f"legacy-{namespace}-1960e3"
    kubectl.apply(workspace("legacy", namespace, CLASS, running=False))
    kubectl("patch", "workspace", "legacy", "-n", namespace, "--subresource=status",
            "--type", "merge", "-p", yaml.safe_dump({"status": {"hostname": legacy}}))
    op = start_operator(control_plane.admin_kubeconfig, tmp_path)
    try:
        kubectl("patch", "workspace", "legacy", "-n", namespace, "--type", "merge",
                "-p", '{"spec":{"running":true}}')
        ws = _running(kubectl, "legacy", namespace)
        assert ws["status"]["hostname"] == legacy
        assert [s["name"] for s in _servers_of(clouds, ws["metadata"]["uid"])] == [legacy]
        assert {r["name"] for r in _records_at(clouds, legacy) if r["type"] == "A"} == \
            {f"{legacy}.{ZONE}", f"*.{legacy}.{ZONE}"}
        assert _records_at(clouds, workspace_label("legacy", namespace)) == []
        assert (_lease(kubectl, legacy) or {}).get("spec", {}).get("holderIdentity") == \
            ws["metadata"]["uid"]
        _delete(kubectl, "legacy", namespace)
        assert _lease(kubectl, legacy) is None
    finally:
        op.stop()


def test_a_users_secret_at_the_access_name_is_left_byte_for_byte(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    kubectl.apply(yaml.safe_dump(secret("demo-access", namespace,
                                        {"password": "the-users-own", "note": "unrelated"})))
    before = _secret_doc(kubectl, "demo-access", namespace)
    kubectl.apply(workspace("demo", namespace, CLASS))
    ws = _conflict(kubectl, "demo", namespace, "demo-access")
    assert ws["status"]["phase"] == "Failed"
    assert _servers_of(clouds, ws["metadata"]["uid"]) == []
    assert _secret_doc(kubectl, "demo-access", namespace) == before
    events = kubectl("get", "events", "-n", namespace, "-o", "yaml")
    assert "SecretConflict" in events and "the-users-own" not in events
    _delete(kubectl, "demo", namespace)
    assert _secret_doc(kubectl, "demo-access", namespace) == before


def test_a_secret_owned_by_another_object_is_not_deleted(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    kubectl("create", "configmap", "holder", "-n", namespace)
    holder = kubectl.get_json("configmap", "holder", "-n", namespace)
    assert holder is not None
    doc = secret("demo-agent", namespace, {"token": "belongs-to-the-configmap"})
    # Even the operator's own labels do not make it ours while another object owns it.
    doc["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "agentspaces",
                                 "agentspaces.dev/workspace": "demo",
                                 "agentspaces.dev/role": "agent"}
    doc["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap",
                                           "name": "holder",
                                           "uid": holder["metadata"]["uid"]}]
    kubectl.apply(yaml.safe_dump(doc))
    before = _secret_doc(kubectl, "demo-agent", namespace)
    kubectl.apply(workspace("demo", namespace, CLASS))
    ws = _conflict(kubectl, "demo", namespace, "demo-agent")
    assert _servers_of(clouds, ws["metadata"]["uid"]) == []
    assert _secret_doc(kubectl, "demo-agent", namespace) == before
    _delete(kubectl, "demo", namespace)
    assert _secret_doc(kubectl, "demo-agent", namespace) == before


def test_a_namesakes_leftover_secret_is_replaced_not_inherited(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    """A labelled Secret whose owner is a deleted Workspace of the same name (garbage
    collection has not run yet) is replaced: the new workspace gets its own password."""
    doc = secret("again-access", namespace, {"username": "agent", "password": "old-one"})
    doc["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "agentspaces",
                                 "agentspaces.dev/workspace": "again",
                                 "agentspaces.dev/role": "access"}
    doc["metadata"]["ownerReferences"] = [{
        "apiVersion": "agentspaces.dev/v1alpha1", "kind": "Workspace", "name": "again",
        "uid": "00000000-0000-4000-8000-000000000001"}]
    kubectl.apply(yaml.safe_dump(doc))
    stale = _secret_doc(kubectl, "again-access", namespace)
    kubectl.apply(workspace("again", namespace, CLASS))
    ws = _until(kubectl, "again", namespace, "again reconciled",
                lambda w: w.get("status", {}).get("hostname"))
    fresh = wait_for(lambda: (doc := kubectl.get_json("secret", "again-access", "-n",
                                                      namespace)) and
                     doc["metadata"]["uid"] != stale["uid"] and doc, 30,
                     "the stale Secret replaced")
    assert [o["uid"] for o in fresh["metadata"]["ownerReferences"]] == [ws["metadata"]["uid"]]
    assert fresh["data"]["password"] != stale["data"]["password"]
    _delete(kubectl, "again", namespace)


def test_a_backup_key_that_is_not_ours_survives_on_delete_delete(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    kubectl.apply(yaml.safe_dump(secret("vault-backup-key", namespace,
                                        {"wrappedKey": "someone-elses"})))
    before = _secret_doc(kubectl, "vault-backup-key", namespace)
    kubectl.apply(workspace("vault", namespace, PERSIST_CLASS,
                            persistence={"onDelete": "Delete"}))
    ws = _conflict(kubectl, "vault", namespace, "vault-backup-key")
    assert _servers_of(clouds, ws["metadata"]["uid"]) == []
    assert _secret_doc(kubectl, "vault-backup-key", namespace) == before
    _delete(kubectl, "vault", namespace)
    assert _secret_doc(kubectl, "vault-backup-key", namespace) == before
