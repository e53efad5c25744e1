"""Warm pools through the real apiserver, the real operator process (as the shipped RBAC
lets it act), the Hetzner emulator and simulated VMs that run the real loader and agent:
a class's pool fills, new workspaces claim its servers and it refills; concurrent
creates never share a server; a claim whose Hetzner answer is lost, and an operator
killed mid-way, duplicate and leak nothing; shrinking and deleting the class remove
every pool server and its Secret.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentspaces.clouds.hetzner import LABEL_WORKSPACE_UID
from agentspaces.reconcile import pool_policy as policy
from agentspaces.sandbox.vmsim import VmSimulator
from agentspaces.sandbox.vmsim_ips import LoopbackPool
from agentspaces.vmconfig.layout import VM_LAYOUT
from agentspaces.vmconfig.userdata import read_write_files
from tests.conftest import REPO, Kubectl
from tests.support.operator import OperatorProcess
from tests.support.stack import (
    OPERATOR_NAMESPACE,
    Clouds,
    condition,
    install_class,
    running_clouds,
    start_operator_as_deployed,
    workspace,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "pooled"
NAMESPACE = "pool-test"
HTTP_PORT = 18179
RBAC = list(yaml.safe_load_all((REPO / "manifests" / "rbac.yaml").read_text()))
OPERATOR_ROLE = next(d for d in RBAC if d["kind"] == "ClusterRole"
                     and d["metadata"]["name"] == "agentspaces-operator")
STATUS_RULE = next(i for i, r in enumerate(OPERATOR_ROLE["rules"])
                   if r["resources"] == ["workspaceclasses/status"])


@pytest.fixture(scope="module")
def clouds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clouds]:
    with running_clouds() as c:
        vms = VmSimulator(tmp_path_factory.mktemp("vms"),
                          ip_pool=LoopbackPool("127.0.79.10", "127.0.79.250"))
        vms.attach(c.hetzner)
        try:
            yield c
        finally:
            vms.stop_all()


@pytest.fixture(scope="module")
def installed(kubectl: Kubectl, clouds: Clouds) -> Iterator[None]:
    kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    kubectl.apply(yaml.safe_dump_all(RBAC))
    _install(kubectl, clouds, size=2)
    kubectl("create", "namespace", NAMESPACE, check=False)
    yield
    # No operator runs now: the class goes without its pool's finalizer, so no later
    # module's operator works on a pool whose emulator is gone.
    kubectl("delete", "workspaceclass", CLASS, "--wait=false", check=False)
    kubectl("patch", "workspaceclass", CLASS, "--type=merge", "-p",
            '{"metadata": {"finalizers": null}}', check=False)


def _install(kubectl: Kubectl, clouds: Clouds, size: int) -> None:
    install_class(kubectl, clouds, CLASS, extra={
        "server": {"type": "cx23", "location": "fsn1", "image": "debian-13"},
        "tls": {"mode": "none", "httpPort": HTTP_PORT}, "warmPool": {"size": size}})


@pytest.fixture
def operator(control_plane, kubectl: Kubectl, installed: None,  # type: ignore[no-untyped-def]
             tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = start_operator_as_deployed(control_plane, kubectl, tmp_path)
    yield proc
    proc.stop()


def _pool(clouds: Clouds) -> dict[int, dict[str, Any]]:
    return {i: s for i, s in clouds.hetzner.servers.items()
            if s["labels"].get(policy.LABEL_POOL) == CLASS}


def _pool_status(kubectl: Kubectl) -> dict[str, Any]:
    return ((kubectl.get_json("workspaceclass", CLASS) or {}).get("status") or {}) \
        .get("warmPool") or {}


def _ready_pool(kubectl: Kubectl, clouds: Clouds, size: int, timeout: float = 90,
                without: int | None = None) -> dict[str, Any]:
    """The class status once it shows `size` ready pool servers (none of them `without`),
    each one the emulator has as a pool server."""
    def shown() -> dict[str, Any] | None:
        status = _pool_status(kubectl)
        ids = {s["id"] for s in status.get("servers", [])}
        ok = status.get("ready") == size and len(ids) == size and without not in ids \
            and ids <= set(_pool(clouds))
        return status if ok else None
    return wait_for(shown, timeout, f"{size} pool servers ready")


def _ws(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return kubectl.get_json("workspace", name, "-n", NAMESPACE) or {}


def _ready(kubectl: Kubectl, name: str, timeout: float = 90) -> dict[str, Any]:
    return wait_for(lambda: condition(ws := _ws(kubectl, name), "Ready").get("status")
                    == "True" and ws, timeout, f"{name} Ready")


def _owners(clouds: Clouds) -> dict[str, list[int]]:
    """Workspace uid -> its servers (by label)."""
    owners: dict[str, list[int]] = {}
    for sid, server in clouds.hetzner.servers.items():
        uid = server["labels"].get(LABEL_WORKSPACE_UID)
        if uid:
            owners.setdefault(uid, []).append(sid)
    return owners


def _delete_workspaces(kubectl: Kubectl, clouds: Clouds, names: list[str]) -> None:
    for name in names:
        kubectl("delete", "workspace", name, "-n", NAMESPACE, "--wait=false")
    wait_for(lambda: not any(_ws(kubectl, n) for n in names), 90, "workspaces deleted")
    wait_for(lambda: not _owners(clouds), 30, "their servers deleted")


def test_a_pool_fills_a_workspace_claims_a_server_and_the_pool_refills(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds) -> None:
    status = _ready_pool(kubectl, clouds, 2)
    first = set(_pool(clouds))
    assert {s["name"] for s in _pool(clouds).values()} == {f"pool-{CLASS}-0",
                                                           f"pool-{CLASS}-1"}
    assert {s["id"] for s in status["servers"]} == first
    assert status["hourly"]["gross"]  # the emulator's price list
    for server in _pool(clouds).values():  # no workspace, no user secret on a pool server
        config = json.loads(read_write_files(server["user_data"])[VM_LAYOUT.agent_json]
                            .content)
        assert config["pool"] == {"class": CLASS} and "workspace" not in config
        assert NAMESPACE not in server["user_data"]
        assert clouds.hetzner_token not in server["user_data"]

    clouds.hetzner.reset_calls()
    kubectl.apply(workspace("claimer", NAMESPACE, CLASS))
    ws = _ready(kubectl, "claimer", 60)
    sid = ws["status"]["server"]["id"]
    assert sid in first, "the workspace runs on a pool server"
    server = clouds.hetzner.servers[sid]
    assert server["name"] == ws["status"]["hostname"]
    assert server["labels"][LABEL_WORKSPACE_UID] == ws["metadata"]["uid"]
    assert policy.LABEL_POOL not in server["labels"]
    assert clouds.hetzner.calls.get("POST /servers", 0) <= 1  # only the refill creates
    assert clouds.hetzner.calls.get("PUT /servers/{id}", 0) == 1

    # The pool refills its slot with a new server.
    refilled = _ready_pool(kubectl, clouds, 2, without=sid)
    assert {s["name"] for s in refilled["servers"]} == {f"pool-{CLASS}-0", f"pool-{CLASS}-1"}
    _delete_workspaces(kubectl, clouds, ["claimer"])


def test_concurrent_creates_never_share_a_server(operator: OperatorProcess,
                                                 kubectl: Kubectl, clouds: Clouds) -> None:
    _ready_pool(kubectl, clouds, 2)
    pooled = set(_pool(clouds))
    names = [f"burst-{i}" for i in range(4)]
    kubectl.apply("---\n".join(workspace(n, NAMESPACE, CLASS) for n in names))
    ready = [_ready(kubectl, n, 120) for n in names]
    ids = [ws["status"]["server"]["id"] for ws in ready]
    assert len(set(ids)) == 4, ids
    assert len(set(ids) & pooled) <= 2
    owners = _owners(clouds)
    assert sorted(owners) == sorted(ws["metadata"]["uid"] for ws in ready)
    assert all(len(servers) == 1 for servers in owners.values()), owners
    _ready_pool(kubectl, clouds, 2)
    _delete_workspaces(kubectl, clouds, names)


def test_a_lost_claim_answer_and_a_killed_operator_duplicate_nothing(
        control_plane, kubectl: Kubectl, clouds: Clouds, installed: None,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    op = start_operator_as_deployed(control_plane, kubectl, tmp_path, "first")
    try:
        _ready_pool(kubectl, clouds, 2)
        pooled = set(_pool(clouds))
        # The rename and relabel is carried out, its answer lost.
        clouds.hetzner.faults.add(503, count=1, method="PUT", path_prefix="/servers",
                                  after_apply=True)
        kubectl.apply(workspace("lost", NAMESPACE, CLASS))
        ws = _ready(kubectl, "lost", 90)
        assert ws["status"]["server"]["id"] in pooled
        # Killed while the next workspace is being placed, then restarted.
        kubectl.apply(workspace("killed", NAMESPACE, CLASS))
        time.sleep(0.5)
        op.kill()
    finally:
        op.stop()
    op = start_operator_as_deployed(control_plane, kubectl, tmp_path, "second")
    try:
        killed = _ready(kubectl, "killed", 120)
        owners = _owners(clouds)
        assert sorted(owners) == sorted([ws["metadata"]["uid"], killed["metadata"]["uid"]])
        assert all(len(servers) == 1 for servers in owners.values()), owners
        status = _ready_pool(kubectl, clouds, 2)
        # Every server is a pool server or one workspace's: nothing else was left.
        assert set(clouds.hetzner.servers) == \
            {s["id"] for s in status["servers"]} | {i for v in owners.values() for i in v}
        _delete_workspaces(kubectl, clouds, ["lost", "killed"])
    finally:
        op.stop()


def test_shrinking_and_deleting_the_class_leave_no_pool_server_or_secret(
        operator: OperatorProcess, kubectl: Kubectl, clouds: Clouds) -> None:
    _ready_pool(kubectl, clouds, 2)
    _install(kubectl, clouds, size=1)
    wait_for(lambda: len(_pool(clouds)) == 1, 60, "the pool shrunk to one server")
    assert [s["name"] for s in _pool(clouds).values()] == [f"pool-{CLASS}-0"]
    wait_for(lambda: kubectl.get_json("secret", policy.secret_name(CLASS, 1), "-n",
                                      OPERATOR_NAMESPACE) is None, 30, "slot 1's Secret gone")
    # To 0: no server, no Secret, no pool status; the class then deletes like any other.
    _install(kubectl, clouds, size=0)
    wait_for(lambda: not _pool(clouds) and not _pool_status(kubectl), 60, "the pool gone")
    wait_for(lambda: kubectl.get_json("secret", policy.secret_name(CLASS, 0), "-n",
                                      OPERATOR_NAMESPACE) is None, 30, "slot 0's Secret gone")
    kubectl("delete", "workspaceclass", CLASS, "--wait=false")
    wait_for(lambda: kubectl.get_json("workspaceclass", CLASS) is None, 60,
             "a class whose pool went to 0 gone")
    # With a pool, deleting the class deletes its servers first.
    _install(kubectl, clouds, size=1)
    _ready_pool(kubectl, clouds, 1)
    kubectl("delete", "workspaceclass", CLASS, "--wait=false")
    wait_for(lambda: kubectl.get_json("workspaceclass", CLASS) is None, 60, "class gone")
    assert _pool(clouds) == {}
    wait_for(lambda: kubectl.get_json("secret", policy.secret_name(CLASS, 0), "-n",
                                      OPERATOR_NAMESPACE) is None, 30, "slot 0's Secret gone")
    _install(kubectl, clouds, size=2)  # for any test after this one


def test_the_operator_needs_the_class_status_rule_for_pools(
        control_plane, kubectl: Kubectl, clouds: Clouds, installed: None,  # type: ignore[no-untyped-def]
        tmp_path: Path) -> None:
    """Without `workspaceclasses/status` the pool's state never reaches the class: the
    shipped RBAC stays least-privilege with the rule in it."""
    reduced = copy.deepcopy(OPERATOR_ROLE)
    del reduced["rules"][STATUS_RULE]
    kubectl("patch", "workspaceclass", CLASS, "--subresource=status", "--type=merge",
            "-p", '{"status": {"warmPool": null}}')
    kubectl.apply(yaml.safe_dump(reduced))
    op = start_operator_as_deployed(control_plane, kubectl, tmp_path)
    try:
        wait_for(lambda: "Forbidden" in op.log() or " 403" in op.log(), 60,
                 "the status patch refused")
        time.sleep(6)  # two pool intervals: no visit gets its status through
        assert _pool_status(kubectl) == {}
    finally:
        op.stop()
        kubectl.apply(yaml.safe_dump(OPERATOR_ROLE))
