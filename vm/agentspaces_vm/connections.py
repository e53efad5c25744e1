"""Connection limits for the agent's listeners: slots per address and total deadlines.

Anyone who can reach the API port can open connections. A plain socket timeout is per
read, so a client that trickles one byte just inside it keeps a thread forever; a few
dozen such clients lock the operator out. So every connection gets

- a slot: a global cap and a per-address cap, checked in the accept loop, so a
  connection over a cap is closed at once and never gets a thread;
- total deadlines, enforced in the connection's thread: the TLS handshake, request
  line and headers together; the wait for the next request on a kept-alive connection;
  a body, in proportion to its length; each write of the answer.
"""

from __future__ import annotations

import io
import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 64
    per_address: int = 8
    header_seconds: float = 10.0      # handshake + request line + headers, in total
    idle_seconds: float = 10.0        # keep-alive wait (longer than httpx's 5 s expiry)
    body_floor_seconds: float = 10.0
    body_bytes_per_second: int = 64 << 10  # the slowest upload still accepted
    write_seconds: float = 30.0       # each write of an answer

    def body_seconds(self, length: int) -> float:
        return self.body_floor_seconds + length / self.body_bytes_per_second


API_LIMITS = ConnectionLimits()
# Loopback only, and Caddy's and Claude Code's calls all come from one address there.
LOCAL_LIMITS = ConnectionLimits(per_address=64, header_seconds=30.0, idle_seconds=30.0)


def address_key(host: str) -> str:
    """The unit a per-address cap counts: the address, or its /64 for IPv6 (one host
    usually has a whole /64 to pick source addresses from)."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class ConnectionSlots:
    """Counts open connections, in total and per address key; refuses over the caps."""

    def __init__(self, total: int, per_address: int) -> None:
        self._total, self._per_address = total, per_address
        self._open: dict[str, int] = {}
        self._count = 0
        self._lock = threading.Lock()

    def acquire(self, key: str) -> bool:
        with self._lock:
            held = self._open.get(key, 0)
            if self._count >= self._total or held >= self._per_address:
                return False
            self._open[key] = held + 1
            self._count += 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            held = self._open.get(key, 0)
            if held <= 0:
                return
            self._count -= 1
            if held == 1:
                del self._open[key]
            else:
                self._open[key] = held - 1

    def held(self, key: str) -> int:
        with self._lock:
            return self._open.get(key, 0)


class DeadlineReader(io.RawIOBase):
    """Reads a socket so that all reads until a deadline share one budget.

    Each read waits at most what is left (the socket timeout shrinks with it), so
    trickled bytes cannot stretch a phase. `expect_next` starts a keep-alive wait: it
    ends at the idle deadline unless a byte arrives, which starts a fresh header budget.
    """

    def __init__(self, sock: socket.socket, deadline: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._sock, self._clock = sock, clock
        self._deadline = deadline
        self._then: float | None = None

    def expect(self, seconds: float) -> None:
        self._deadline, self._then = self._clock() + seconds, None

    def expect_next(self, idle_seconds: float, header_seconds: float) -> None:
        self._deadline, self._then = self._clock() + idle_seconds, header_seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        left = self._deadline - self._clock()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(left)
        count = self._sock.recv_into(buffer)
        if count and self._then is not None:
            self.expect(self._then)
        return count


class DeadlineWriter(io.BufferedIOBase):
    """Unbuffered writes to a socket, each bounded by `seconds` in total."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        super().__init__()
        self._sock, self._seconds = sock, seconds

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._sock.settimeout(self._seconds)
        self._sock.sendall(data)
        return len(data)
