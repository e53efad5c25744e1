"""The Cloudflare DNS emulator, driven through real HTTP with httpx."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from agentspaces.lifeline import die_with_parent
from agentspaces.sandbox.cloudflare import CloudflareEmulator, endpoint_key, running
from tests.support.clock import FakeClock

TOKEN = "emulator-test-token"
SCOPED = "scoped-token"  # may only use other.org
HOST = "ws-demo-ns-abc123.example.com"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def emulator(clock: FakeClock) -> Iterator[CloudflareEmulator]:
    with running(zones=("example.com", "other.org"), tokens={TOKEN: None, SCOPED: {"other.org"}},
                 clock=clock) as emu:
        yield emu


@pytest.fixture
def api(emulator: CloudflareEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, timeout=5,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


@pytest.fixture
def zone(emulator: CloudflareEmulator) -> str:
    return emulator.zone_id("example.com")


def _create(api: httpx.Client, zone: str, **record: object) -> httpx.Response:
    body = {"type": "A", "name": HOST, "content": "192.0.2.10", "ttl": 60, "proxied": False}
    return api.post(f"/zones/{zone}/dns_records", json={**body, **record})


def _codes(response: httpx.Response) -> list[int]:
    return [e["code"] for e in response.json()["errors"]]


def test_zone_lookup_by_name_uses_the_envelope(api: httpx.Client, zone: str) -> None:
    found = api.get("/zones", params={"name": "example.com"})
    assert found.status_code == 200
    body = found.json()
    assert body["success"] is True and body["errors"] == [] and body["messages"] == []
    assert [z["id"] for z in body["result"]] == [zone]
    assert body["result_info"] == {"page": 1, "per_page": 20, "count": 1, "total_count": 1,
                                   "total_pages": 1}
    missing = api.get("/zones", params={"name": "nope.net"}).json()
    assert missing["result"] == [] and missing["result_info"]["total_count"] == 0
    one = api.get(f"/zones/{zone}").json()["result"]
    assert one["name"] == "example.com" and one["status"] == "active"
    bad = api.get("/zones/0123456789abcdef0123456789abcdef/dns_records")
    assert bad.status_code == 400 and _codes(bad) == [7003]
    assert bad.json()["success"] is False and bad.json()["result"] is None


def test_authentication_errors(emulator: CloudflareEmulator, zone: str) -> None:
    url = f"{emulator.url}/zones/{zone}/dns_records"
    missing = httpx.get(url)
    assert missing.status_code == 400 and _codes(missing) == [9106]
    malformed = httpx.get(url, headers={"Authorization": "Token abc"})
    assert malformed.status_code == 400 and _codes(malformed) == [6003]
    assert malformed.json()["errors"][0]["error_chain"][0]["code"] == 6111
    wrong = httpx.get(url, headers={"Authorization": "Bearer not-a-token"})
    assert wrong.status_code == 403 and _codes(wrong) == [9109]
    scoped = {"Authorization": f"Bearer {SCOPED}"}
    assert httpx.get(url, headers=scoped).status_code == 403
    assert _codes(httpx.get(url, headers=scoped)) == [10000]
    zones = httpx.get(f"{emulator.url}/zones", headers=scoped).json()["result"]
    assert [z["name"] for z in zones] == ["other.org"]


def test_create_returns_the_record(api: httpx.Client, zone: str) -> None:
    created = _create(api, zone, comment="agentspaces:uid-1")
    assert created.status_code == 200
    record = created.json()["result"]
    assert re.fullmatch(r"[0-9a-f]{32}", record["id"])
    assert (record["name"], record["type"], record["content"], record["ttl"]) == (
        HOST, "A", "192.0.2.10", 60)
    assert record["comment"] == "agentspaces:uid-1" and record["zone_id"] == zone
    assert record["proxiable"] is False  # documentation range: not a public address
    assert record["tags"] == [] and record["proxied"] is False
    fetched = api.get(f"/zones/{zone}/dns_records/{record['id']}").json()["result"]
    assert fetched == record


def test_relative_names_and_proxied_ttl(api: httpx.Client, zone: str) -> None:
    relative = _create(api, zone, name="www").json()["result"]
    assert relative["name"] == "www.example.com"
    apex = _create(api, zone, name="@", content="192.0.2.1").json()["result"]
    assert apex["name"] == "example.com"
    proxied = _create(api, zone, name="p", content="93.184.216.34", ttl=300,
                      proxied=True).json()["result"]
    assert proxied["proxied"] is True and proxied["proxiable"] is True and proxied["ttl"] == 1
    loopback = _create(api, zone, name="lo", content="127.0.0.5", proxied=True)
    assert loopback.status_code == 400 and _codes(loopback) == [9041]


def test_duplicates_and_cname_clashes(api: httpx.Client, zone: str) -> None:
    assert _create(api, zone).status_code == 200
    identical = _create(api, zone)
    assert identical.status_code == 400 and _codes(identical) == [81058]
    assert identical.json()["errors"][0]["message"] == "An identical record already exists."
    # Same name, other address: allowed, like the real API (round robin).
    assert _create(api, zone, content="192.0.2.11").status_code == 200
    cname = _create(api, zone, type="CNAME", content="elsewhere.example.net")
    assert cname.status_code == 400 and _codes(cname) == [81053]
    assert _create(api, zone, name=f"c.{HOST}", type="CNAME",
                   content="elsewhere.example.net").status_code == 200
    a_on_cname = _create(api, zone, name=f"c.{HOST}")
    assert a_on_cname.status_code == 400 and _codes(a_on_cname) == [81054]
    # A TXT record may share a name with A records.
    assert _create(api, zone, type="TXT", content='"hello"').status_code == 200


@pytest.mark.parametrize(("record", "code"), [
    ({"content": "300.1.1.1"}, 9005),
    ({"type": "AAAA", "content": "192.0.2.1"}, 9006),
    ({"name": "bad..name"}, 9000),
    ({"name": "under*score"}, 9000),
    ({"ttl": 30}, 9021),
    ({"comment": "x" * 101}, 1004),
    ({"comment": "two\nlines"}, 1004),
    ({"type": "MX"}, 1004),
])
def test_invalid_input_is_rejected(api: httpx.Client, zone: str, record: dict[str, object],
                                   code: int) -> None:
    response = _create(api, zone, **record)
    assert response.status_code == 400
    assert _codes(response) == [code]
    assert api.get(f"/zones/{zone}/dns_records").json()["result"] == []


def test_comment_of_exactly_100_characters_is_accepted(api: httpx.Client, zone: str) -> None:
    assert _create(api, zone, comment="c" * 100).status_code == 200


def test_bad_body_and_unknown_record(api: httpx.Client, zone: str) -> None:
    bad = api.post(f"/zones/{zone}/dns_records", content=b"{not json",
                   headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and _codes(bad) == [9207]
    missing = f"/zones/{zone}/dns_records/ffffffffffffffffffffffffffffffff"
    for response in (api.get(missing), api.patch(missing, json={"content": "192.0.2.2"}),
                     api.delete(missing)):
        assert response.status_code == 404
        assert response.json()["errors"] == [{"code": 81044, "message": "Record does not exist."}]


def test_patch_put_delete(api: httpx.Client, zone: str) -> None:
    record = _create(api, zone, comment="mine").json()["result"]
    path = f"/zones/{zone}/dns_records/{record['id']}"
    patched = api.patch(path, json={"content": "192.0.2.99"}).json()["result"]
    assert patched["content"] == "192.0.2.99" and patched["comment"] == "mine"
    assert patched["id"] == record["id"] and patched["ttl"] == 60
    put = api.put(path, json={"type": "A", "name": HOST, "content": "192.0.2.98"})
    assert put.status_code == 200
    assert put.json()["result"]["comment"] is None and put.json()["result"]["ttl"] == 1
    other = _create(api, zone, content="192.0.2.1").json()["result"]
    clash = api.patch(f"/zones/{zone}/dns_records/{other['id']}", json={"content": "192.0.2.98"})
    assert clash.status_code == 400 and _codes(clash) == [81058]
    deleted = api.delete(path)
    assert deleted.status_code == 200 and deleted.json()["result"] == {"id": record["id"]}
    assert api.get(path).status_code == 404


def test_list_filters(api: httpx.Client, zone: str) -> None:
    _create(api, zone, comment="agentspaces:u1 ns/a")
    _create(api, zone, name=f"*.{HOST}", comment="agentspaces:u1 ns/a")
    _create(api, zone, type="AAAA", content="2001:db8::1", comment="Agentspaces:U2")
    _create(api, zone, name=f"x{HOST}", content="192.0.2.7")
    listing = f"/zones/{zone}/dns_records"

    def names(**params: str) -> list[tuple[str, str]]:
        result = api.get(listing, params=params).json()["result"]
        return sorted((r["name"], r["type"]) for r in result)

    assert names(name=HOST) == [(HOST, "A"), (HOST, "AAAA")]
    assert names(**{"name.exact": HOST.upper()}) == [(HOST, "A"), (HOST, "AAAA")]
    assert names(**{"name.exact": f"*.{HOST}"}) == [(f"*.{HOST}", "A")]
    assert names(name=HOST, type="AAAA") == [(HOST, "AAAA")]
    assert names(**{"comment.startswith": "agentspaces:u1"}) == [(f"*.{HOST}", "A"), (HOST, "A")]
    assert names(**{"comment.exact": "agentspaces:u2"}) == [(HOST, "AAAA")]  # case-insensitive
    assert names(**{"comment.contains": "ns/a"}) == [(f"*.{HOST}", "A"), (HOST, "A")]
    assert names(**{"comment.absent": ""}) == [(f"x{HOST}", "A")]
    assert len(names(**{"comment.present": ""})) == 3
    assert names(content="192.0.2.7") == [(f"x{HOST}", "A")]
    assert names(**{"name.endswith": f".{HOST}"}) == [(f"*.{HOST}", "A")]
    assert names(content="192.0.2.7", type="AAAA", match="any") == [
        (HOST, "AAAA"), (f"x{HOST}", "A")]
    assert names(content="192.0.2.7", type="AAAA") == []


def test_pagination(api: httpx.Client, zone: str) -> None:
    for i in range(7):
        _create(api, zone, content=f"192.0.2.{i + 1}")
    listing = f"/zones/{zone}/dns_records"
    pages = [api.get(listing, params={"per_page": 3, "page": p}).json() for p in (1, 2, 3, 4)]
    assert [len(p["result"]) for p in pages] == [3, 3, 1, 0]
    assert pages[0]["result_info"] == {"page": 1, "per_page": 3, "count": 3, "total_count": 7,
                                       "total_pages": 3}
    contents = [r["content"] for p in pages for r in p["result"]]
    assert sorted(contents) == sorted(f"192.0.2.{i + 1}" for i in range(7))
    default = api.get(listing).json()["result_info"]
    assert default["per_page"] == 100 and default["total_pages"] == 1
    too_big = api.get(listing, params={"per_page": 5_000_001})
    assert too_big.status_code == 400 and _codes(too_big) == [1004]


def test_rate_limit_per_token(clock: FakeClock) -> None:
    with running(tokens={TOKEN: None, "other": None}, rate_limit=3, rate_period=300,
                 clock=clock) as emu:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        first = httpx.get(f"{emu.url}/zones", headers=auth)
        assert first.headers["Ratelimit"] == '"default";r=2;t=300'
        assert first.headers["Ratelimit-Policy"] == '"default";q=3;w=300'
        clock.now += 100
        assert [httpx.get(f"{emu.url}/zones", headers=auth).status_code
                for _ in range(3)] == [200, 200, 429]
        limited = httpx.get(f"{emu.url}/zones", headers=auth)
        assert limited.status_code == 429 and _codes(limited) == [971]
        assert limited.headers["Retry-After"] == "200"
        other = httpx.get(f"{emu.url}/zones", headers={"Authorization": "Bearer other"})
        assert other.status_code == 200
        clock.now += 200
        assert httpx.get(f"{emu.url}/zones", headers=auth).status_code == 200


def test_faults(api: httpx.Client, emulator: CloudflareEmulator, zone: str,
                clock: FakeClock) -> None:
    emulator.inject(503, times=2, endpoint="POST /zones/{id}/dns_records")
    assert api.get("/zones").status_code == 200  # other endpoints unaffected
    assert [_create(api, zone).status_code for _ in range(3)] == [503, 503, 200]

    emulator.inject(429, times=None, duration=30, retry_after=7)
    limited = api.get("/zones")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    clock.now += 31
    assert api.get("/zones").status_code == 200

    emulator.inject(502, times=1)
    edge = api.get("/zones")
    assert edge.status_code == 502 and edge.headers["content-type"] == "text/html"

    emulator.inject(None, times=1, delay=0.3)
    started = time.monotonic()
    assert api.get("/zones").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_lost_reply_still_applies_the_change(api: httpx.Client, emulator: CloudflareEmulator,
                                             zone: str) -> None:
    emulator.inject(502, times=1, endpoint="POST", after_apply=True)
    assert _create(api, zone).status_code == 502
    assert [r["content"] for r in emulator.records("example.com")] == ["192.0.2.10"]


def test_counters_and_direct_state(api: httpx.Client, emulator: CloudflareEmulator,
                                   zone: str) -> None:
    seeded = emulator.seed_record("example.com", "A", HOST, "198.51.100.1", comment="theirs")
    assert emulator.total_calls == 0  # seeding is not an API call
    record = _create(api, zone).json()["result"]
    api.get(f"/zones/{zone}/dns_records", params={"name": HOST})
    api.patch(f"/zones/{zone}/dns_records/{record['id']}", json={"content": "192.0.2.2"})
    api.delete(f"/zones/{zone}/dns_records/{record['id']}")
    api.get("/zones")
    assert emulator.calls == {
        "POST /zones/{id}/dns_records": 1, "GET /zones/{id}/dns_records": 1,
        "PATCH /zones/{id}/dns_records/{id}": 1, "DELETE /zones/{id}/dns_records/{id}": 1,
        "GET /zones": 1}
    assert emulator.writes == 3
    assert [status for _, _, status in emulator.log] == [200] * 5
    assert [r["id"] for r in emulator.records()] == [seeded["id"]]
    emulator.reset_counts()
    assert emulator.total_calls == 0 and emulator.writes == 0 and emulator.log == []


def test_endpoint_keys() -> None:
    assert endpoint_key("GET", "/zones") == "GET /zones"
    assert endpoint_key("DELETE", "/zones/abc/dns_records/def") == \
        "DELETE /zones/{id}/dns_records/{id}"


@pytest.mark.timeout(30)
def test_standalone_main_serves_until_stopped() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentspaces.sandbox.cloudflare", "--zone", "example.com",
         "--token", "cli-token"], stdout=subprocess.PIPE, text=True,
        preexec_fn=die_with_parent)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/client/v4)", line)
        assert match, line
        zones = httpx.get(f"{match.group(1)}/zones", params={"name": "example.com"},
                          headers={"Authorization": "Bearer cli-token"}, timeout=5)
        assert zones.json()["result"][0]["name"] == "example.com"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
