"""Connection slots, address keys, total read deadlines and `apiLimits` (fake clock)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from agentspaces_vm.config import ConfigError, parse_config
from agentspaces_vm.connections import (
    API_LIMITS,
    ConnectionLimits,
    ConnectionSlots,
    DeadlineReader,
    address_key,
)
from tests.unit.test_agent_config import VALID, with_change


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    try:
        yield server, client
    finally:
        server.close()
        client.close()


def test_slots_cap_each_address_and_the_total() -> None:
    slots = ConnectionSlots(total=3, per_address=2)
    assert slots.acquire("a") and slots.acquire("a")
    assert not slots.acquire("a")               # per-address cap
    assert slots.acquire("b")
    assert not slots.acquire("c")               # total cap
    slots.release("a")
    assert slots.held("a") == 1
    assert slots.acquire("c")
    slots.release("never-held")                 # harmless
    assert [slots.held(k) for k in ("a", "b", "c")] == [1, 1, 1]


@pytest.mark.parametrize(("host", "key"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),   # same /64, same slots
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("fe80::1%eth0", "fe80::/64"),
])
def test_address_keys(host: str, key: str) -> None:
    assert address_key(host) == key


def test_trickled_bytes_do_not_extend_the_deadline(
        pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    clock = Clock()
    reader = DeadlineReader(server, clock() + 10, clock)
    buffer = bytearray(8)
    for _ in range(9):                          # a byte a second, each read is fine ...
        client.send(b"x")
        clock.now += 1
        assert reader.readinto(memoryview(buffer)) == 1
    clock.now += 1.5                            # ... but the total budget runs out
    client.send(b"x")
    with pytest.raises(TimeoutError):
        reader.readinto(memoryview(buffer))
    assert server.gettimeout() is not None


def test_keep_alive_waits_idle_then_gives_the_head_its_own_budget(
        pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    clock = Clock()
    reader = DeadlineReader(server, clock() + 10, clock)
    buffer = bytearray(8)
    reader.expect_next(idle_seconds=2, header_seconds=10)
    client.send(b"G")
    clock.now += 1.5
    assert reader.readinto(memoryview(buffer)) == 1   # first byte within the idle wait
    clock.now += 5                                     # later than idle, inside the head
    client.send(b"E")
    assert reader.readinto(memoryview(buffer)) == 1
    reader.expect_next(idle_seconds=2, header_seconds=10)
    clock.now += 2.5                                   # nothing came in time
    with pytest.raises(TimeoutError):
        reader.readinto(memoryview(buffer))


def test_body_budget_grows_with_the_length() -> None:
    limits = ConnectionLimits(body_floor_seconds=10, body_bytes_per_second=1000)
    assert limits.body_seconds(0) == 10
    assert limits.body_seconds(5000) == 15


def test_api_limits_default_and_can_be_shortened() -> None:
    assert parse_config(VALID).api_limits == API_LIMITS
    cfg = parse_config(with_change("apiLimits", {"perAddress": 3, "headerSeconds": 1.5}))
    assert cfg.api_limits.per_address == 3 and cfg.api_limits.header_seconds == 1.5
    assert cfg.api_limits.max_connections == API_LIMITS.max_connections


@pytest.mark.parametrize(("key", "value"), [
    ("perAddress", 0), ("headerSeconds", 0), ("idleSeconds", "5"), ("maxConnections", True),
])
def test_bad_api_limits_are_refused(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"apiLimits.{key}"):
        parse_config(with_change("apiLimits", {key: value}))
