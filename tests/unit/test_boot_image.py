"""What a new server boots when its class names a WorkspaceImage: the snapshot while the
image has one in the class's project, the class's own image otherwise; never a wait."""

from __future__ import annotations

from typing import Any

from agentspaces import metrics
from agentspaces.clouds.hetzner_images import ImageInfo
from agentspaces.reconcile import image_policy, server_step
from tests.support.scope_builder import HETZNER_TOKEN, ScopeBuilder

ENDPOINT = "https://api.hetzner.cloud/v1"


def _boots(source: str) -> float:
    return metrics.REGISTRY.get_sample_value("agentspaces_server_boots_total",
                                             {"source": source}) or 0.0


def _image(b: ScopeBuilder, **status: Any) -> None:
    b.kube.images["dev"] = {"metadata": {"name": "dev", "uid": "u"}, "status": status}


def _ready(project: str | None = None) -> dict[str, Any]:
    return {"phase": "Ready", "imageId": 4242, "osProfile": "debian-13", "revision": "r1",
            "project": project or image_policy.project_fingerprint(ENDPOINT, HETZNER_TOKEN)}


async def _create(b: ScopeBuilder) -> str:
    scope = b.scope()
    await server_step.reconcile(scope)
    (server_id,) = b.servers.ids()
    return b.servers.booted[server_id]


async def test_a_ready_image_of_the_class_project_is_booted(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder.with_class(server={"type": "cx23", "location": "fsn1",
                                         "image": "debian-13", "workspaceImage": "dev"})
    _image(b, **_ready())
    b.servers.images[4242] = ImageInfo(id=4242, description="", status="available")
    before = _boots("image")
    assert await _create(b) == "4242"
    assert _boots("image") == before + 1
    assert "BootImage" in b.reasons()


async def test_no_snapshot_yet_boots_the_class_image_cold(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder.with_class(server={"type": "cx23", "location": "fsn1",
                                         "image": "debian-13", "workspaceImage": "dev"})
    _image(b, phase="Baking")
    before = _boots("cold")
    assert await _create(b) == "debian-13"
    assert _boots("cold") == before + 1
    [event] = [e for e in b.events if e.reason == "ColdStart"]
    assert "has no image yet (Baking)" in event.message


async def test_an_image_of_another_project_is_not_booted(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder.with_class(server={"type": "cx23", "location": "fsn1",
                                         "image": "debian-13", "workspaceImage": "dev"})
    _image(b, **_ready(project="0123456789abcdef"))
    assert await _create(b) == "debian-13"
    assert any("another Hetzner project" in e.message for e in b.events)


async def test_a_missing_image_boots_cold(scope_builder: ScopeBuilder) -> None:
    b = scope_builder.with_class(server={"type": "cx23", "location": "fsn1",
                                         "image": "debian-13", "workspaceImage": "gone"})
    assert await _create(b) == "debian-13"
    assert any("WorkspaceImage gone not found" in e.message for e in b.events)


async def test_a_workspace_naming_its_own_image_boots_that(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder.with_class(server={"type": "cx23", "location": "fsn1",
                                         "image": "debian-13", "workspaceImage": "dev"}
                                 ).with_spec(server={"image": "ubuntu-24.04"})
    _image(b, **_ready())
    assert await _create(b) == "ubuntu-24.04"
    assert "get_workspace_image" not in b.kube.calls.methods()
