"""For tests of git against remotes: a remote that accepts connections and never
answers (a hanging push), and a directory another uid can enter.

The server runs in this process's threads on an address the test picks and is stopped
by the test (`with`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType


class HangingServer:
    """Accepts connections, reads what arrives and never answers; `closed` counts the
    connections the client side closed (e.g. a killed git)."""

    def __init__(self, host: str) -> None:
        self._sock = socket.create_server((host, 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self.closed = 0

    def url(self, name: str) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}/{name}"

    def _hold(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    if conn.recv(65536) == b"":
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            else:
                return
            self.closed += 1

    def _accept(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = self._sock.accept()
                self.accepted += 1
                thread = threading.Thread(target=self._hold, args=(conn,), daemon=True)
                self._threads.append(thread)
                thread.start()

    def __enter__(self) -> HangingServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        self._threads.append(thread)
        thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._sock.close()


@contextlib.contextmanager
def open_dir() -> Iterator[Path]:
    """A fresh directory under /tmp that any uid can enter (pytest's tmp_path lies
    under a 0700 directory of root's), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="agentspaces-test-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
