"""Snapshots in the Hetzner emulator: create_image from a server, the image's life from
creating to available, listing, protection, deletion, booting servers from a snapshot
and per-project isolation. Through the real `hcloud` library and the operator's
HcloudServers adapter; raw httpx only for statuses and bodies hcloud hides."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import hcloud
import httpx
import pytest
from hcloud.images import BoundImage, Image
from hcloud.server_types import ServerType
from hcloud.servers import BoundServer

from agentspaces.clouds.budget import PRIORITIES
from agentspaces.clouds.errors import CloudError, ErrorKind
from agentspaces.clouds.hetzner import HcloudServers, ServerRequest
from agentspaces.sandbox.hetzner import HetznerEmulator

TOKEN = "images-test-token"
OTHER = "images-other-project"
SYSTEM_IMAGE = 161547269  # ubuntu-24.04, x86, in the emulator's catalogue


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def ident(resource: BoundServer | BoundImage) -> int:
    assert resource.id is not None
    return resource.id


def api_error(fn: Callable[[], Any]) -> hcloud.APIException:
    with pytest.raises(hcloud.APIException) as info:
        fn()
    return info.value


@pytest.fixture
def emulator() -> Iterator[HetznerEmulator]:
    with HetznerEmulator(TOKEN, boot_seconds=0.05, delete_seconds=0.05,
                         action_seconds=0.05) as emu:
        yield emu


@pytest.fixture
def client(emulator: HetznerEmulator) -> hcloud.Client:
    return hcloud.Client(token=TOKEN, api_endpoint=emulator.url, poll_interval=0.02)


def running(client: hcloud.Client, name: str, server_type: str = "cx33",
            image: Image | None = None) -> BoundServer:
    server = client.servers.create(name, server_type=ServerType(name=server_type),
                                   image=image or Image(name="debian-13")).server
    assert wait_until(lambda: client.servers.get_by_id(ident(server)).status == "running")
    return server


def snapshot(client: hcloud.Client, server: BoundServer, **kwargs: Any) -> BoundImage:
    """A finished snapshot of `server`."""
    response = client.servers.create_image(server, **kwargs)
    response.action.wait_until_finished()
    return client.images.get_by_id(ident(response.image))


# -- create_image ------------------------------------------------------------------------

def test_create_image_on_a_running_server_is_creating_then_available(
        client: hcloud.Client, emulator: HetznerEmulator) -> None:
    server = running(client, "builder")
    emulator.snapshot_seconds = 0.4
    emulator.snapshot_size_gb = 3.25
    response = client.servers.create_image(server, description="ws image",
                                           labels={"agentspaces.dev/image": "base"})
    image, action = response.image, response.action
    assert (image.type, image.status, image.name) == ("snapshot", "creating", None)
    assert image.description == "ws image"
    assert image.image_size is None  # known only once written
    assert image.disk_size == 80  # cx33's disk
    assert image.created_from is not None and image.created_from.id == server.id
    assert image.created_from.name == "builder"
    assert (image.os_flavor, image.os_version, image.architecture) == ("debian", "13", "x86")
    assert image.rapid_deploy is False and image.bound_to is None
    assert image.protection == {"delete": False}
    assert image.labels == {"agentspaces.dev/image": "base"}
    assert action.command == "create_image" and action.status == "running"
    assert action.resources == [{"id": server.id, "type": "server"}]
    # The server is locked while its disk is copied, and keeps running.
    busy = client.servers.get_by_id(ident(server))
    assert (busy.locked, busy.status) == (True, "running")
    assert api_error(lambda: busy.power_off()).code == "locked"

    action.wait_until_finished()
    done = client.images.get_by_id(ident(image))
    assert (done.status, done.image_size) == ("available", 3.25)
    assert client.servers.get_by_id(ident(server)).locked is False
    assert emulator.images[ident(image)]["status"] == "available"


def test_create_image_on_an_off_server_and_the_auto_description(
        client: hcloud.Client, emulator: HetznerEmulator) -> None:
    server = running(client, "builder", server_type="cx23")
    server.power_off().wait_until_finished()
    assert client.servers.get_by_id(ident(server)).status == "off"
    image = snapshot(client, server)
    assert image.status == "available" and image.disk_size == 40
    assert (image.description or "").startswith("builder-")  # generated when none is sent
    assert client.servers.get_by_id(ident(server)).status == "off"  # a snapshot powers nothing on


def test_create_image_refusals(client: hcloud.Client, emulator: HetznerEmulator) -> None:
    emulator.boot_seconds = 5.0
    booting = client.servers.create("booting", server_type=ServerType(name="cx23"),
                                    image=Image(name="debian-13")).server
    assert api_error(lambda: client.servers.create_image(booting)).code == "locked"
    emulator.boot_seconds = 0.05
    server = running(client, "builder")
    emulator.snapshot_seconds = 2.0
    client.servers.create_image(server)
    assert api_error(lambda: client.servers.create_image(server)).code == "locked"
    missing = BoundServer(client.servers, {"id": 999}, complete=False)
    assert api_error(lambda: client.servers.create_image(missing)).code == "not_found"
    bad = api_error(lambda: client.servers.create_image(booting, type="app"))
    assert bad.code == "invalid_input"
    assert len(emulator.images) == 1


def test_snapshots_outlive_their_server_backups_do_not(
        client: hcloud.Client, emulator: HetznerEmulator) -> None:
    server = running(client, "builder")
    kept = snapshot(client, server)
    backup = snapshot(client, server, type="backup")
    assert backup.bound_to is not None and backup.bound_to.id == server.id
    assert [i.id for i in client.images.get_all(bound_to=[str(server.id)])] == [backup.id]
    client.servers.delete(server)
    assert wait_until(lambda: backup.id not in emulator.images)
    assert client.images.get_by_id(ident(kept)).status == "available"


# -- listing and reading -------------------------------------------------------------------

def test_list_filters_by_type_status_and_label_selector(
        client: hcloud.Client, emulator: HetznerEmulator) -> None:
    server = running(client, "builder")
    old = snapshot(client, server, labels={"role": "workspace", "gen": "1"})
    new = snapshot(client, server, labels={"role": "workspace", "gen": "2"})
    other = snapshot(client, server, labels={"role": "scratch"})
    emulator.snapshot_seconds = 5.0
    pending = client.servers.create_image(server, labels={"role": "workspace"}).image

    snapshots = client.images.get_all(type=["snapshot"])
    assert [i.id for i in snapshots] == [old.id, new.id, other.id, pending.id]
    systems = client.images.get_all(type=["system"])
    assert systems and all(i.type == "system" for i in systems)
    both = client.images.get_all(type=["system", "snapshot"])
    assert len(both) == len(systems) + 4
    selected = client.images.get_all(type=["snapshot"], label_selector="role=workspace,gen!=1")
    assert [i.id for i in selected] == [new.id, pending.id]
    # hcloud 2.27 sends per_page as `status`, so that filter goes by hand.
    with httpx.Client(base_url=emulator.url,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        creating = http.get("/images", params={"status": "creating"}).json()["images"]
        available = http.get("/images", params=[("status", "available"),
                                                ("type", "snapshot")]).json()["images"]
    assert [i["id"] for i in creating] == [pending.id]
    assert [i["id"] for i in available] == [old.id, new.id, other.id]
    assert [i.id for i in client.images.get_all(type=["snapshot"], sort=["id:desc"])] == [
        pending.id, other.id, new.id, old.id]
    page = client.images.get_list(type=["snapshot"], page=2, per_page=3)
    assert [i.id for i in page.images] == [pending.id]
    assert page.meta.pagination is not None and page.meta.pagination.total_entries == 4


def test_get_finds_snapshots_and_system_images(client: hcloud.Client) -> None:
    image = snapshot(client, running(client, "builder"))
    assert client.images.get_by_id(ident(image)).type == "snapshot"
    assert client.images.get_by_id(SYSTEM_IMAGE).name == "ubuntu-24.04"
    assert api_error(lambda: client.images.get_by_id(350_999_999)).code == "not_found"


# -- update, protection, delete --------------------------------------------------------

def test_update_a_snapshot_but_not_a_system_image(client: hcloud.Client) -> None:
    image = snapshot(client, running(client, "builder"), labels={"a": "1"})
    updated = client.images.update(image, description="renamed", labels={"b": "2"})
    assert (updated.description, updated.labels) == ("renamed", {"b": "2"})
    assert client.images.get_by_id(ident(image)).labels == {"b": "2"}
    bad = api_error(lambda: client.images.update(image, labels={"bad key!": "x"}))
    assert bad.code == "invalid_input"
    system = client.images.get_by_id(SYSTEM_IMAGE)
    assert api_error(lambda: client.images.update(system, description="x")).code == "forbidden"
    assert api_error(lambda: client.images.delete(system)).code == "forbidden"
    assert client.images.get_by_id(SYSTEM_IMAGE).description == "Ubuntu 24.04"


def test_protection_blocks_delete_until_lifted(client: hcloud.Client,
                                               emulator: HetznerEmulator) -> None:
    image = snapshot(client, running(client, "builder"))
    action = client.images.change_protection(image, delete=True)
    assert action.command == "change_protection"
    assert action.resources == [{"id": image.id, "type": "image"}]
    assert client.images.get_by_id(ident(image)).protection == {"delete": True}
    with httpx.Client(base_url=emulator.url,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        refused = http.delete(f"/images/{image.id}")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "protected"
    assert image.id in emulator.images

    client.images.change_protection(image, delete=False)
    assert client.images.delete(image) is True
    assert image.id not in emulator.images
    assert api_error(lambda: client.images.get_by_id(ident(image))).code == "not_found"
    assert api_error(lambda: client.images.delete(image)).code == "not_found"


def test_a_snapshot_still_creating_cannot_be_deleted(client: hcloud.Client,
                                                     emulator: HetznerEmulator) -> None:
    emulator.snapshot_seconds = 0.3
    response = client.servers.create_image(running(client, "builder"))
    assert api_error(lambda: client.images.delete(response.image)).code == "locked"
    response.action.wait_until_finished()
    assert client.images.delete(response.image) is True


# -- booting from a snapshot -------------------------------------------------------------

def test_a_server_boots_from_a_snapshot_whose_disk_fits(client: hcloud.Client,
                                                        emulator: HetznerEmulator) -> None:
    image = snapshot(client, running(client, "builder", server_type="cx33"))
    from_snapshot = running(client, "ws-1", server_type="cx43", image=Image(id=image.id))
    booted = client.servers.get_by_id(ident(from_snapshot))
    assert booted.image is not None
    assert (booted.image.id, booted.image.type) == (image.id, "snapshot")
    # cx23's 40 GB disk cannot hold the 80 GB image of a cx33.
    small = api_error(lambda: client.servers.create(
        "ws-2", server_type=ServerType(name="cx23"), image=Image(id=image.id)))
    assert small.code == "invalid_input"
    assert small.details["fields"][0]["name"] == "image"
    # The id as a string, as a hand-written request may send it.
    with httpx.Client(base_url=emulator.url,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        made = http.post("/servers", json={"name": "ws-3", "server_type": "cpx22",
                                           "image": str(image.id)})
    assert made.status_code == 201
    assert made.json()["server"]["image"]["id"] == image.id


def test_a_snapshot_still_creating_is_no_image_to_boot_from(
        client: hcloud.Client, emulator: HetznerEmulator) -> None:
    emulator.snapshot_seconds = 5.0
    pending = client.servers.create_image(running(client, "builder")).image
    unknown = api_error(lambda: client.servers.create(
        "ws", server_type=ServerType(name="cx43"), image=Image(id=999_999)))
    creating = api_error(lambda: client.servers.create(
        "ws", server_type=ServerType(name="cx43"), image=Image(id=pending.id)))
    assert (creating.code, creating.details["fields"][0]["name"]) == (
        unknown.code, unknown.details["fields"][0]["name"]) == ("invalid_input", "image")


# -- projects --------------------------------------------------------------------------

def test_each_project_sees_only_its_own_snapshots(client: hcloud.Client,
                                                  emulator: HetznerEmulator) -> None:
    emulator.add_project(OTHER)
    other = hcloud.Client(token=OTHER, api_endpoint=emulator.url, poll_interval=0.02)
    mine = snapshot(client, running(client, "builder"))
    theirs = snapshot(other, running(other, "builder"))
    assert mine.id != theirs.id  # ids are global, as at Hetzner

    assert [i.id for i in other.images.get_all(type=["snapshot"])] == [theirs.id]
    assert api_error(lambda: other.images.get_by_id(ident(mine))).code == "not_found"
    assert api_error(lambda: other.images.delete(mine)).code == "not_found"
    assert api_error(lambda: other.images.change_protection(mine, delete=True)).code \
        == "not_found"
    refused = api_error(lambda: other.servers.create(
        "ws", server_type=ServerType(name="cx43"), image=Image(id=mine.id)))
    assert refused.code == "invalid_input"
    assert set(emulator.images) == {mine.id}
    assert set(emulator.project_images(OTHER)) == {theirs.id}


# -- the shared pipeline: counters, rate limit, faults -----------------------------------

def test_the_new_routes_are_counted_limited_and_faultable(client: hcloud.Client,
                                                          emulator: HetznerEmulator) -> None:
    server = running(client, "builder")
    image = snapshot(client, server)
    emulator.reset_calls()
    client.images.get_by_id(ident(image))
    client.images.change_protection(image, delete=False)
    client.images.update(image, description="d")
    assert emulator.calls["GET /images/{id}"] == 1
    assert emulator.calls["POST /images/{id}/actions/change_protection"] == 1
    assert emulator.calls["PUT /images/{id}"] == 1

    emulator.faults.add(503, count=1, endpoint="POST /servers/{id}/actions/create_image")
    assert api_error(lambda: client.servers.create_image(server)).code == "unavailable"
    assert emulator.images.keys() == {image.id}  # the fault answered; nothing was made

    emulator.set_rate_limit(2, refill_per_second=0.001)
    client.images.get_by_id(ident(image))
    client.images.get_all(type=["snapshot"])
    with httpx.Client(base_url=emulator.url,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        limited = http.post(f"/servers/{server.id}/actions/create_image", json={})
        deleted = http.delete(f"/images/{image.id}")
    assert (limited.status_code, deleted.status_code) == (429, 429)
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert emulator.calls["POST /servers/{id}/actions/create_image"] == 2
    assert image.id in emulator.images


def test_the_routes_need_the_token(emulator: HetznerEmulator) -> None:
    with httpx.Client(base_url=emulator.url) as http:
        answers = [http.get("/images"), http.delete("/images/1"),
                   http.post("/servers/1/actions/create_image", json={})]
    assert [a.status_code for a in answers] == [401, 401, 401]


# -- the operator's adapter ------------------------------------------------------------

async def test_the_adapter_makes_lists_boots_from_and_deletes_snapshots(
        client: hcloud.Client, emulator: HetznerEmulator) -> None:
    builder = running(client, "builder")
    builder.power_off().wait_until_finished()
    emulator.snapshot_seconds = 0.3
    servers = HcloudServers(TOKEN, emulator.url)
    try:
        made = await servers.create_snapshot(ident(builder), "workspace image",
                                             {"agentspaces.dev/image": "base"})
        assert (made.status, made.created_from, made.disk_size) == ("creating", builder.id, 80)
        assert made.image_size is None and not made.protected and made.created is not None
        assert not made.available
        assert wait_until(lambda: emulator.images[made.id]["status"] == "available")
        got = await servers.get_image(made.id)
        assert got is not None and got.available and got.image_size == 2.5
        assert got.labels == {"agentspaces.dev/image": "base"}
        assert await servers.get_image(350_999_999) is None

        snapshot(client, builder, labels={"agentspaces.dev/image": "other"})
        listed = await servers.list_snapshots("agentspaces.dev/image=base")
        assert [i.id for i in listed] == [made.id]

        ws = await servers.create(ServerRequest(
            name="ws-1", server_type="cx43", location="fsn1", image=str(made.id),
            labels={}, user_data=""))
        assert emulator.servers[ws.id]["image"]["id"] == made.id

        client.images.change_protection(Image(id=made.id), delete=True)
        assert (await servers.get_image(made.id) or made).protected
        with pytest.raises(CloudError) as refused:
            await servers.delete_image(made.id)
        assert (refused.value.kind, refused.value.code) == (ErrorKind.PERMANENT, "protected")
        client.images.change_protection(Image(id=made.id), delete=False)
        await servers.delete_image(made.id)
        assert made.id not in emulator.images
        await servers.delete_image(made.id)  # already gone counts as deleted
        assert emulator.calls["DELETE /images/{id}"] == 3
        with pytest.raises(CloudError) as missing:
            await servers.create_snapshot(999, "x", {})
        assert missing.value.kind is ErrorKind.NOT_FOUND
    finally:
        await servers.aclose()


def test_every_image_call_has_a_priority() -> None:
    for operation in ("list_snapshots", "get_image", "create_snapshot", "delete_image"):
        assert f"hetzner.{operation}" in PRIORITIES
    assert PRIORITIES["hetzner.delete_image"] == PRIORITIES["hetzner.delete"]
    assert PRIORITIES["hetzner.create_snapshot"] == PRIORITIES["hetzner.create"]
