"""WorkspaceImages through the real apiserver, the real operator process and the Hetzner
emulator: the bake (a builder server that powers itself off, its snapshot), a class's
servers booting from it, a rebake that garbage-collects the superseded snapshot, a
failed bake that leaves no builder, and a delete that leaves nothing.

No VM backend runs here (agent polls go nowhere): the test plays the builder's guest,
powering it off as cloud-init's power_state would once the bake succeeded
(tests/component/test_vmsim.py shows the simulated VMs doing it themselves).
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

from agentspaces.reconcile import image_policy as policy
from agentspaces.vmconfig.bake import is_bake_user_data
from tests.conftest import REPO, Kubectl
from tests.support.operator import OperatorProcess
from tests.support.stack import (
    OPERATOR_NAMESPACE,
    Clouds,
    install_class,
    running_clouds,
    start_operator_as_deployed,
    workspace,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "imaged"
IMAGE = "dev-image"
NAMESPACE = "images-test"


@pytest.fixture(scope="module")
def clouds() -> Iterator[Clouds]:
    with running_clouds(dead_end_block=12) as c:
        yield c


RBAC = list(yaml.safe_load_all((REPO / "manifests" / "rbac.yaml").read_text()))
OPERATOR_ROLE = next(d for d in RBAC if d["kind"] == "ClusterRole"
                     and d["metadata"]["name"] == "agentspaces-operator")
IMAGE_RULES = [i for i, r in enumerate(OPERATOR_ROLE["rules"])
               if r["resources"][0].startswith("workspaceimages")]


@pytest.fixture(scope="module")
def installed(kubectl: Kubectl, clouds: Clouds) -> None:
    kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    kubectl.apply(yaml.safe_dump_all(RBAC))
    install_class(kubectl, clouds, CLASS, extra={
        "server": {"type": "cx23", "location": "fsn1", "image": "debian-13",
                   "workspaceImage": IMAGE}})
    kubectl("create", "namespace", NAMESPACE, check=False)


@pytest.fixture
def operator(control_plane, kubectl: Kubectl, installed: None,  # type: ignore[no-untyped-def]
             tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = start_operator_as_deployed(control_plane, kubectl, tmp_path)
    yield proc
    proc.stop()


def _image_manifest(**spec: Any) -> str:
    body = {"hetzner": {"tokenSecretRef": {"name": f"{CLASS}-hetzner"},
                        "endpoint": "{endpoint}"}, **spec}
    return json.dumps({"apiVersion": "agentspaces.dev/v1alpha1", "kind": "WorkspaceImage",
                       "metadata": {"name": IMAGE}, "spec": body})


def _apply_image(kubectl: Kubectl, clouds: Clouds, **spec: Any) -> None:
    kubectl.apply(_image_manifest(**spec).replace("{endpoint}", clouds.hetzner.url))


def _image(kubectl: Kubectl) -> dict[str, Any]:
    return kubectl.get_json("workspaceimage", IMAGE) or {}


def _builders(clouds: Clouds) -> list[dict[str, Any]]:
    return [s for s in clouds.hetzner.servers.values()
            if s["labels"].get(policy.LABEL_ROLE) == policy.BUILDER_ROLE]


def _snapshots(clouds: Clouds) -> dict[int, dict[str, Any]]:
    return {i: image for i, image in clouds.hetzner.images.items()
            if image["labels"].get(policy.LABEL_IMAGE) == IMAGE}


def _bake(kubectl: Kubectl, clouds: Clouds, previous: int | None = None) -> dict[str, Any]:
    """Wait for the builder, power it off as its guest would, wait for Ready."""
    builder = wait_for(lambda: (b := _builders(clouds)) and b[0]["status"] == "running"
                       and b[0], 60, "a running builder server")
    assert is_bake_user_data(builder["user_data"])
    assert clouds.hetzner_token not in builder["user_data"]
    assert clouds.hetzner.guest_shutdown(builder["id"])
    return wait_for(lambda: (img := _image(kubectl)).get("status", {}).get("phase") == "Ready"
                    and img["status"].get("imageId") not in (None, previous) and img,
                    90, "the image Ready")


def test_bake_boot_rebake_and_delete(operator: OperatorProcess, kubectl: Kubectl,
                                     clouds: Clouds) -> None:
    clouds.hetzner.reset_calls()
    _apply_image(kubectl, clouds)
    wait_for(lambda: _image(kubectl).get("status", {}).get("phase") == "Baking", 10,
             "phase Baking")
    ready = _bake(kubectl, clouds)
    status = ready["status"]
    first = status["imageId"]
    assert _snapshots(clouds).keys() == {first}
    assert _snapshots(clouds)[first]["status"] == "available"
    wait_for(lambda: not _builders(clouds), 30, "the builder deleted")
    # A bake writes three times: the builder, its snapshot, its delete; the rest are
    # reads of its progress (two per visit while it bakes).
    calls = clouds.hetzner.calls
    writes = {k: n for k, n in calls.items() if not k.startswith("GET ")}
    assert writes == {"POST /servers": 1, "POST /servers/{id}/actions/create_image": 1,
                      "DELETE /servers/{id}": 1}, writes
    print(f"Hetzner calls for one bake: {sum(calls.values())} ({dict(calls)})")
    assert status["osProfile"] == "debian-13" and status["diskSizeGB"] == 40
    assert status["imageSizeGB"] == clouds.hetzner.snapshot_size_gb

    # A workspace of the class boots from the snapshot, with its own user-data.
    kubectl.apply(workspace("from-image", NAMESPACE, CLASS))
    server = wait_for(lambda: next((s for s in clouds.hetzner.servers.values()
                                    if s["name"].startswith("from-image")), None),
                      60, "the workspace's server")
    assert server["image"]["id"] == first and server["image"]["type"] == "snapshot"
    assert not is_bake_user_data(server["user_data"])  # the workspace's own user-data

    # A new revision (another builder type) bakes while the first snapshot stays the
    # one new servers boot; once it is available the first is deleted.
    _apply_image(kubectl, clouds, builder={"type": "cx33"})
    baking = wait_for(lambda: (img := _image(kubectl))["status"].get("phase") == "Baking"
                      and img, 60, "a rebake")
    assert baking["status"]["imageId"] == first
    second = _bake(kubectl, clouds, previous=first)["status"]["imageId"]
    wait_for(lambda: _snapshots(clouds).keys() == {second}, 30,
             "the superseded snapshot deleted")
    assert _snapshots(clouds)[second]["disk_size"] == 80  # cx33's disk

    # Deleting the image deletes its snapshot (and any builder); the workspace's
    # running server is not touched.
    kubectl("delete", "workspaceimage", IMAGE, "--wait=false")
    wait_for(lambda: not _image(kubectl), 60, "the WorkspaceImage gone")
    assert _snapshots(clouds) == {} and _builders(clouds) == []
    assert server["id"] in clouds.hetzner.servers
    kubectl("delete", "workspace", "from-image", "-n", NAMESPACE, "--wait=false")
    wait_for(lambda: server["id"] not in clouds.hetzner.servers, 60, "workspace server gone")


def test_a_bake_that_never_finishes_leaves_no_builder(operator: OperatorProcess,
                                                      kubectl: Kubectl,
                                                      clouds: Clouds) -> None:
    _apply_image(kubectl, clouds, bakeTimeout="1m")
    builder = wait_for(lambda: (b := _builders(clouds)) and b[0], 60, "a builder server")
    failed = wait_for(lambda: (img := _image(kubectl)).get("status", {}).get("phase")
                      == "Failed" and img, 120, "the bake failed")
    assert builder["id"] not in clouds.hetzner.servers and _builders(clouds) == []
    cond = next(c for c in failed["status"]["conditions"] if c["type"] == "Ready")
    assert cond["status"] == "False" and cond["reason"] == "BakeTimedOut"
    assert failed["status"]["failure"]["count"] == 1
    kubectl("delete", "workspaceimage", IMAGE, "--wait=false")
    wait_for(lambda: not _image(kubectl), 60, "the WorkspaceImage gone")
    assert _snapshots(clouds) == {} and _builders(clouds) == []


@pytest.mark.parametrize("rule", IMAGE_RULES,
                         ids=["/".join(OPERATOR_ROLE["rules"][i]["resources"])
                              for i in IMAGE_RULES])
def test_the_operator_needs_each_of_its_rules_for_images(
        control_plane, kubectl: Kubectl, clouds: Clouds, installed: None,  # type: ignore[no-untyped-def]
        tmp_path: Path, rule: int) -> None:
    """Without either shipped rule for WorkspaceImages no image gets baked: the RBAC
    stays least-privilege with them in it."""
    reduced = copy.deepcopy(OPERATOR_ROLE)
    del reduced["rules"][rule]
    kubectl.apply(yaml.safe_dump(reduced))
    op = start_operator_as_deployed(control_plane, kubectl, tmp_path)
    try:
        _apply_image(kubectl, clouds)
        # With both rules the first visit writes phase Baking within a second or two
        # (test_bake_boot_rebake_and_delete); without either, no phase is ever written.
        time.sleep(15)
        assert "phase" not in _image(kubectl).get("status", {})
    finally:
        op.stop()
        kubectl.apply(yaml.safe_dump(OPERATOR_ROLE))
        kubectl("delete", "workspaceimage", IMAGE, "--wait=false")
    # The full operator cleans up what the reduced one made.
    (tmp_path / "full").mkdir()
    op = start_operator_as_deployed(control_plane, kubectl, tmp_path / "full")
    try:
        wait_for(lambda: not _image(kubectl), 60, "the WorkspaceImage gone")
        wait_for(lambda: not _builders(clouds) and not _snapshots(clouds), 30,
                 "no builder, no snapshot")
    finally:
        op.stop()
