"""Loopback addresses for simulated VMs: each sandbox "server" gets its own 127.0.0.N, so
every VM can use the real, fixed ports (agent 9443/9180, Caddy admin 2019, CloudCLI
3001, ...) side by side on one host.

`LoopbackPool` is usable as the Hetzner emulator's `ip_allocator` (a zero-argument
callable returning the address). An address goes back into the pool only through
`release`, which the simulator calls once the VM's processes are gone.
"""

from __future__ import annotations

import ipaddress
import threading

from .hetzner_errors import ApiError

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
RESERVED = ipaddress.IPv4Address("127.0.0.1")  # the host's own services live here


class PoolExhausted(ApiError):
    """No free address: the emulator answers it like Hetzner's own shortage (412)."""

    def __init__(self, first: str, last: str) -> None:
        super().__init__(412, "resource_unavailable",
                         f"no free simulated IPv4 address in {first}-{last}")


class LoopbackPool:
    """Thread-safe allocator of loopback addresses in [first, last], lowest free first."""

    def __init__(self, first: str = "127.0.0.10", last: str = "127.0.0.254") -> None:
        lo, hi = ipaddress.IPv4Address(first), ipaddress.IPv4Address(last)
        if lo > hi:
            raise ValueError(f"empty address range {first}-{last}")
        for addr in (lo, hi):
            if addr not in LOOPBACK or addr in (LOOPBACK.network_address,
                                                LOOPBACK.broadcast_address):
                raise ValueError(f"{addr} is not a usable 127.0.0.0/8 host address")
        if lo <= RESERVED <= hi:
            raise ValueError("the range must not include 127.0.0.1 (the host's own loopback)")
        self.first, self.last = str(lo), str(hi)
        self._lo, self._hi = int(lo), int(hi)
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def __call__(self) -> str:
        return self.allocate()

    def allocate(self) -> str:
        with self._lock:
            for value in range(self._lo, self._hi + 1):
                if value not in self._used:
                    self._used.add(value)
                    return str(ipaddress.IPv4Address(value))
        raise PoolExhausted(self.first, self.last)

    def release(self, address: str) -> bool:
        """Return `address` to the pool; False when it was not handed out by this pool."""
        try:
            value = int(ipaddress.IPv4Address(address))
        except ValueError:
            return False
        with self._lock:
            if value in self._used:
                self._used.remove(value)
                return True
        return False

    def in_use(self) -> frozenset[str]:
        with self._lock:
            return frozenset(str(ipaddress.IPv4Address(v)) for v in self._used)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and address in self.in_use()
