"""Relay one guest connection to a TCP service on the host (run by QEMU, stdlib only).

QEMU's user networking starts `python3 vmqemu_relay.py HOST PORT` for every connection a
guest opens to a `guestfwd` address (vmqemu.py points the metadata address
169.254.169.254:80 at a stand-in this way), with the connection as the program's
stdin/stdout (one end of a socket pair). This copies bytes both ways until both sides
have closed, or until a fixed deadline so a stuck peer never keeps the process.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys
import time

DEADLINE_SECONDS = 300.0
CONNECT_TIMEOUT = 10.0


def pump(guest: socket.socket, upstream: socket.socket, deadline: float) -> None:
    """Copy both ways; a side's EOF is passed on as a half-close of the other."""
    peers = {guest: upstream, upstream: guest}
    open_reads = {guest, upstream}
    with selectors.DefaultSelector() as sel:
        for sock in open_reads:
            sel.register(sock, selectors.EVENT_READ)
        while open_reads:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for key, _ in sel.select(timeout=min(left, 5.0)):
                sock = guest if key.fileobj is guest else upstream
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    try:
                        peers[sock].sendall(data)
                    except OSError:  # the other side is gone: so is the relay
                        return
                    continue
                sel.unregister(sock)
                open_reads.discard(sock)
                with contextlib.suppress(OSError):
                    peers[sock].shutdown(socket.SHUT_WR)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        return 2
    # stderr is the guest's connection too: nothing of ours may end up there.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    deadline = time.monotonic() + DEADLINE_SECONDS
    guest = socket.socket(fileno=0)
    try:
        upstream = socket.create_connection((argv[1], int(argv[2])), timeout=CONNECT_TIMEOUT)
    except OSError:
        guest.close()
        return 1
    upstream.settimeout(None)
    try:
        pump(guest, upstream, deadline)
    finally:
        upstream.close()
        guest.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
