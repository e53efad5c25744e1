"""A Workspace becomes exactly one Hetzner server, through the real apiserver, the real
kubectl, the real operator process and the Hetzner emulator (driven by hcloud)."""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import hcloud
import pytest
import yaml
from cryptography import x509
from hcloud.images import Image
from hcloud.server_types import ServerType

from agentspaces.api.hostnames import workspace_label
from agentspaces.pki import certificate_fingerprint
from tests.conftest import Kubectl
from tests.support.operator import OperatorProcess
from tests.support.stack import (
    Clouds,
    condition,
    install_class,
    running_clouds,
    start_operator,
    workspace,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "servers"


@pytest.fixture(scope="module")
def clouds() -> Iterator[Clouds]:
    with running_clouds(dead_end_block=9) as c:
        yield c


@pytest.fixture(scope="module")
def operator(control_plane, kubectl: Kubectl, clouds: Clouds,  # type: ignore[no-untyped-def]
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_class(kubectl, clouds, CLASS)
    proc = start_operator(control_plane.admin_kubeconfig, tmp_path_factory.mktemp("op"))
    yield proc
    proc.stop()


def _servers(clouds: Clouds, uid: str) -> list[dict]:
    return [s for s in clouds.hetzner.servers.values()
            if s["labels"].get("agentspaces.dev/workspace-uid") == uid]


def _ws(kubectl: Kubectl, name: str, ns: str) -> dict | None:
    return kubectl.get_json("workspace", name, "-n", ns)


def test_apply_creates_one_server_and_delete_removes_it(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    clouds.hetzner.reset_calls()
    clouds.cloudflare.reset_counts()
    kubectl.apply(workspace("alpha", namespace, CLASS))

    def server_ready() -> dict | None:
        ws = _ws(kubectl, "alpha", namespace)
        return ws if condition(ws, "ServerReady").get("status") == "True" else None

    ws = wait_for(server_ready, 60, "ServerReady=True")
    uid = ws["metadata"]["uid"]
    status = ws["status"]
    servers = _servers(clouds, uid)
    assert len(servers) == 1
    assert status["server"]["id"] == servers[0]["id"]
    assert status["server"]["ipv4"] == servers[0]["public_net"]["ipv4"]["ip"]
    assert status["server"]["type"] == "cx23" and status["server"]["location"] == "fsn1"
    assert servers[0]["name"] == status["hostname"]
    assert servers[0]["labels"]["agentspaces.dev/namespace"] == namespace
    assert ws["metadata"]["finalizers"] == ["agentspaces.dev/finalizer"]
    assert status["observedGeneration"] == ws["metadata"]["generation"]
    # The DNS step ran too: both names point at the server.
    wait_for(lambda: condition(_ws(kubectl, "alpha", namespace), "DNSReady")
             .get("status") == "True", 30, "DNSReady=True")
    records = {(r["type"], r["name"]) for r in clouds.cloudflare.records()
               if uid in (r.get("comment") or "")}
    host = f"{status['hostname']}.example.test"
    assert records == {("A", host), ("A", f"*.{host}"), ("AAAA", host), ("AAAA", f"*.{host}")}
    for record in clouds.cloudflare.records():
        if uid in (record.get("comment") or ""):
            assert record["content"] in (status["server"]["ipv4"], status["server"]["ipv6"])
            assert record["comment"].startswith(f"agentspaces:{uid}")
    # Once ready, polling costs no Cloudflare call and no Hetzner call of its own: only
    # the shared inventory list, once per inventory interval (3 s here).
    cf_before, hz_before = clouds.cloudflare.total_calls, Counter(clouds.hetzner.calls)
    started = time.monotonic()
    time.sleep(4)  # ~4 polls
    elapsed = time.monotonic() - started
    assert clouds.cloudflare.total_calls == cf_before
    during = Counter(clouds.hetzner.calls) - hz_before
    assert set(during) <= {"GET /servers"}, during
    assert during["GET /servers"] <= 1 + int(elapsed // 3)

    kubectl("delete", "workspace", "alpha", "-n", namespace, "--wait=false")
    wait_for(lambda: _ws(kubectl, "alpha", namespace) is None, 60, "Workspace gone")
    assert _servers(clouds, uid) == []
    assert [r for r in clouds.cloudflare.records() if uid in (r.get("comment") or "")] == []
    calls = clouds.hetzner.calls
    writes = calls["POST /servers"] + calls["DELETE /servers/{id}"]
    print(f"\nHetzner calls for one create+delete: {sum(calls.values())} "
          f"({dict(calls)}); writes: {writes}")
    print(f"Cloudflare calls for one create+delete: {clouds.cloudflare.total_calls} "
          f"({dict(clouds.cloudflare.calls)}); writes: {clouds.cloudflare.writes}")
    assert calls["POST /servers"] == 1 and calls["DELETE /servers/{id}"] == 1
    # Two records (host + wildcard) per address family, created once and deleted once.
    assert clouds.cloudflare.writes == 8

    # No garbage collector here, so alpha's Secrets outlived it; a new Workspace with the
    # same name must not inherit its password or agent credentials.
    old_secret = kubectl.get_json("secret", "alpha-access", "-n", namespace)
    assert old_secret is not None
    kubectl.apply(workspace("alpha", namespace, CLASS))
    again = wait_for(server_ready, 60, "the new alpha ServerReady=True")
    new_secret = kubectl.get_json("secret", "alpha-access", "-n", namespace)
    assert new_secret is not None
    assert [o["uid"] for o in new_secret["metadata"]["ownerReferences"]] == \
        [again["metadata"]["uid"]]
    assert new_secret["data"]["password"] != old_secret["data"]["password"]
    kubectl("delete", "workspace", "alpha", "-n", namespace, "--wait=false")
    wait_for(lambda: _ws(kubectl, "alpha", namespace) is None, 60, "second alpha gone")


def test_crash_between_create_and_status_write_leaves_one_server(
        control_plane, kubectl: Kubectl, clouds: Clouds, namespace: str,  # type: ignore[no-untyped-def]
        operator: OperatorProcess, tmp_path: Path) -> None:
    # The module's operator steps aside; this test runs its own so it can kill it.
    operator.stop()
    try:
        crashing = start_operator(control_plane.admin_kubeconfig, tmp_path, "crashing")
        clouds.hetzner.faults.hold_create_response(30)
        kubectl.apply(workspace("crash", namespace, CLASS))
        ws = wait_for(lambda: _ws(kubectl, "crash", namespace), 10, "workspace")
        uid = ws["metadata"]["uid"]
        wait_for(lambda: _servers(clouds, uid), 30, "server created in the emulator")
        crashing.kill()  # before the create response (and the server id) arrived
        clouds.hetzner.faults.clear()
        assert (_ws(kubectl, "crash", namespace) or {}).get("status", {}).get("server") is None

        restarted = start_operator(control_plane.admin_kubeconfig, tmp_path, "restarted")
        try:
            ws = wait_for(lambda: (w := _ws(kubectl, "crash", namespace)) and
                          condition(w, "ServerReady").get("status") == "True" and w,
                          60, "ServerReady after restart")
            servers = _servers(clouds, uid)
            assert len(servers) == 1
            assert ws["status"]["server"]["id"] == servers[0]["id"]
            events = kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.name=crash", "-o",
                             "jsonpath={.items[*].reason}")
            assert "Adopted" in events.split()
            kubectl("delete", "workspace", "crash", "-n", namespace, "--wait=false")
            wait_for(lambda: _ws(kubectl, "crash", namespace) is None, 60, "deleted")
            assert _servers(clouds, uid) == []
        finally:
            restarted.stop()
    finally:
        operator.start()


def test_rate_limits_and_outages_converge_to_one_server(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    clouds.hetzner.faults.add(429, duration=4)
    clouds.hetzner.faults.add(503, duration=6, method="POST")
    clouds.cloudflare.inject(429, times=3)
    kubectl.apply(workspace("stormy", namespace, CLASS))
    ws = wait_for(lambda: (w := _ws(kubectl, "stormy", namespace)) and
                  condition(w, "DNSReady").get("status") == "True" and w, 120,
                  "converged despite 429/503")
    uid = ws["metadata"]["uid"]
    assert len(_servers(clouds, uid)) == 1
    records = [r for r in clouds.cloudflare.records() if uid in (r.get("comment") or "")]
    assert len(records) == 4  # A and AAAA for the host and its wildcard, no duplicates
    hits = [r.hits for r in clouds.hetzner.faults.rules]
    clouds.hetzner.faults.clear()
    assert sum(hits) > 0 or clouds.hetzner.calls["POST /servers"] >= 1
    kubectl("delete", "workspace", "stormy", "-n", namespace, "--wait=false")
    wait_for(lambda: _ws(kubectl, "stormy", namespace) is None, 60, "deleted")


def test_missing_credentials_is_a_condition_not_a_cloud_call(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    clouds.hetzner.reset_calls()
    kubectl.apply(workspace("nocreds", namespace, "no-such-class"))
    ws = wait_for(lambda: (w := _ws(kubectl, "nocreds", namespace)) and
                  condition(w, "CredentialsAvailable").get("status") == "False" and w,
                  30, "CredentialsAvailable=False")
    cond = condition(ws, "CredentialsAvailable")
    assert cond["reason"] == "ClassNotFound"
    assert "no-such-class" in cond["message"]
    assert ws["status"]["phase"] == "Pending"
    assert condition(ws, "Ready")["status"] == "False"
    assert sum(clouds.hetzner.calls.values()) == 0
    # Missing API key Secret for an existing class: same, with the Secret named.
    kubectl.apply(workspace("nokey", namespace, CLASS,
                            agent={"apiKeySecretRef": {"name": "anthropic"}}))
    ws = wait_for(lambda: (w := _ws(kubectl, "nokey", namespace)) and
                  condition(w, "CredentialsAvailable").get("status") == "False" and w,
                  30, "CredentialsAvailable=False for the key")
    assert condition(ws, "CredentialsAvailable")["reason"] == "SecretNotFound"
    assert f"{namespace}/anthropic" in condition(ws, "CredentialsAvailable")["message"]
    assert sum(clouds.hetzner.calls.values()) == 0
    # Deleting a workspace that never got a server needs no cloud either.
    kubectl("delete", "workspace", "nocreds", "nokey", "-n", namespace, "--wait=false")
    wait_for(lambda: _ws(kubectl, "nocreds", namespace) is None
             and _ws(kubectl, "nokey", namespace) is None, 30, "deleted")


def test_server_deleted_out_of_band_is_recreated(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    kubectl.apply(workspace("drift", namespace, CLASS))
    ws = wait_for(lambda: (w := _ws(kubectl, "drift", namespace)) and
                  condition(w, "ServerReady").get("status") == "True" and w, 60, "ready")
    first = ws["status"]["server"]["id"]
    uid = ws["metadata"]["uid"]
    wait_for(lambda: condition(_ws(kubectl, "drift", namespace), "DNSReady")
             .get("status") == "True", 30, "DNS ready")
    ids_before = {r["id"] for r in clouds.cloudflare.records() if uid in (r.get("comment") or "")}
    clouds.cloudflare.reset_counts()
    # Deleted behind the operator's back, e.g. from the Hetzner console.
    client = hcloud.Client(token=clouds.hetzner_token, api_endpoint=clouds.hetzner.url)
    client.servers.get_by_id(first).delete()
    ws = wait_for(lambda: (w := _ws(kubectl, "drift", namespace)) and
                  (w["status"].get("server") or {}).get("id") not in (None, first) and
                  condition(w, "ServerReady").get("status") == "True" and w,
                  60, "a replacement server")
    assert len(_servers(clouds, uid)) == 1
    # The new IP is written into the same records (PATCH), never as duplicates.
    ws = wait_for(lambda: (w := _ws(kubectl, "drift", namespace)) and
                  condition(w, "DNSReady").get("status") == "True" and w, 30, "DNS updated")
    ours = [r for r in clouds.cloudflare.records() if uid in (r.get("comment") or "")]
    assert {r["id"] for r in ours} == ids_before
    assert {r["content"] for r in ours if r["type"] == "A"} == {ws["status"]["server"]["ipv4"]}
    assert clouds.cloudflare.calls["POST /zones/{id}/dns_records"] == 0
    assert clouds.cloudflare.calls["PATCH /zones/{id}/dns_records/{id}"] >= 2
    kubectl("delete", "workspace", "drift", "-n", namespace, "--wait=false")
    wait_for(lambda: _ws(kubectl, "drift", namespace) is None, 60, "deleted")


def test_foreign_record_at_our_name_is_reported_and_left_alone(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    label = workspace_label("taken", namespace)
    host = f"{label}.example.test"
    foreign = clouds.cloudflare.seed_record("example.test", "A", host, "198.51.100.7")
    kubectl.apply(workspace("taken", namespace, CLASS))
    ws = wait_for(lambda: (w := _ws(kubectl, "taken", namespace)) and
                  condition(w, "DNSReady").get("reason") == "NameTaken" and w, 60,
                  "DNSReady NameTaken")
    cond = condition(ws, "DNSReady")
    assert cond["status"] == "False" and host in cond["message"]
    assert condition(ws, "Ready")["status"] == "False"
    untouched = [r for r in clouds.cloudflare.records() if r["name"] == host and r["type"] == "A"]
    assert untouched == [foreign]
    kubectl("delete", "workspace", "taken", "-n", namespace, "--wait=false")
    wait_for(lambda: _ws(kubectl, "taken", namespace) is None, 60, "deleted")
    assert foreign in clouds.cloudflare.records()  # still there after our cleanup
    assert [r for r in clouds.cloudflare.records()
            if ws["metadata"]["uid"] in (r.get("comment") or "")] == []


def _agent_secret(kubectl: Kubectl, name: str, ns: str) -> dict[str, str]:
    secret = kubectl.get_json("secret", f"{name}-agent", "-n", ns)
    assert secret is not None
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def _user_data_file(user_data: str | None, suffix: str) -> str:
    assert user_data is not None
    for entry in yaml.safe_load(user_data)["write_files"]:
        if entry["path"].endswith(suffix):
            if entry.get("encoding") == "gz+b64":
                return gzip.decompress(base64.b64decode(entry["content"])).decode()
            return str(entry["content"])
    raise AssertionError(f"no {suffix} in the user-data")


def _patch_running(kubectl: Kubectl, name: str, ns: str, running: bool) -> None:
    kubectl("patch", "workspace", name, "-n", ns, "--type=merge", "-p",
            json.dumps({"spec": {"running": running}}))


def test_each_server_gets_its_own_short_lived_agent_credentials(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds, namespace: str) -> None:
    # The attack: a key taken from one server (its disk, a snapshot, a backup of it)
    # must not let anyone pose as the agent of the workspace's next server.
    kubectl.apply(workspace("rotate", namespace, CLASS))
    ws = wait_for(lambda: (w := _ws(kubectl, "rotate", namespace)) and
                  condition(w, "ServerReady").get("status") == "True" and w, 60, "ready")
    first = ws["status"]["server"]["id"]
    old = _agent_secret(kubectl, "rotate", namespace)
    assert old["serverId"] == str(first)
    user_data = clouds.hetzner.user_data(first)
    assert _user_data_file(user_data, "/tls.crt") == old["tls.crt"]
    assert _user_data_file(user_data, "/tls.key") == old["tls.key"]
    cert = x509.load_pem_x509_certificate(old["tls.crt"].encode())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(days=30, hours=1)

    _patch_running(kubectl, "rotate", namespace, False)
    wait_for(lambda: (w := _ws(kubectl, "rotate", namespace)) and
             w["status"].get("phase") == "Stopped" and not w["status"].get("server"),
             60, "stopped")
    _patch_running(kubectl, "rotate", namespace, True)
    ws = wait_for(lambda: (w := _ws(kubectl, "rotate", namespace)) and
                  (w["status"].get("server") or {}).get("id") not in (None, first) and
                  condition(w, "ServerReady").get("status") == "True" and w, 60, "woken")
    second = ws["status"]["server"]["id"]
    new = _agent_secret(kubectl, "rotate", namespace)
    assert new["serverId"] == str(second)
    assert new["fingerprintSha256"] != old["fingerprintSha256"]
    assert new["tls.key"] != old["tls.key"] and new["token"] != old["token"]
    assert certificate_fingerprint(new["tls.crt"]) == new["fingerprintSha256"]
    user_data = clouds.hetzner.user_data(second)
    assert _user_data_file(user_data, "/tls.crt") == new["tls.crt"]
    assert old["tls.key"] not in (user_data or "") and old["tls.crt"] not in (user_data or "")
    # The operator pins the new server's certificate, not the old one.
    wait_for(lambda: ((_ws(kubectl, "rotate", namespace) or {}).get("status", {})
                      .get("agentEndpoint") or {}).get("certificateSHA256")
             == new["fingerprintSha256"], 30, "the new pin in status")
    kubectl("delete", "workspace", "rotate", "-n", namespace, "--wait=false")
    wait_for(lambda: _ws(kubectl, "rotate", namespace) is None, 60, "deleted")


def _server_not_ours_events(kubectl: Kubectl, name: str, ns: str) -> list[str]:
    out = kubectl("get", "events", "-n", ns, "--field-selector",
                  f"involvedObject.name={name},reason=ServerNotOurs", "-o",
                  "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}")
    return [line for line in out.splitlines() if line]


def _point_status_at(kubectl: Kubectl, name: str, ns: str, server_id: int) -> None:
    kubectl("patch", "workspace", name, "-n", ns, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"server": {"id": server_id}}}))


def test_status_naming_a_foreign_server_never_deletes_it(
        control_plane, kubectl: Kubectl, clouds: Clouds, namespace: str,  # type: ignore[no-untyped-def]
        operator: OperatorProcess) -> None:
    # The attack: whoever may write a Workspace's status points status.server.id at a
    # server that is not this workspace's (another workspace's, or anything else in the
    # project), then stops or deletes the workspace to have the operator delete it.
    client = hcloud.Client(token=clouds.hetzner_token, api_endpoint=clouds.hetzner.url)

    def server(name: str, labels: dict[str, str]) -> int:
        created = client.servers.create(name, server_type=ServerType(name="cx23"),
                                        image=Image(name="ubuntu-24.04"), labels=labels)
        assert created.server.id is not None
        return created.server.id

    other_workspace = server("victim-of-another", {
        "agentspaces.dev/managed-by": "agentspaces",
        "agentspaces.dev/workspace-uid": "00000000-another-workspace"})
    unlabelled = server("victim-unlabelled", {})
    kubectl.apply(workspace("pointer", namespace, CLASS))
    ws = wait_for(lambda: (w := _ws(kubectl, "pointer", namespace)) and
                  condition(w, "ServerReady").get("status") == "True" and w, 60, "ready")
    ours, uid = ws["status"]["server"]["id"], ws["metadata"]["uid"]

    # While running: refused, forgotten, and our own server adopted again.
    _point_status_at(kubectl, "pointer", namespace, other_workspace)
    messages = wait_for(lambda: _server_not_ours_events(kubectl, "pointer", namespace), 30,
                        "a ServerNotOurs event")
    assert str(other_workspace) in messages[0]
    wait_for(lambda: (w := _ws(kubectl, "pointer", namespace)) and
             (w["status"].get("server") or {}).get("id") == ours and
             condition(w, "ServerReady").get("status") == "True", 30, "ours adopted again")

    # While deleting (the operator is down when status is changed, so the finalizer
    # meets the foreign id first): refused, and our server still deleted.
    operator.stop()
    try:
        _point_status_at(kubectl, "pointer", namespace, unlabelled)
        kubectl("delete", "workspace", "pointer", "-n", namespace, "--wait=false")
    finally:
        operator.start()
    wait_for(lambda: _ws(kubectl, "pointer", namespace) is None, 60, "deleted")
    for victim in (other_workspace, unlabelled):
        assert (clouds.hetzner.server(victim) or {}).get("status") == "running", victim
    assert _servers(clouds, uid) == []
    assert clouds.hetzner.server(ours) is None  # the finalizer waits until it is gone
    assert any(str(unlabelled) in m for m in
               _server_not_ours_events(kubectl, "pointer", namespace))
    for victim in (other_workspace, unlabelled):
        client.servers.get_by_id(victim).delete()
