"""Two real operator processes peered through a ClusterKopfPeering against the real
apiserver and the cloud emulators: only one acts; when it is killed (SIGKILL, no goodbye)
in the middle of a create or of a delete, the other takes over within the peering
lifetime and finishes the job with one server, one set of DNS records and nothing left
behind."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest

from agentspaces.persistence.backups import BackupLocation
from tests.conftest import Kubectl
from tests.support.operator import OperatorProcess
from tests.support.stack import (
    OPERATOR_NAMESPACE,
    S3,
    Clouds,
    condition,
    install_class,
    running_clouds,
    running_s3,
    start_operator,
    workspace,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "ha"
LIFETIME = 4  # seconds: keep-alives every second, a dead replica is trusted this long
UID_LABEL = "agentspaces.dev/workspace-uid"


@pytest.fixture(scope="module")
def clouds() -> Iterator[Clouds]:
    with running_clouds(dead_end_block=14) as c:
        yield c


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with running_s3() as found:
        yield found


@pytest.fixture(scope="module")
def installed(kubectl: Kubectl, clouds: Clouds, s3: S3) -> Kubectl:
    kubectl("wait", "--for=condition=Established", "--timeout=30s",
            "crd/clusterkopfpeerings.kopf.dev")
    install_class(kubectl, clouds, CLASS, storage=s3.storage())
    return kubectl


def _peers(kubectl: Kubectl, peering: str) -> dict[str, Any]:
    found = kubectl.get_json("clusterkopfpeering", peering)
    return dict((found or {}).get("status") or {})


@contextmanager
def _pair(control_plane, kubectl: Kubectl, tmp: Path  # type: ignore[no-untyped-def]
          ) -> Iterator[tuple[OperatorProcess, OperatorProcess, str]]:
    """An active operator and a standby in a fresh peering (the active started first:
    the older replica has the higher priority). Both are stopped however the test ends."""
    peering = f"ha-{uuid.uuid4().hex[:6]}"
    env = {"AGENTSPACES_PEERING": peering, "AGENTSPACES_PEERING_LIFETIME": f"{LIFETIME}s"}
    procs: list[OperatorProcess] = []
    try:
        active = start_operator(control_plane.admin_kubeconfig, tmp, "active", env)
        procs.append(active)
        # It created the peering object and, finding no peer above it, resumed.
        wait_for(lambda: "Resuming operations" in active.log(), 30, "the first replica acts")
        standby = start_operator(control_plane.admin_kubeconfig, tmp, "standby", env)
        procs.append(standby)
        wait_for(lambda: len(_peers(kubectl, peering)) == 2, 30, "both replicas peered")
        wait_for(lambda: "Pausing the watch-stream" in standby.log(), 10, "standby paused")
        priorities = [p["priority"] for p in _peers(kubectl, peering).values()]
        assert len(set(priorities)) == 2, priorities
        assert "Resuming operations" not in standby.log()
        assert _acting(active) == 1 and _acting(standby) == 0
        yield active, standby, peering
    finally:
        for proc in procs:
            proc.stop()


def _ws(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any] | None:
    return kubectl.get_json("workspace", name, "-n", ns)


def _servers(clouds: Clouds, uid: str) -> list[dict[str, Any]]:
    return [s for s in clouds.hetzner.servers.values() if s["labels"].get(UID_LABEL) == uid]


def _records(clouds: Clouds, uid: str) -> list[tuple[str, str]]:
    return sorted((r["type"], r["name"]) for r in clouds.cloudflare.records()
                  if uid in (r.get("comment") or ""))


def _acted(proc: OperatorProcess) -> bool:
    """Did it run any Workspace handler (each pair of operators sees one Workspace)?"""
    return re.search(r"kopf\.objects .*(Handler|Timer|Daemon) '", proc.log()) is not None


def _takeover(standby: OperatorProcess, killed_at: float) -> float:
    wait_for(lambda: "Resuming operations" in standby.log(), LIFETIME + 15,
             "the standby resumes")
    took = time.monotonic() - killed_at
    assert _acting(standby) == 1
    return took


def _acting(proc: OperatorProcess) -> float:
    wait_for(lambda: "metrics at" in proc.log(), 30, "the replica's metrics address")
    return proc.metric("agentspaces_operator_active")


def test_killed_mid_create_the_standby_finishes_with_one_server(
        control_plane, installed: Kubectl, clouds: Clouds, namespace: str,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    kubectl = installed
    with _pair(control_plane, kubectl, tmp_path) as (active, standby, _):
        clouds.hetzner.reset_calls()
        clouds.hetzner.faults.hold_create_response(30)
        kubectl.apply(workspace("mid-create", namespace, CLASS))
        uid = wait_for(lambda: _ws(kubectl, "mid-create", namespace), 10,
                       "workspace")["metadata"]["uid"]
        wait_for(lambda: _servers(clouds, uid), 30, "the server POSTed to the emulator")
        # Mid-create: the server exists, its id never reached status.
        assert ((_ws(kubectl, "mid-create", namespace) or {}).get("status") or {}).get(
            "server") is None
        assert _acted(active)
        assert not _acted(standby)

        active.kill()
        killed_at = time.monotonic()
        clouds.hetzner.faults.clear()
        took_over = _takeover(standby, killed_at)

        ws = wait_for(lambda: (w := _ws(kubectl, "mid-create", namespace)) and
                      condition(w, "ServerReady").get("status") == "True" and
                      condition(w, "DNSReady").get("status") == "True" and w,
                      60, "ServerReady and DNSReady after the takeover")
        ready_after = time.monotonic() - killed_at
        print(f"\nmid-create: standby resumed {took_over:.1f}s after the kill "
              f"(lifetime {LIFETIME}s), workspace ready {ready_after:.1f}s after it")
        assert took_over <= LIFETIME + 3
        servers = _servers(clouds, uid)
        assert len(servers) == 1, servers
        assert clouds.hetzner.calls["POST /servers"] == 1  # adopted, never created again
        assert ws["status"]["server"]["id"] == servers[0]["id"]
        host = f"{ws['status']['hostname']}.example.test"
        assert _records(clouds, uid) == sorted(
            [("A", host), ("A", f"*.{host}"), ("AAAA", host), ("AAAA", f"*.{host}")])
        events = kubectl("get", "events", "-n", namespace, "--field-selector",
                         "involvedObject.name=mid-create", "-o", "jsonpath={.items[*].reason}")
        assert "Adopted" in events.split()

        kubectl("delete", "workspace", "mid-create", "-n", namespace, "--wait=false")
        wait_for(lambda: _ws(kubectl, "mid-create", namespace) is None, 60, "deleted")
        assert _servers(clouds, uid) == [] and _records(clouds, uid) == []


def test_killed_mid_delete_the_standby_finishes_and_nothing_leaks(
        control_plane, installed: Kubectl, clouds: Clouds, s3: S3, namespace: str,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    kubectl = installed
    with _pair(control_plane, kubectl, tmp_path) as (active, standby, peering):
        kubectl.apply(workspace("mid-delete", namespace, CLASS, persistence={"onDelete": "Delete"}))
        ws = wait_for(lambda: (w := _ws(kubectl, "mid-delete", namespace)) and
                      condition(w, "DNSReady").get("status") == "True" and w, 60, "ready")
        uid, hostname = ws["metadata"]["uid"], ws["status"]["hostname"]
        assert len(_servers(clouds, uid)) == 1 and len(_records(clouds, uid)) == 4
        # Backups as an earlier run would have left them: the delete must remove them.
        prefix = BackupLocation.for_workspace("agentspaces/", namespace, "mid-delete",
                                              uid).prefix
        bucket = boto3.client("s3", endpoint_url=s3.url, aws_access_key_id=s3.access_key,
                              aws_secret_access_key=s3.secret_key, region_name="us-east-1")
        for key in ("0001.tar.zst.enc", "0001.manifest.json"):
            bucket.put_object(Bucket=s3.bucket, Key=prefix + key, Body=b"x")
        assert len(s3.object_keys(prefix)) == 2
        assert kubectl.get_json("lease", f"host-{hostname}", "-n", OPERATOR_NAMESPACE)

        # The server delete is carried out, its response held: the active replica is
        # inside the finalizer, with DNS records, backups and the finalizer still there.
        clouds.hetzner.faults.hold_response("DELETE /servers/{id}", 30)
        calls_before = clouds.hetzner.calls["DELETE /servers/{id}"]
        kubectl("delete", "workspace", "mid-delete", "-n", namespace, "--wait=false")
        wait_for(lambda: clouds.hetzner.calls["DELETE /servers/{id}"] > calls_before, 30,
                 "the server DELETE sent")
        doomed = _ws(kubectl, "mid-delete", namespace)
        assert doomed is not None and doomed["metadata"].get("deletionTimestamp")
        assert doomed["metadata"]["finalizers"] == ["agentspaces.dev/finalizer"]
        assert not _acted(standby)

        active.kill()
        killed_at = time.monotonic()
        clouds.hetzner.faults.clear()
        took_over = _takeover(standby, killed_at)
        wait_for(lambda: _ws(kubectl, "mid-delete", namespace) is None, 60,
                 "the Workspace gone after the takeover")
        print(f"\nmid-delete: standby resumed {took_over:.1f}s after the kill, Workspace "
              f"gone {time.monotonic() - killed_at:.1f}s after it")
        assert _servers(clouds, uid) == []
        assert _records(clouds, uid) == []
        assert s3.object_keys(prefix) == []
        assert kubectl.get_json("lease", f"host-{hostname}", "-n", OPERATOR_NAMESPACE) is None
        assert _acted(standby)
        # The dead replica's keep-alive expired and the survivor removed it.
        wait_for(lambda: len(_peers(kubectl, peering)) == 1, 10, "the dead peer cleaned up")
