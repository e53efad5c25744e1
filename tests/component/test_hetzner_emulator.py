"""The Hetzner Cloud emulator, driven through the real `hcloud` library (raw httpx only
for what hcloud hides: HTTP statuses and headers)."""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import hcloud
import httpx
import pytest
import requests
from hcloud.images import Image
from hcloud.locations import Location
from hcloud.server_types import ServerType
from hcloud.servers import BoundServer
from hcloud.ssh_keys import SSHKey

from agentspaces.lifeline import die_with_parent
from agentspaces.sandbox.hetzner import HetznerEmulator

TOKEN = "emulator-test-token"
PUBLIC_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq1K0f9cS3Zb0x1Y7ZgqkJ5m3n8o4V2b6cT1wQeRr5s"
              " dev@example")


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def emulator() -> Iterator[HetznerEmulator]:
    emu = HetznerEmulator(TOKEN, boot_seconds=0.1, delete_seconds=0.1, action_seconds=0.05)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def client(emulator: HetznerEmulator) -> hcloud.Client:
    return hcloud.Client(token=TOKEN, api_endpoint=emulator.url, poll_interval=0.02)


def create(client: hcloud.Client, name: str, **kwargs: Any) -> BoundServer:
    kwargs.setdefault("server_type", ServerType(name="cx23"))
    kwargs.setdefault("image", Image(name="ubuntu-24.04"))
    return client.servers.create(name, **kwargs).server


def sid(server: BoundServer) -> int:
    assert server.id is not None
    return server.id


def fetch(client: hcloud.Client, server: BoundServer) -> BoundServer:
    return client.servers.get_by_id(sid(server))


def ipv4(server: BoundServer) -> str:
    assert server.public_net is not None and server.public_net.ipv4 is not None
    return server.public_net.ipv4.ip


def ipv6(server: BoundServer) -> str:
    assert server.public_net is not None and server.public_net.ipv6 is not None
    return server.public_net.ipv6.ip


def api_error(call: Callable[[], object]) -> hcloud.APIException:
    with pytest.raises(hcloud.APIException) as info:
        call()
    return info.value


# -- servers ---------------------------------------------------------------------------

def test_create_returns_server_actions_and_boots(client: hcloud.Client,
                                                 emulator: HetznerEmulator) -> None:
    key = client.ssh_keys.create(name="dev", public_key=PUBLIC_KEY)
    result = client.servers.create(
        "ws-alpha", server_type=ServerType(name="cpx22"), image=Image(name="debian-12"),
        location=Location(name="hel1"), labels={"agentspaces.dev/workspace": "alpha"},
        user_data="#cloud-config\nruncmd: [true]\n", ssh_keys=[SSHKey(name="dev")])

    server = result.server
    assert server.status == "initializing"
    assert server.server_type and server.image and server.location
    assert (server.server_type.name, server.image.name, server.location.name) == (
        "cpx22", "debian-12", "hel1")
    assert server.labels == {"agentspaces.dev/workspace": "alpha"}
    assert result.root_password is None  # ssh keys given
    assert result.action.command == "create_server" and result.action.status == "running"
    assert [a.command for a in result.next_actions] == ["start_server"]
    assert ipaddress.IPv4Address(ipv4(server)) in ipaddress.IPv4Network(
        "203.0.113.0/24")
    assert ipaddress.IPv6Network(ipv6(server)).prefixlen == 64

    stored = emulator.servers[sid(server)]
    assert stored["user_data"] == "#cloud-config\nruncmd: [true]\n"
    assert stored["ssh_key_ids"] == [key.id]
    assert emulator.user_data(sid(server)) == stored["user_data"]

    result.action.wait_until_finished()
    assert fetch(client, server).status == "running"


def test_root_password_without_ssh_keys_and_stopped_start(client: hcloud.Client) -> None:
    result = client.servers.create("ws-off", server_type=ServerType(name="cx23"),
                                   image=Image(name="ubuntu-24.04"), start_after_create=False)
    assert isinstance(result.root_password, str) and len(result.root_password) >= 12
    assert result.next_actions == []
    result.action.wait_until_finished()
    assert fetch(client, result.server).status == "off"


def test_image_name_resolves_to_the_server_type_architecture(client: hcloud.Client) -> None:
    arm = create(client, "ws-arm", server_type=ServerType(name="cax11"))
    x86 = create(client, "ws-x86", server_type=ServerType(name="cx23"))
    assert arm.image is not None and x86.image is not None
    assert arm.image.architecture == "arm" and x86.image.architecture == "x86"
    assert arm.image.name == x86.image.name == "ubuntu-24.04"
    assert arm.image.id != x86.image.id


def test_custom_ip_allocator_and_default_allocator() -> None:
    addresses = iter(["127.0.0.5", "127.0.0.6"])
    with HetznerEmulator(TOKEN, boot_seconds=0.05, ip_allocator=lambda: next(addresses)) as emu:
        client = hcloud.Client(token=TOKEN, api_endpoint=emu.url)
        ips = [ipv4(create(client, f"ws-{n}")) for n in range(2)]
        assert ips == ["127.0.0.5", "127.0.0.6"]
    with HetznerEmulator(TOKEN, boot_seconds=0.05) as emu:
        client = hcloud.Client(token=TOKEN, api_endpoint=emu.url)
        ips = [ipv4(create(client, f"ws-{n}")) for n in range(3)]
        assert len(set(ips)) == 3


def test_get_by_id_and_by_name(client: hcloud.Client) -> None:
    created = create(client, "ws-find")
    create(client, "ws-other")
    assert fetch(client, created).name == "ws-find"
    by_name = client.servers.get_by_name("ws-find")
    assert by_name is not None and by_name.id == created.id
    assert client.servers.get_by_name("ws-missing") is None
    error = api_error(lambda: client.servers.get_by_id(sid(created) + 999))
    assert error.code == "not_found"


@pytest.mark.parametrize(("selector", "expected"), [
    ("env=prod", {"a", "b"}),
    ("env==prod", {"a", "b"}),
    ("env!=prod", {"c", "d"}),
    ("team", {"a", "c"}),
    ("!team", {"b", "d"}),
    ("env=prod,team=red", {"a"}),
    ("env in (prod,dev)", {"a", "b", "c"}),
    ("env notin (prod,dev)", {"d"}),
    ("env in (dev),!team", set()),
])
def test_list_by_label_selector(client: hcloud.Client, selector: str,
                                expected: set[str]) -> None:
    labels = {"a": {"env": "prod", "team": "red"}, "b": {"env": "prod"},
              "c": {"env": "dev", "team": "blue"}, "d": {}}
    for name, server_labels in labels.items():
        create(client, name, labels=server_labels)
    assert {s.name for s in client.servers.get_all(label_selector=selector)} == expected


def test_invalid_label_selector_is_invalid_input(client: hcloud.Client) -> None:
    error = api_error(lambda: client.servers.get_all(label_selector="env=(x"))
    assert error.code == "invalid_input"


def test_list_by_status(client: hcloud.Client, emulator: HetznerEmulator) -> None:
    emulator.boot_seconds = 30.0  # stays initializing for this test
    booting = create(client, "ws-booting")
    emulator.boot_seconds = 0.05
    ready = create(client, "ws-ready")
    assert wait_until(lambda: fetch(client, ready).status == "running")
    assert [s.id for s in client.servers.get_all(status=["initializing"])] == [booting.id]
    assert [s.id for s in client.servers.get_all(status=["running"])] == [ready.id]


def test_pagination_across_more_than_50_servers(client: hcloud.Client,
                                                emulator: HetznerEmulator) -> None:
    for n in range(55):
        create(client, f"ws-{n:02d}", labels={"fleet": "x"})
    create(client, "outsider")
    emulator.reset_calls()

    servers = client.servers.get_all(label_selector="fleet=x")

    assert sorted(str(s.name) for s in servers) == [f"ws-{n:02d}" for n in range(55)]
    assert emulator.calls == Counter({"GET /servers": 2})  # per_page=50: two pages
    page = client.servers.get_list(label_selector="fleet=x", page=2, per_page=50)
    pagination = page.meta.pagination
    assert pagination is not None
    assert len(page.servers) == 5
    assert (pagination.page, pagination.per_page, pagination.previous_page,
            pagination.next_page, pagination.last_page, pagination.total_entries) == (
        2, 50, 1, None, 2, 55)
    capped = client.servers.get_list(per_page=500)
    assert capped.meta.pagination is not None
    assert len(capped.servers) == 50 and capped.meta.pagination.per_page == 50
    assert capped.meta.pagination.next_page == 2


def test_lingering_delete_goes_deleting_then_disappears(client: hcloud.Client,
                                              emulator: HetznerEmulator) -> None:
    deleted: list[dict[str, Any]] = []
    emulator.on_server_deleted(deleted.append)
    emulator.delete_seconds = 0.4  # time to observe "deleting"
    emulator.linger_deletes = True
    server = create(client, "ws-doomed")
    action = client.servers.delete(server)
    assert action.command == "delete_server" and action.status == "running"
    assert fetch(client, server).status == "deleting"
    assert api_error(lambda: client.servers.delete(server)).code == "locked"

    assert wait_until(lambda: server.id not in emulator.servers)
    assert api_error(lambda: fetch(client, server)).code == "not_found"
    assert client.actions.get_by_id(action.id).status == "success"
    assert emulator.wait_for_hooks()
    assert [s["id"] for s in deleted] == [server.id]
    # The name is free again.
    assert create(client, "ws-doomed").id != server.id


def test_update_name_and_labels(client: hcloud.Client) -> None:
    server = create(client, "ws-old", labels={"a": "1"})
    create(client, "ws-taken")
    updated = client.servers.update(server, name="ws-new", labels={"b": "2"})
    assert (updated.name, updated.labels) == ("ws-new", {"b": "2"})
    assert fetch(client, server).name == "ws-new"
    assert api_error(lambda: client.servers.update(server, name="ws-taken")).code == (
        "uniqueness_error")


def test_power_actions_and_locked(client: hcloud.Client, emulator: HetznerEmulator) -> None:
    emulator.boot_seconds = emulator.action_seconds = 0.3  # time to observe "locked"
    server = create(client, "ws-power")
    assert api_error(lambda: client.servers.power_off(server)).code == "locked"  # booting
    assert wait_until(lambda: fetch(client, server).status == "running")

    off = client.servers.power_off(server)
    assert fetch(client, server).locked is True
    assert api_error(lambda: client.servers.power_on(server)).code == "locked"
    off.wait_until_finished()
    assert fetch(client, server).status == "off"
    client.servers.power_on(server).wait_until_finished()
    assert fetch(client, server).status == "running"
    commands = [a.command for a in client.servers.get_actions(server)]
    assert commands == ["create_server", "start_server", "stop_server", "start_server"]
    action = client.servers.get_actions(server)[2]
    assert client.servers.actions.get_by_id(action.id).command == "stop_server"


# -- errors ----------------------------------------------------------------------------

def test_duplicate_name_is_uniqueness_error(client: hcloud.Client) -> None:
    create(client, "ws-dup")
    error = api_error(lambda: create(client, "ws-dup"))
    assert error.code == "uniqueness_error"
    assert error.details == {"fields": [{"name": "name"}]}


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"server_type": ServerType(name="cx99")}, "server_type"),
    ({"image": Image(name="windows-3.11")}, "image"),
    ({"location": Location(name="mars1")}, "location"),
])
def test_unknown_references_are_invalid_input(client: hcloud.Client, kwargs: dict[str, Any],
                                              field: str) -> None:
    error = api_error(lambda: create(client, "ws-bad", **kwargs))
    assert error.code == "invalid_input"
    assert [f["name"] for f in error.details["fields"]] == [field]
    assert field in error.message


def test_error_statuses_and_body_shape(emulator: HetznerEmulator) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=emulator.url, headers=auth) as http:
        bad_type = http.post("/servers", json={"name": "x", "server_type": "cx99",
                                               "image": "ubuntu-24.04"})
        missing = http.get("/servers/123")
        bad_json = http.post("/servers", content=b"{not json",
                             headers={"Content-Type": "application/json"})
        wrong_region = http.post("/servers", json={"name": "x", "server_type": "cx23",
                                                   "image": "ubuntu-24.04",
                                                   "location": "ash"})
    assert bad_type.status_code == 422
    assert bad_type.json()["error"]["code"] == "invalid_input"
    assert set(bad_type.json()["error"]) == {"code", "message", "details"}
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    assert (bad_json.status_code, bad_json.json()["error"]["code"]) == (400, "json_error")
    assert wrong_region.status_code == 422
    assert wrong_region.json()["error"]["message"] == "unsupported location for server type"


def test_each_token_is_one_project_that_sees_only_its_own(emulator: HetznerEmulator) -> None:
    """As at Hetzner, a token belongs to one project: another tenant's token lists, gets,
    deletes and names only its own servers and firewalls."""
    emulator.add_project("tenant-b")
    other = hcloud.Client(token="tenant-b", api_endpoint=emulator.url, poll_interval=0.02)
    mine = create(hcloud.Client(token=TOKEN, api_endpoint=emulator.url, poll_interval=0.02),
                  "same-name")
    theirs = create(other, "same-name")  # names are unique per project only
    assert sid(mine) != sid(theirs)
    assert [sid(s) for s in other.servers.get_all()] == [sid(theirs)]
    assert set(emulator.servers) == {sid(mine)}
    assert set(emulator.project_servers("tenant-b")) == {sid(theirs)}
    with pytest.raises(hcloud.APIException) as err:
        other.servers.get_by_id(sid(mine))
    assert err.value.code == "not_found"
    with pytest.raises(ValueError):
        emulator.add_project(TOKEN)


def test_wrong_or_missing_token_is_unauthorized(emulator: HetznerEmulator) -> None:
    wrong = hcloud.Client(token="not-the-token", api_endpoint=emulator.url)
    assert api_error(lambda: wrong.servers.get_all()).code == "unauthorized"
    with httpx.Client(base_url=emulator.url) as http:
        response = http.get("/servers")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert emulator.calls["GET /servers"] == 2  # rejected requests are counted too


# -- rate limiting ---------------------------------------------------------------------

def test_rate_limit_headers_and_429() -> None:
    now = [1000.0]
    with HetznerEmulator(TOKEN, rate_limit=3, rate_refill_per_second=1.0,
                         rate_clock=lambda: now[0]) as emu, \
            httpx.Client(base_url=emu.url,
                         headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        answers = [http.get("/locations") for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert {a.headers["RateLimit-Limit"] for a in answers} == {"3"}
        assert answers[3].json()["error"]["code"] == "rate_limit_exceeded"
        reset = int(answers[3].headers["RateLimit-Reset"])
        assert time.time() + 2 <= reset <= time.time() + 4  # empty bucket: full in 3 s

        now[0] += 1.0  # one token refilled
        assert http.get("/locations").status_code == 200
        assert http.get("/locations").status_code == 429
        # Another token (another project) has its own bucket; 401s still consume it.
        other = http.get("/locations", headers={"Authorization": "Bearer other"})
        assert (other.status_code, other.headers["RateLimit-Remaining"]) == (401, "2")

        emu.set_rate_limit(10, refill_per_second=5.0)
        assert http.get("/locations").headers["RateLimit-Remaining"] == "9"


def test_hcloud_retries_rate_limit_exceeded() -> None:
    # The bucket's clock reads 0 for the first two requests, then 10 s later: the second
    # request is refused and hcloud's own retry (after ~1 s) finds the bucket refilled.
    ticks = iter([0.0, 0.0])
    with HetznerEmulator(TOKEN, rate_limit=1, rate_clock=lambda: next(ticks, 10.0)) as emu:
        client = hcloud.Client(token=TOKEN, api_endpoint=emu.url)
        client.locations.get_all()
        assert len(client.locations.get_all()) == 6
        assert [r.status for r in emu.requests] == [200, 429, 200]


# -- fault injection -------------------------------------------------------------------

def test_503_is_not_retried_by_hcloud(client: hcloud.Client,
                                      emulator: HetznerEmulator) -> None:
    emulator.faults.add(503, count=2, endpoint="GET /server_types")
    for _ in range(2):
        error = api_error(lambda: client.server_types.get_all())
        assert error.code == "unavailable"
    assert emulator.calls["GET /server_types"] == 2  # one request per call: no retry
    assert len(client.server_types.get_all()) > 0
    assert emulator.calls["GET /server_types"] == 3
    assert emulator.faults.rules == []


def test_502_plain_gateway_error_is_retried_by_hcloud(client: hcloud.Client,
                                                      emulator: HetznerEmulator) -> None:
    rule = emulator.faults.add(502, count=1, json_body=False, path_prefix="/locations")
    assert len(client.locations.get_all()) == 6
    assert emulator.calls["GET /locations"] == 2
    assert [r.status for r in emulator.requests] == [502, 200]
    assert rule.hits == 1


def test_fault_matching_by_method_and_duration(client: hcloud.Client,
                                               emulator: HetznerEmulator) -> None:
    emulator.faults.add(500, method="POST", duration=1.0)
    assert api_error(lambda: create(client, "ws-a")).code == "server_error"
    assert len(client.locations.get_all()) == 6  # GETs unaffected
    assert wait_until(lambda: emulator.faults.rules == [], timeout=3)
    assert create(client, "ws-a").name == "ws-a"


def test_delay_fault_slows_the_answer(client: hcloud.Client,
                                      emulator: HetznerEmulator) -> None:
    emulator.faults.add_delay(0.4, count=1)
    started = time.monotonic()
    client.locations.get_all()
    slow = time.monotonic() - started
    started = time.monotonic()
    client.locations.get_all()
    assert slow >= 0.4 and time.monotonic() - started < slow


def test_disconnect_is_not_retried_by_hcloud(client: hcloud.Client,
                                             emulator: HetznerEmulator) -> None:
    emulator.faults.add_disconnect(count=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        client.locations.get_all()
    assert emulator.calls["GET /locations"] == 1
    assert emulator.requests[0].status is None and emulator.requests[0].fault == "disconnect"


def test_lost_create_response_then_hcloud_retry_hits_uniqueness_error(
        emulator: HetznerEmulator) -> None:
    # The create is applied but the client times out; hcloud retries the POST itself.
    client = hcloud.Client(token=TOKEN, api_endpoint=emulator.url, timeout=0.3)
    emulator.faults.add_hang(process=True, count=1, endpoint="POST /servers")
    error = api_error(lambda: create(client, "ws-lost"))
    assert error.code == "uniqueness_error"
    assert emulator.calls["POST /servers"] == 2
    assert [s["name"] for s in emulator.servers.values()] == ["ws-lost"]


def test_hold_create_response(client: hcloud.Client, emulator: HetznerEmulator) -> None:
    emulator.faults.hold_create_response(30)
    outcome: dict[str, Any] = {}

    def create_in_background() -> None:
        outcome["server"] = create(client, "ws-held")

    worker = threading.Thread(target=create_in_background)
    worker.start()
    try:
        assert wait_until(lambda: len(emulator.servers) == 1)
        time.sleep(0.2)
        assert worker.is_alive() and "server" not in outcome  # created, answer held
        (server_id,) = emulator.servers
        assert client.servers.get_by_id(server_id).name == "ws-held"  # others still served
    finally:
        emulator.faults.clear()  # releases the held answer
        worker.join(5)
    assert outcome["server"].id == server_id
    assert emulator.calls["POST /servers"] == 1


# -- counters, hooks, catalogue --------------------------------------------------------

def test_call_counters_match_a_known_sequence(client: hcloud.Client,
                                              emulator: HetznerEmulator) -> None:
    server = create(client, "ws-count")
    fetch(client, server)
    client.servers.get_by_name("ws-count")
    client.servers.update(server, labels={"x": "y"})
    client.servers.get_actions(server)
    action = client.servers.delete(server)  # gone at once: its actions stay readable
    client.servers.actions.get_by_id(action.id)
    client.actions.get_by_id(action.id)
    client.server_types.get_by_name("cx23")

    expected = Counter({"POST /servers": 1, "GET /servers/{id}": 1, "GET /servers": 1,
                        "PUT /servers/{id}": 1, "DELETE /servers/{id}": 1,
                        "GET /servers/{id}/actions": 1, "GET /servers/actions/{id}": 1,
                        "GET /actions/{id}": 1, "GET /server_types": 1})
    assert emulator.calls == expected
    assert [r.endpoint for r in emulator.requests][:3] == [
        "POST /servers", "GET /servers/{id}", "GET /servers"]
    emulator.reset_calls()
    assert emulator.calls == Counter() and emulator.requests == []


def test_created_hook_gets_user_data_and_failing_hook_is_not_fatal(
        client: hcloud.Client, emulator: HetznerEmulator,
        caplog: pytest.LogCaptureFixture) -> None:
    seen: list[dict[str, Any]] = []

    def broken(server: dict[str, Any]) -> None:
        raise RuntimeError("simulated VM failed to start")

    emulator.on_server_created(broken)
    emulator.on_server_created(seen.append)
    with caplog.at_level(logging.ERROR):
        server = create(client, "ws-hooked", user_data="#cloud-config\n")
        assert emulator.wait_for_hooks()
    assert [(s["id"], s["user_data"], s["status"]) for s in seen] == [
        (server.id, "#cloud-config\n", "initializing")]
    assert seen[0]["public_net"]["ipv4"]["ip"] == ipv4(server)
    assert "simulated VM failed to start" in caplog.text
    assert fetch(client, server).name == "ws-hooked"  # still serving


def test_status_hook_sees_boot(client: hcloud.Client, emulator: HetznerEmulator) -> None:
    statuses: list[str] = []
    emulator.on_server_status_changed(lambda s: statuses.append(s["status"]))
    create(client, "ws-status")
    assert wait_until(lambda: statuses == ["running"])


def test_server_types_have_prices_per_location(client: hcloud.Client) -> None:
    cx23 = client.server_types.get_by_name("cx23")
    assert cx23 is not None and cx23.prices is not None and cx23.locations is not None
    assert (cx23.cores, cx23.memory, cx23.disk, cx23.architecture) == (2, 4.0, 40, "x86")
    assert {p["location"] for p in cx23.prices} == {
        loc.location.name for loc in cx23.locations}
    for price in cx23.prices:
        for period in ("price_hourly", "price_monthly"):
            net = Decimal(price[period]["net"])
            gross = Decimal(price[period]["gross"])
            assert net > 0 and gross == (net * Decimal("1.19")).quantize(gross)
    cpx22 = client.server_types.get_by_name("cpx22")
    assert cpx22 is not None and cpx22.prices is not None
    assert {"ash", "hil", "sin"} <= {p["location"] for p in cpx22.prices}
    names = {t.name for t in client.server_types.get_all()}
    assert {"cx23", "cx33", "cx43", "cx53", "cpx12", "cpx22", "cpx32", "cax11"} <= names


def test_catalogue_locations_images_ssh_keys(client: hcloud.Client) -> None:
    assert {loc.name for loc in client.locations.get_all()} == {
        "fsn1", "nbg1", "hel1", "ash", "hil", "sin"}
    images = client.images.get_all(name="ubuntu-24.04")
    assert {i.architecture for i in images} == {"x86", "arm"}
    for name in ("ubuntu-22.04", "debian-12"):
        image = client.images.get_by_name_and_architecture(name, "x86")
        assert image is not None and image.name == name

    key = client.ssh_keys.create(name="laptop", public_key=PUBLIC_KEY, labels={"o": "me"})
    assert key.fingerprint is not None and key.fingerprint.count(":") == 15
    found = client.ssh_keys.get_by_name("laptop")
    assert found is not None and found.id == key.id
    duplicate = api_error(lambda: client.ssh_keys.create(name="other", public_key=PUBLIC_KEY))
    assert duplicate.code == "uniqueness_error"
    assert api_error(lambda: client.ssh_keys.create(name="junk", public_key="nope")).code == (
        "invalid_input")
    client.ssh_keys.delete(key)
    assert client.ssh_keys.get_all() == []


@pytest.mark.timeout(30)
def test_standalone_main_serves_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentspaces.sandbox.hetzner", "--port", "0",
         "--token", TOKEN], stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split(" at ", 1)[1].split()[0]
        client = hcloud.Client(token=TOKEN, api_endpoint=url)
        assert len(client.locations.get_all()) == 6
    finally:
        proc.terminate()
        proc.wait(10)
