"""Listening-port discovery from /proc/net/tcp{,6}."""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agentspaces_vm.ports import ListeningSocket, PortPoller, parse_proc_net_tcp, routable_ports

HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
          "   uid  timeout inode\n")
TCP4 = HEADER + (
    "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 1 1\n"
    "   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0 0 2 1\n"
    "   2: 0500007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 3 1\n"
    "   3: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000 0 4 1\n"
    "   4: 6400A8C0:1389 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 5 1\n"
    "   5: garbage line\n"
    "   6: 0100007F:ZZZZ 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 6 1\n"
)
TCP6 = HEADER + (
    "   0: 00000000000000000000000001000000:1435 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000  1000 0 7 1\n"
    "   1: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000  1000 0 8 1\n"
    "   2: 0000000000000000FFFF00000100007F:2328 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000  1000 0 9 1\n"
)
LOOPBACK_AND_WILDCARD = ("0.0.0.0", "::", "127.0.0.1", "::1")


def test_parses_listening_ipv4_sockets_only() -> None:
    assert parse_proc_net_tcp(TCP4, byteorder="little") == [
        ListeningSocket(22, "0.0.0.0"),
        ListeningSocket(3000, "127.0.0.5"),
        ListeningSocket(5001, "192.168.0.100"),
        ListeningSocket(8080, "127.0.0.1"),
    ]


def test_parses_ipv6_including_mapped_addresses() -> None:
    assert parse_proc_net_tcp(TCP6, byteorder="little") == [
        ListeningSocket(5173, "::1"),
        ListeningSocket(8080, "::"),
        ListeningSocket(9000, "::ffff:127.0.0.1"),
    ]


def test_big_endian_hosts_print_words_the_other_way() -> None:
    text = HEADER + ("   0: 7F000001:0050 00000000:0000 0A 00000000:00000000 00:00000000 "
                     "00000000 0 0 1 1\n")
    assert parse_proc_net_tcp(text, byteorder="big") == [ListeningSocket(80, "127.0.0.1")]


def test_routable_ports_filter_by_address_and_exclusions() -> None:
    sockets = parse_proc_net_tcp(TCP4, "little") + parse_proc_net_tcp(TCP6, "little")
    assert routable_ports(sockets, LOOPBACK_AND_WILDCARD, exclude={22}) == {
        5173: "::1",           # IPv6-only loopback: dial ::1
        8080: "127.0.0.1",     # both 127.0.0.1 and [::]: IPv4 loopback wins
        9000: "127.0.0.1",     # v4-mapped loopback on a v6 socket
    }
    # A sandbox "VM" on 127.0.0.5 sees only its own address.
    assert routable_ports(sockets, ["127.0.0.5"]) == {3000: "127.0.0.5"}


def test_a_wildcard_bind_dials_loopback() -> None:
    sockets = [ListeningSocket(4000, "0.0.0.0"), ListeningSocket(4001, "::")]
    assert routable_ports(sockets, ["0.0.0.0", "::"]) == {4000: "127.0.0.1",
                                                          4001: "127.0.0.1"}
    assert routable_ports(sockets, ["127.0.0.1"]) == {}


def _encode(address: str, byteorder: str) -> str:
    packed = ipaddress.ip_address(address).packed
    fmt = "<I" if byteorder == "little" else ">I"
    words = [struct.unpack(">I", packed[i:i + 4])[0] for i in range(0, len(packed), 4)]
    return "".join(struct.pack(fmt, w).hex().upper() for w in words)


@given(st.ip_addresses(), st.integers(1, 65535), st.sampled_from(["little", "big"]))
def test_round_trip(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
                    byteorder: str) -> None:
    line = (f"   0: {_encode(str(address), byteorder)}:{port:04X} 00000000:0000 0A "
            "00000000:00000000 00:00000000 00000000 0 0 1 1\n")
    [sock] = parse_proc_net_tcp(HEADER + line, byteorder)
    assert sock.port == port
    mapped = getattr(address, "ipv4_mapped", None)
    assert sock.address == (f"::ffff:{mapped}" if mapped else str(address))


def test_poller_reads_the_tables_and_skips_missing_ones(tmp_path: Path) -> None:
    line = (f"   0: {_encode('127.0.0.1', sys.byteorder)}:1F90 00000000:0000 0A "
            "00000000:00000000 00:00000000 00000000 0 0 1 1\n")
    (tmp_path / "tcp").write_text(HEADER + line)
    poller = PortPoller(["127.0.0.1"], exclude=(), files=(tmp_path / "tcp",
                                                          tmp_path / "missing"))
    assert poller.poll() == {8080: "127.0.0.1"}


def test_poller_sees_a_real_listening_socket() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        poller = PortPoller(["127.0.0.1"], exclude=())
        assert port not in poller.poll()
        sock.listen()
        assert poller.poll().get(port) == "127.0.0.1"
        assert port not in PortPoller(["127.0.0.1"], exclude={port}).poll()
