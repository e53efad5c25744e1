"""The WorkspaceImage bake, step by step, over a fake Hetzner project and a fake
apiserver: builder -> powered off -> snapshot -> Ready; rebakes, garbage collection,
failures, restarts and cleanup."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from agentspaces.clouds.hetzner import ServerProvider
from agentspaces.reconcile import image_policy as policy
from agentspaces.reconcile import workspace_image
from agentspaces.vmconfig.bake import is_bake_user_data
from tests.support.fakes import FakeKube, FakeServers

NS = "agentspaces-system"
UID = "6b1c0f4e-0000-4000-8000-00000000abcd"
TOKEN = "hz-token-secret"


class World:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
        self.cloud = FakeServers(clock=lambda: self.now)
        self.kube = FakeKube()
        self.kube.add_secret(NS, "hetzner", {"token": TOKEN})
        self.kube.images["dev"] = {
            "metadata": {"name": "dev", "uid": UID},
            "spec": {"hetzner": {"tokenSecretRef": {"name": "hetzner", "key": "token"}},
                     "bakeTimeout": "30m"},
        }
        self.events: list[tuple[str, str, str]] = []
        self.tokens: list[str] = []

    def _cloud(self, token: str, endpoint: str) -> ServerProvider:
        self.tokens.append(token)
        return self.cloud

    def visit(self, *, deleting: bool = False) -> float | None:
        return asyncio.run(workspace_image.visit(
            self.kube, self._cloud, NS, "dev", UID, self.now,
            lambda *event: self.events.append(event), deleting=deleting))

    @property
    def status(self) -> dict[str, Any]:
        return self.kube.images["dev"].get("status") or {}

    def builders(self) -> list[Any]:
        return [s for s in self.cloud.servers.values() if policy.is_builder_of(s.labels, UID)]

    def power_off_builders(self) -> None:
        for server in self.builders():
            self.cloud.servers[server.id] = replace(server, status="off")

    def bake(self) -> dict[str, Any]:
        """One whole bake from where it stands to Ready."""
        self.visit()
        self.cloud.boot()
        self.power_off_builders()
        self.visit()
        self.cloud.finish_snapshots()
        assert self.visit() is None
        return self.status


def ready_reason(status: dict[str, Any]) -> tuple[str, str]:
    cond = next(c for c in status["conditions"] if c["type"] == "Ready")
    return cond["status"], cond["reason"]


def test_a_bake_goes_builder_then_snapshot_then_ready_and_leaves_no_builder() -> None:
    w = World()
    assert w.visit() == workspace_image.POLL_BAKING
    [builder] = w.builders()
    assert is_bake_user_data(w.cloud.user_data[builder.id])
    assert TOKEN not in w.cloud.user_data[builder.id]
    assert builder.name == policy.builder_name("dev", w.status["builder"]["revision"])
    assert w.status["phase"] == "Baking" and ready_reason(w.status) == ("False", "Baking")

    w.cloud.boot()
    assert w.visit() == workspace_image.POLL_BAKING  # still installing: nothing new
    assert len(w.builders()) == 1 and not w.cloud.images

    w.power_off_builders()
    w.now += timedelta(minutes=7)
    assert w.visit() == workspace_image.POLL_SNAPSHOT
    [image] = w.cloud.images.values()
    assert image.created_from == builder.id and w.status["phase"] == "Snapshotting"
    assert image.labels[policy.LABEL_IMAGE_UID] == UID

    w.cloud.finish_snapshots(size_gb=3.1)
    assert w.visit() is None
    status = w.status
    assert status["phase"] == "Ready" and status["imageId"] == image.id
    assert status["imageSizeGB"] == 3.1 and status["diskSizeGB"] == 40
    assert status["bakeSeconds"] == 7 * 60 and status["osProfile"] == "debian-13"
    assert status["project"] == policy.project_fingerprint(
        "https://api.hetzner.cloud/v1", TOKEN)
    assert ready_reason(status) == ("True", "Baked")
    assert w.builders() == [] and "builder" not in status
    assert TOKEN not in str(status) and TOKEN not in str(w.events)


def test_a_ready_image_costs_one_list_call_and_changes_nothing() -> None:
    w = World()
    w.bake()
    w.cloud.calls.clear()
    before = dict(w.status)
    assert w.visit() is None
    assert w.cloud.calls.methods() == ["list_snapshots"]
    assert w.status["imageId"] == before["imageId"]


def test_a_new_revision_keeps_the_old_snapshot_bootable_until_it_replaces_it() -> None:
    w = World()
    first = w.bake()["imageId"]
    w.kube.images["dev"]["spec"]["builder"] = {"type": "cx33"}  # a new revision
    w.visit()
    status = w.status
    assert status["phase"] == "Baking" and status["imageId"] == first
    assert ready_reason(status) == ("True", "Rebaking")
    w.cloud.boot()
    w.power_off_builders()
    w.visit()
    w.cloud.finish_snapshots()
    w.visit()
    assert w.status["imageId"] != first and first not in w.cloud.images
    assert list(w.cloud.images) == [w.status["imageId"]]


def test_a_protected_superseded_snapshot_is_left_alone() -> None:
    w = World()
    first = w.bake()["imageId"]
    w.cloud.protect_image(first)
    w.kube.images["dev"]["spec"]["builder"] = {"type": "cx33"}
    w.bake()
    assert first in w.cloud.images and len(w.cloud.images) == 2


def test_a_builder_that_never_powers_off_is_deleted_and_retried_later() -> None:
    w = World()
    w.visit()
    w.cloud.boot()
    w.now += timedelta(minutes=30)
    delay = w.visit()
    assert delay == policy.retry_delay(1).total_seconds()
    assert w.builders() == [] and w.status["phase"] == "Failed"
    assert ready_reason(w.status) == ("False", "BakeTimedOut")
    assert w.status["failure"]["count"] == 1
    w.now += timedelta(minutes=5)  # before the retry: no new builder
    w.visit()
    assert w.builders() == []
    w.now += timedelta(minutes=6)
    assert w.visit() == workspace_image.POLL_BAKING and len(w.builders()) == 1


def test_retries_back_off_up_to_six_hours() -> None:
    assert [policy.retry_delay(n) for n in (1, 2, 3)] == [
        timedelta(minutes=10), timedelta(minutes=20), timedelta(minutes=40)]
    assert policy.retry_delay(20) == timedelta(hours=6)


def test_a_lost_create_response_is_adopted_not_repeated() -> None:
    w = World()
    w.cloud.lose_next_create_response()
    assert w.visit() == workspace_image.RETRY_PROBLEM  # transient: the server was made
    assert len(w.builders()) == 1
    w.visit()
    assert len(w.builders()) == 1 and w.status["phase"] == "Baking"
    w2 = World()
    w2.cloud.lose_next_create_response(retried=True)  # uniqueness_error on the retry
    assert w2.visit() == workspace_image.POLL_BAKING and len(w2.builders()) == 1


def test_a_server_at_the_builders_name_that_is_not_ours_is_never_touched() -> None:
    w = World()
    from agentspaces.api.image_model import WorkspaceImageSpec
    rev = policy.revision(WorkspaceImageSpec.model_validate(w.kube.images["dev"]["spec"]))
    foreign = w.cloud.add_foreign(policy.builder_name("dev", rev))
    w.visit()
    assert w.cloud.servers[foreign.id] == foreign and w.builders() == []
    assert ready_reason(w.status) == ("False", "BuilderNameTaken")


def test_a_missing_token_secret_says_so_and_calls_no_cloud() -> None:
    w = World()
    del w.kube.secrets[(NS, "hetzner")]
    assert w.visit() == workspace_image.RETRY_PROBLEM
    assert ready_reason(w.status) == ("False", "SecretNotFound")
    assert w.cloud.calls.methods() == []


def test_a_snapshot_deleted_by_hand_is_baked_again() -> None:
    w = World()
    first = w.bake()["imageId"]
    del w.cloud.images[first]
    w.visit()
    assert "imageId" not in w.status and len(w.builders()) == 1
    assert any(e[1] == "SnapshotMissing" for e in w.events)


def test_delete_removes_builders_and_snapshots_but_a_protected_one() -> None:
    w = World()
    first = w.bake()["imageId"]
    w.cloud.protect_image(first)
    w.kube.images["dev"]["spec"]["builder"] = {"type": "cx33"}
    w.visit()  # a builder of the new revision is running
    assert len(w.builders()) == 1
    assert w.visit(deleting=True) is None
    assert w.builders() == [] and list(w.cloud.images) == [first]
    assert any(e[1] == "SnapshotKept" for e in w.events)


def test_boot_choice_offers_a_snapshot_only_when_ready_and_of_the_same_project() -> None:
    project = policy.project_fingerprint("https://api.hetzner.cloud/v1", TOKEN)
    body = {"status": {"imageId": 42, "osProfile": "debian-13", "project": project,
                       "revision": "abc", "phase": "Baking"}}
    assert policy.boot_choice("dev", body, project).image_id == 42
    assert policy.boot_choice("dev", body, "other").image_id is None
    assert "another Hetzner project" in policy.boot_choice("dev", body, "other").why
    assert policy.boot_choice("dev", {"status": {"phase": "Baking"}}, project).image_id is None
    assert "not found" in policy.boot_choice("dev", None, project).why


def test_builder_names_are_hostnames_of_at_most_63_characters() -> None:
    name = policy.builder_name("a." * 120, "0123456789ab")
    assert len(name) <= 63 and name.endswith("-01234567")
    assert all(c.isalnum() or c == "-" for c in name)
