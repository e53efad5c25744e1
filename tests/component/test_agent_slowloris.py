"""Slow clients against the real agent process: they cannot hold its HTTPS API.

The agent runs with shortened limits (agent.json `apiLimits`) so the deadlines pass in
seconds; the attacks and the operator come from different 127.0.0.N source addresses.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentspaces.agent_client import pinned_context
from tests.component.agent_harness import AgentProcess, running_agent
from tests.component.slow_clients import (
    SlowClient,
    all_closed,
    connect_from,
    peer_closed,
    poke_all,
    raw_request,
)
from tests.component.test_agent_process import authed
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

PER_ADDRESS = 3
HEADER_SECONDS = 3.0
IDLE_SECONDS = 1.0
BODY_FLOOR_SECONDS = 1.0
BODY_BYTES_PER_SECOND = 1024
LIMITS = {"perAddress": PER_ADDRESS, "headerSeconds": HEADER_SECONDS,
          "idleSeconds": IDLE_SECONDS, "bodyFloorSeconds": BODY_FLOOR_SECONDS,
          "bodyBytesPerSecond": BODY_BYTES_PER_SECOND}
TRICKLE = 0.3  # seconds between bytes: far inside any per-read timeout


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    with running_agent(tmp_path, apiLimits=LIMITS) as proc:
        yield proc


def port(agent: AgentProcess) -> int:
    return agent.ports["api"]


def status_from(agent: AgentProcess, source: str) -> tuple[int, float]:
    started = time.monotonic()
    with authed(agent, source=source) as c:
        code = c.get("/v1/status").status_code
    return code, time.monotonic() - started


def assert_closed_by_deadline(clients: list[SlowClient], deadline: float) -> None:
    wait_for(lambda: all_closed(clients), deadline + 3, "the header deadline",
             interval=TRICKLE)
    for client in clients:
        assert deadline - 0.5 <= client.lifetime <= deadline + 2.0, client.lifetime
        assert client.sent >= 5  # it kept trickling until the end


def test_stalled_handshakes_over_the_per_address_cap_are_closed_at_once(
        agent: AgentProcess) -> None:
    attacker, operator = "127.0.0.31", "127.0.0.32"
    clients = [SlowClient.handshake(attacker, agent.addr, port(agent))
               for _ in range(PER_ADDRESS + 2)]
    held, extra = clients[:PER_ADDRESS], clients[PER_ADDRESS:]
    try:
        wait_for(lambda: all_closed(extra), 1.5, "the connections over the cap to close",
                 interval=0.05)
        assert all(client.lifetime < 1.5 for client in extra)
        # While the attack holds its slots, the operator at another address gets in.
        code, seconds = status_from(agent, operator)
        assert code == 200 and seconds < 2.0
        assert poke_all(held) == held
        # Trickling a byte of the ClientHello every 0.3 s does not stretch the handshake.
        assert_closed_by_deadline(held, HEADER_SECONDS)
        # The slots are free again, for the attacker's address too.
        assert status_from(agent, attacker)[0] == 200
    finally:
        for client in clients:
            client.close()


def test_trickled_request_headers_are_cut_by_one_total_deadline(agent: AgentProcess) -> None:
    attacker, operator = "127.0.0.33", "127.0.0.34"
    context = pinned_context(agent.creds.cert_pem)
    head = b"GET /v1/status HTTP/1.1\r\nHost: agent\r\nX-Slow: " + b"a" * 200
    clients = [SlowClient.headers(attacker, agent.addr, port(agent), context, head)
               for _ in range(PER_ADDRESS)]
    try:
        assert poke_all(clients) == clients
        over = SlowClient.handshake(attacker, agent.addr, port(agent))
        wait_for(lambda: all_closed([over]), 1.5, "the connection over the cap to close",
                 interval=0.05)
        over.close()
        assert status_from(agent, operator)[0] == 200
        assert_closed_by_deadline(clients, HEADER_SECONDS)
    finally:
        for client in clients:
            client.close()


def test_idle_keep_alive_connections_count_and_get_a_short_timeout(
        agent: AgentProcess) -> None:
    source = "127.0.0.35"
    context = pinned_context(agent.creds.cert_pem)
    conns = [http.client.HTTPSConnection(agent.addr, port(agent), context=context,
                                         timeout=5, source_address=(source, 0))
             for _ in range(PER_ADDRESS)]
    try:
        for conn in conns:
            conn.request("GET", "/v1/status",
                         headers={"Authorization": f"Bearer {agent.creds.token}"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200 and not response.will_close
        idle_since = time.monotonic()
        # Kept-alive connections hold their address's slots ...
        over = connect_from(source, agent.addr, port(agent))
        wait_for(lambda: peer_closed(over), 1.5, "the connection over the cap to close",
                 interval=0.05)
        over.close()
        # ... until the idle timeout, well before the header deadline.
        sockets = [conn.sock for conn in conns]
        wait_for(lambda: all(peer_closed(sock) for sock in sockets), IDLE_SECONDS + 2,
                 "idle connections to close", interval=0.1)
        assert time.monotonic() - idle_since < HEADER_SECONDS
        assert status_from(agent, source)[0] == 200
    finally:
        for conn in conns:
            conn.close()


def test_a_trickled_body_is_cut_by_a_deadline_for_its_size(agent: AgentProcess) -> None:
    context = pinned_context(agent.creds.cert_pem)
    length = 2048
    head = (f"PUT /v1/config HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer "
            f"{agent.creds.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()
    client = SlowClient.headers("127.0.0.36", agent.addr, port(agent), context, b" " * length)
    try:
        client.sock.sendall(head)
        budget = BODY_FLOOR_SECONDS + length / BODY_BYTES_PER_SECOND
        assert_closed_by_deadline([client], budget)
    finally:
        client.close()


def test_a_bad_token_is_refused_before_its_body(agent: AgentProcess) -> None:
    context = pinned_context(agent.creds.cert_pem)
    for auth in ("Authorization: Bearer guess\r\n", ""):
        head = (f"PUT /v1/secrets HTTP/1.1\r\nHost: agent\r\n{auth}"
                f"Content-Length: {4 << 20}\r\n\r\n").encode()
        answer, seconds = raw_request("127.0.0.37", agent.addr, port(agent), context, head)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:40]
        assert seconds < 2.0  # answered and closed without waiting for 4 MiB
