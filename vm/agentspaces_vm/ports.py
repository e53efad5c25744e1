"""Which TCP ports workspace programs listen on, read from /proc/net/tcp{,6}.

The parser is pure; `PortPoller` reads the files. A socket counts when it is in the
LISTEN state and bound to one of the configured addresses (by default the wildcard and
loopback addresses a proxy on the same host can reach). Each port maps to the address
Caddy should dial: the concrete bind address, or 127.0.0.1 for a wildcard bind.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"
_WILDCARDS = {"0.0.0.0", "::", "::ffff:0.0.0.0"}


@dataclass(frozen=True, order=True)
class ListeningSocket:
    port: int
    address: str  # canonical text form, e.g. "127.0.0.1", "::", "::1"


def _decode_address(hex_addr: str, byteorder: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) not in (4, 16):
        raise ValueError(f"bad address length {len(raw)}")
    # The kernel prints each 32-bit word in host byte order.
    words = [raw[i:i + 4] for i in range(0, len(raw), 4)]
    if byteorder == "little":
        words = [w[::-1] for w in words]
    packed = b"".join(words)
    addr = ipaddress.ip_address(packed)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return f"::ffff:{addr.ipv4_mapped}"
    return str(addr)


def parse_proc_net_tcp(text: str, byteorder: str = sys.byteorder) -> list[ListeningSocket]:
    """Listening sockets in the text of /proc/net/tcp or /proc/net/tcp6.

    Malformed lines are skipped: the file is the kernel's, but a parse error must not
    stop discovery of everything else.
    """
    found: set[ListeningSocket] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3].upper() != _LISTEN:
            continue
        local = fields[1]
        addr_hex, _, port_hex = local.partition(":")
        try:
            port = int(port_hex, 16)
            address = _decode_address(addr_hex, byteorder)
        except ValueError:
            continue
        if 0 < port < 65536:
            found.add(ListeningSocket(port, address))
    return sorted(found)


def _canonical(address: str) -> str:
    return str(ipaddress.ip_address(address.strip("[]")))


def routable_ports(sockets: Iterable[ListeningSocket], addresses: Sequence[str],
                   exclude: Iterable[int] = ()) -> dict[int, str]:
    """Port -> dial host for sockets bound to one of `addresses`, minus `exclude`.

    A port bound both on a wildcard and a concrete address dials 127.0.0.1 (a
    wildcard bind answers there); an IPv6-only loopback bind dials ::1.
    """
    allowed = {_canonical(a) for a in addresses}
    if "::" in allowed:
        allowed.add("::ffff:0.0.0.0")
    skip = set(exclude)
    result: dict[int, str] = {}
    for sock in sockets:
        # A v4-mapped bind on a v6 socket is the IPv4 address for every purpose here.
        address = (sock.address.removeprefix("::ffff:") if sock.address != "::ffff:0.0.0.0"
                   else sock.address)
        if sock.port in skip or address not in allowed:
            continue
        dial = "127.0.0.1" if address in _WILDCARDS else address
        current = result.get(sock.port)
        # Prefer IPv4 loopback, then any IPv4 address, then IPv6.
        if current is None or _dial_rank(dial) < _dial_rank(current):
            result[sock.port] = dial
    return dict(sorted(result.items()))


def _dial_rank(dial: str) -> int:
    if dial == "127.0.0.1":
        return 0
    return 1 if ":" not in dial else 2


class PortPoller:
    """Reads the kernel's socket tables and reports the routable ports."""

    def __init__(self, addresses: Sequence[str], exclude: Iterable[int],
                 files: Sequence[Path] = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))) -> None:
        self._addresses = tuple(addresses)
        self._exclude = frozenset(exclude)
        self._files = tuple(files)

    def poll(self) -> dict[int, str]:
        sockets: list[ListeningSocket] = []
        for path in self._files:
            try:
                text = path.read_text(encoding="ascii", errors="replace")
            except OSError:
                continue  # e.g. no IPv6 on this kernel
            sockets.extend(parse_proc_net_tcp(text))
        return routable_ports(sockets, self._addresses, self._exclude)
