"""Slow ("slowloris") clients for the agent's and the loader's TLS port.

A slow client connects from a chosen loopback source address (all of 127.0.0.0/8 is
loopback on Linux, so each address stands for another host) and sends its bytes one at
a time, whenever the test pokes it; it notes when the server closed the connection.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass


def client_hello() -> bytes:
    """The first flight of a TLS client: what a server waits for in its handshake."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing,
                                                server_hostname="agent.example.test")
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server's answer
        tls.do_handshake()
    return outgoing.read()


def connect_from(source: str, host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect((host, port))
    return sock


def peer_closed(sock: socket.socket) -> bool:
    """True once the server has closed (EOF or reset); never blocks. Only for sockets
    the server sends nothing on but its TLS handshake or session tickets."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except (ConnectionError, ssl.SSLError):
        return True
    finally:
        sock.settimeout(5)


@dataclass
class SlowClient:
    sock: socket.socket
    data: bytes           # what it trickles, one byte per poke
    opened: float
    sent: int = 0
    closed_at: float | None = None

    @classmethod
    def handshake(cls, source: str, host: str, port: int) -> SlowClient:
        """Stalls inside the TLS handshake, trickling its ClientHello."""
        return cls(connect_from(source, host, port), client_hello(), time.monotonic())

    @classmethod
    def headers(cls, source: str, host: str, port: int, context: ssl.SSLContext,
                head: bytes) -> SlowClient:
        """Completes the handshake, then trickles a request head."""
        opened = time.monotonic()
        tls = context.wrap_socket(connect_from(source, host, port),
                                  server_hostname="agent.example.test")
        return cls(tls, head, opened)

    @property
    def lifetime(self) -> float:
        assert self.closed_at is not None
        return self.closed_at - self.opened

    def poke(self) -> None:
        if self.closed_at is not None:
            return
        if peer_closed(self.sock):
            self.closed_at = time.monotonic()
            return
        if self.sent < len(self.data):
            try:
                self.sock.sendall(self.data[self.sent:self.sent + 1])
                self.sent += 1
            except OSError:
                self.closed_at = time.monotonic()

    def close(self) -> None:
        self.sock.close()


def poke_all(clients: Iterable[SlowClient]) -> list[SlowClient]:
    """Poke every client; the ones still open."""
    alive = []
    for client in clients:
        client.poke()
        if client.closed_at is None:
            alive.append(client)
    return alive


def all_closed(clients: list[SlowClient]) -> bool:
    return not poke_all(clients)


def raw_request(source: str, host: str, port: int, context: ssl.SSLContext,
                head: bytes, timeout: float = 5.0) -> tuple[bytes, float]:
    """Send only `head` over TLS and read until the server closes: (answer, seconds)."""
    started = time.monotonic()
    with context.wrap_socket(connect_from(source, host, port),
                             server_hostname="agent.example.test") as tls:
        tls.settimeout(timeout)
        tls.sendall(head)
        answer = b""
        while True:
            try:
                chunk = tls.recv(65536)
            except (ConnectionError, ssl.SSLEOFError):
                break
            if not chunk:
                break
            answer += chunk
    return answer, time.monotonic() - started
