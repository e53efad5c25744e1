"""Where both emulators follow the real APIs closely: deletes, list filters, ids spelled
in other scripts' digits, the price list, unsupported methods, and the rate limit and
faults they share. Through the real clients (hcloud, the operator's CloudflareDns
adapter); raw HTTP only for what a client cannot send or hides."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import hcloud
import httpx
import pytest
import requests
from hcloud.images import Image
from hcloud.server_types import ServerType

from agentspaces.clouds.cloudflare import CloudflareDns
from agentspaces.sandbox.cloudflare import CloudflareEmulator, running
from agentspaces.sandbox.hetzner import HetznerEmulator
from tests.support.clock import FakeClock

TOKEN = "fidelity-token"
ZONE = "example.com"
HOST = "ws-a.example.com"
# 3 in Arabic-Indic, full-width and superscript digits, 30 in Devanagari: Python's int()
# accepts all but the superscript one, the APIs accept none.
FOREIGN_DIGITS = ["\u0663", "\uff13", "\u00b3", "\u0969\u0966"]


@pytest.fixture
def hetzner() -> Iterator[HetznerEmulator]:
    with HetznerEmulator(TOKEN, boot_seconds=0.05, delete_seconds=0.3,
                         action_seconds=0.05) as emu:
        yield emu


@pytest.fixture
def client(hetzner: HetznerEmulator) -> hcloud.Client:
    return hcloud.Client(token=TOKEN, api_endpoint=hetzner.url, poll_interval=0.02)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def cloudflare(clock: FakeClock) -> Iterator[CloudflareEmulator]:
    with running(zones=(ZONE,), tokens={TOKEN: None}, clock=clock) as emu:
        yield emu


@pytest.fixture
def cf_http(cloudflare: CloudflareEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cloudflare.url, timeout=5,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        yield http


@pytest.fixture
def hz_http(hetzner: HetznerEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hetzner.url, timeout=5,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        yield http


def api_error(call: Any) -> hcloud.APIException:
    with pytest.raises(hcloud.APIException) as info:
        call()
    return info.value


def cf_codes(response: httpx.Response) -> list[int]:
    body = response.json()
    assert body["success"] is False and body["result"] is None
    return [e["code"] for e in body["errors"]]


def raw_request(port: int, request_line: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Send a request line as UTF-8 bytes, as no HTTP client library would."""
    head = request_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall((head + "Connection: close\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# -- Hetzner: deletes --------------------------------------------------------------------

def test_deleted_server_is_gone_at_once_and_its_name_free(
        client: hcloud.Client, hetzner: HetznerEmulator) -> None:
    deleted: list[dict[str, Any]] = []
    hetzner.on_server_deleted(deleted.append)
    server = client.servers.create("ws-gone", server_type=ServerType(name="cx23"),
                                   image=Image(name="ubuntu-24.04")).server
    assert server.id is not None

    action = client.servers.delete(server)

    assert action.command == "delete_server" and action.status == "running"
    assert api_error(lambda: client.servers.get_by_id(server.id)).code == "not_found"
    assert client.servers.get_by_name("ws-gone") is None
    assert client.servers.get_all() == []
    assert api_error(lambda: client.servers.delete(server)).code == "not_found"
    again = client.servers.create("ws-gone", server_type=ServerType(name="cx23"),
                                  image=Image(name="ubuntu-24.04")).server
    assert again.id != server.id
    action.wait_until_finished()  # the action still runs its course
    assert client.actions.get_by_id(action.id).status == "success"
    assert hetzner.wait_for_hooks() and [s["id"] for s in deleted] == [server.id]


def test_lingering_delete_is_a_knob(client: hcloud.Client, hetzner: HetznerEmulator) -> None:
    hetzner.linger_deletes = True
    server = client.servers.create("ws-slow", server_type=ServerType(name="cx23"),
                                   image=Image(name="ubuntu-24.04")).server
    assert server.id is not None
    action = client.servers.delete(server)
    assert client.servers.get_by_id(server.id).status == "deleting"
    assert api_error(lambda: client.servers.create(
        "ws-slow", server_type=ServerType(name="cx23"),
        image=Image(name="ubuntu-24.04"))).code == "uniqueness_error"
    action.wait_until_finished()
    assert api_error(lambda: client.servers.get_by_id(server.id)).code == "not_found"


# -- Hetzner: prices ---------------------------------------------------------------------

def test_pricing_has_the_api_shape_and_the_catalog_prices(client: hcloud.Client) -> None:
    pricing = client.request("GET", "/pricing")["pricing"]

    assert set(pricing) >= {"currency", "vat_rate", "floating_ip", "floating_ips", "image",
                            "load_balancer_types", "primary_ips", "server_backup",
                            "server_types", "volume"}
    assert pricing["currency"] == "EUR"
    vat = 1 + Decimal(pricing["vat_rate"]) / 100
    catalog = {t.name: t for t in client.server_types.get_all()}
    assert {t["name"] for t in pricing["server_types"]} == set(catalog)
    for entry in pricing["server_types"]:
        server_type = catalog[entry["name"]]
        assert entry["id"] == server_type.id
        assert entry["prices"] == server_type.prices  # one price list, two endpoints
        assert server_type.locations is not None
        assert {p["location"] for p in entry["prices"]} == {
            loc.location.name for loc in server_type.locations}
        for price in entry["prices"]:
            hourly, monthly = price["price_hourly"], price["price_monthly"]
            for pair in (hourly, monthly, price["price_per_tb_traffic"]):
                net, gross = Decimal(pair["net"]), Decimal(pair["gross"])
                assert net >= 0 and gross == (net * vat).quantize(gross)
            assert 0 < Decimal(hourly["net"]) < Decimal(monthly["net"])
            assert price["included_traffic"] > 0
    for primary in pricing["primary_ips"]:
        assert primary["type"] in ("ipv4", "ipv6")
        assert all({"location", "price_hourly", "price_monthly"} <= set(p)
                   for p in primary["prices"])
    assert Decimal(pricing["server_backup"]["percentage"]) > 0


# -- ids spelled in other scripts' digits ----------------------------------------------

@pytest.mark.parametrize("digits", FOREIGN_DIGITS)
def test_hetzner_foreign_digits_in_ids_are_4xx(client: hcloud.Client,
                                               hz_http: httpx.Client,
                                               hetzner: HetznerEmulator,
                                               digits: str) -> None:
    client.servers.create("ws-3", server_type=ServerType(name="cx23"),
                          image=Image(name="ubuntu-24.04"))
    # hcloud puts the id into the path as given.
    assert api_error(lambda: client.servers.get_by_id(digits)).code == "not_found"  # type: ignore[arg-type]
    assert api_error(lambda: client.actions.get_by_id(digits)).code == "not_found"  # type: ignore[arg-type]
    page = api_error(lambda: client.servers.get_list(page=digits))  # type: ignore[arg-type]
    assert page.code == "invalid_input"
    for path in (f"/servers/{digits}", f"/servers/{digits}/actions",
                 f"/servers/10000001/actions/{digits}", f"/firewalls/{digits}",
                 f"/servers/{digits}/actions/poweroff"):
        for method in ("GET", "POST", "DELETE"):
            response = hz_http.request(method, path)
            assert 400 <= response.status_code < 500, (method, path, response.text)
            assert set(response.json()["error"]) == {"code", "message", "details"}
    status, body = raw_request(hetzner.port, f"GET /v1/servers/{digits} HTTP/1.0",
                               {"Authorization": f"Bearer {TOKEN}"})
    assert status == 404 and b'"not_found"' in body
    assert [s.name for s in client.servers.get_all()] == ["ws-3"]


@pytest.mark.parametrize("digits", FOREIGN_DIGITS)
def test_cloudflare_foreign_digits_in_ids_are_4xx(cloudflare: CloudflareEmulator,
                                                  cf_http: httpx.Client, digits: str) -> None:
    zone = cloudflare.zone_id(ZONE)
    record = cf_http.get(f"/zones/{zone}/dns_records/{digits}")
    assert record.status_code == 404 and cf_codes(record) == [81044]
    unknown_zone = cf_http.get(f"/zones/{digits}/dns_records")
    assert unknown_zone.status_code == 400 and cf_codes(unknown_zone) == [7003]
    for query in ({"page": digits}, {"per_page": digits}):
        paged = cf_http.get(f"/zones/{zone}/dns_records", params=query)
        assert paged.status_code == 400 and cf_codes(paged) == [1004]
    status, body = raw_request(cloudflare.port,
                               f"GET /client/v4/zones/{zone}/dns_records/{digits} HTTP/1.1",
                               {"Host": "localhost", "Authorization": f"Bearer {TOKEN}"})
    assert status == 404 and b"81044" in body


# -- Cloudflare: list filters ------------------------------------------------------------

async def test_adapter_filters_keep_working(cloudflare: CloudflareEmulator) -> None:
    for n in range(3):
        cloudflare.seed_record(ZONE, "A", HOST, f"198.51.100.{n + 1}")
    cloudflare.seed_record(ZONE, "A", "other.example.com", "198.51.100.9")
    async with CloudflareDns(cloudflare.url, TOKEN, per_page=2) as adapter:
        zone = await adapter.zone_id(ZONE)
        records = await adapter.list_records(zone, HOST)
    assert zone == cloudflare.zone_id(ZONE)
    assert sorted(r.content for r in records) == [f"198.51.100.{n + 1}" for n in range(3)]
    assert cloudflare.calls["GET /zones/{id}/dns_records"] == 2  # two pages


@pytest.mark.parametrize("query", [
    {"tag.exact": "team:a"},          # tags: paid plans, not emulated
    {"search": "ws-a"},
    {"name.present": ""},             # present/absent exist for comments only
    {"content.absent": ""},
    {"nmae": HOST},                   # a typo must not list the whole zone
    {"match": "some"},
    {"order": "created_on"},
    {"direction": "up"},
    {"proxied": "maybe"},
])
def test_unsupported_record_filters_are_refused(cloudflare: CloudflareEmulator,
                                                cf_http: httpx.Client,
                                                query: dict[str, str]) -> None:
    cloudflare.seed_record(ZONE, "A", HOST, "198.51.100.1")
    response = cf_http.get(f"/zones/{cloudflare.zone_id(ZONE)}/dns_records", params=query)
    assert response.status_code == 400 and cf_codes(response) == [1004]
    assert next(iter(query)) in response.json()["errors"][0]["error_chain"][0]["message"]


def test_unsupported_zone_filters_are_refused(cf_http: httpx.Client) -> None:
    assert cf_http.get("/zones", params={"name": ZONE}).json()["result_info"]["count"] == 1
    refused = cf_http.get("/zones", params={"account.id": "abc"})
    assert refused.status_code == 400 and cf_codes(refused) == [1004]


# -- unsupported methods -----------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [
    ("OPTIONS", "/servers"), ("PATCH", "/servers"), ("TRACE", "/servers"),
    ("PATCH", "/servers/10000001"), ("POST", "/pricing"), ("PUT", "/ssh_keys/2000001"),
])
def test_hetzner_unsupported_methods_get_a_json_405(hz_http: httpx.Client, method: str,
                                                    path: str) -> None:
    response = hz_http.request(method, path)
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in response.headers["allow"]


@pytest.mark.parametrize(("method", "path"), [
    ("OPTIONS", "/zones"), ("POST", "/zones"), ("DELETE", "/zones/{zone}"),
    ("PATCH", "/zones/{zone}/dns_records"), ("POST", "/zones/{zone}/dns_records/{record}"),
])
def test_cloudflare_unsupported_methods_get_a_json_405(cloudflare: CloudflareEmulator,
                                                       cf_http: httpx.Client, method: str,
                                                       path: str) -> None:
    record = cloudflare.seed_record(ZONE, "A", HOST, "198.51.100.1")
    url = path.format(zone=cloudflare.zone_id(ZONE), record=record["id"])
    response = cf_http.request(method, url)
    assert response.status_code == 405 and cf_codes(response) == [10405]
    assert response.headers["content-type"] == "application/json"
    assert cf_http.get("/zones").status_code == 200  # the kept-alive connection still works


def test_head_gets_the_405_headers_without_a_body(hz_http: httpx.Client,
                                                  cf_http: httpx.Client) -> None:
    for http in (hz_http, cf_http):
        response = http.head("/servers" if http is hz_http else "/zones")
        assert response.status_code == 405 and response.content == b""
    assert cf_http.get("/zones").status_code == 200


# -- the rate limit and faults both emulators share ----------------------------------------

def test_both_rate_limits_answer_429_with_when_to_retry(clock: FakeClock) -> None:
    now = [0.0]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with HetznerEmulator(TOKEN, rate_limit=2, rate_refill_per_second=0.5,
                         rate_clock=lambda: now[0]) as hz, \
            running(zones=(ZONE,), tokens={TOKEN: None}, rate_limit=2, rate_period=60,
                    clock=clock) as cf:
        # Hetzner: RateLimit-* on every answer; RateLimit-Reset says when the budget is
        # whole again (the real API sends no Retry-After).
        answers = [httpx.get(f"{hz.url}/locations", headers=auth) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].json()["error"]["code"] == "rate_limit_exceeded"
        assert answers[2].headers["RateLimit-Remaining"] == "0"
        assert time.time() + 3 <= int(answers[2].headers["RateLimit-Reset"]) <= time.time() + 5
        now[0] += 2.0  # one request back every 2 s
        client = hcloud.Client(token=TOKEN, api_endpoint=hz.url)
        assert len(client.locations.get_all()) == 6

        # Cloudflare: a fixed window per token, Retry-After on the 429.
        answers = [httpx.get(f"{cf.url}/zones", headers=auth) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[1].headers["Ratelimit"] == '"default";r=0;t=60'
        assert cf_codes(answers[2]) == [971] and answers[2].headers["Retry-After"] == "60"
        clock.now += 60
        assert httpx.get(f"{cf.url}/zones", headers=auth).status_code == 200


def test_both_emulators_take_the_same_faults(client: hcloud.Client, hetzner: HetznerEmulator,
                                             cloudflare: CloudflareEmulator,
                                             cf_http: httpx.Client) -> None:
    zone = cloudflare.zone_id(ZONE)
    record = {"type": "A", "name": HOST, "content": "192.0.2.1", "ttl": 60}
    # A reply lost after the write was applied: the connection drops on both.
    hetzner.faults.add_disconnect(process=True, endpoint="POST /ssh_keys")
    cloudflare.faults.add_disconnect(process=True, endpoint="POST /zones/{id}/dns_records")
    with pytest.raises(requests.exceptions.ConnectionError):
        client.ssh_keys.create(name="k", public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA k")
    with pytest.raises(httpx.TransportError):
        cf_http.post(f"/zones/{zone}/dns_records", json=record)
    assert [k.name for k in client.ssh_keys.get_all()] == ["k"]
    assert [r["content"] for r in cloudflare.records(ZONE)] == ["192.0.2.1"]
    # A status fault, in each provider's error shape.
    hetzner.faults.add(503, count=1, method="GET")
    cloudflare.inject(503, times=1, endpoint="GET")
    assert api_error(client.locations.get_all).code == "unavailable"
    outage = cf_http.get("/zones")
    assert outage.status_code == 503 and cf_codes(outage) == [1000]
    assert [(r.endpoint, r.status, r.fault) for r in cloudflare.requests] == [
        ("POST /zones/{id}/dns_records", None, "disconnect"), ("GET /zones", 503, "status")]
    assert hetzner.requests[-1].fault == "status"
    assert cf_http.get("/zones").status_code == 200
    assert len(client.locations.get_all()) == 6
