"""Loopback HTTP(S) servers for tests, and the test CA their certificates come from.

The real-VM tier's servers (git, a container registry, a metadata stand-in) listen on
127.0.0.1 only; a QEMU guest reaches them at 10.0.2.2, the host's address on QEMU's user
network, so their certificates name that address (and 127.0.0.1 for the test itself).
The CA's PEM is what a WorkspaceClass puts in `trust.caBundle`.
"""

from __future__ import annotations

import base64
import hmac
import logging
import ssl
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from agentspaces.controlplane import CertificateAuthority

log = logging.getLogger(__name__)

GUEST_HOST = "10.0.2.2"  # the host as a QEMU guest on user networking sees it
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ServerPki:
    """A CA and one server certificate for the test servers, as files."""

    ca: CertificateAuthority
    ca_file: Path
    cert_file: Path
    key_file: Path

    @property
    def ca_pem(self) -> str:
        return self.ca.cert_pem.decode()

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """Trusts the test CA only."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_pki(directory: Path, ips: tuple[str, ...] = (GUEST_HOST, LOOPBACK)) -> ServerPki:
    """A fresh CA and a server certificate for `ips` (and localhost) in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create("agentspaces test CA")
    cert, key = ca.issue("agentspaces test server", server_names=["localhost"],
                         server_ips=list(ips))
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "server.pem",
                                                             "server-key.pem"))
    ca_file.write_bytes(ca.cert_pem)
    cert_file.write_bytes(cert)
    key_file.write_bytes(key)
    key_file.chmod(0o600)
    return ServerPki(ca, ca_file, cert_file, key_file)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: Any = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that fails the TLS handshake or hangs up mid-answer is the client's
        # business; keep it out of the test output.
        log.debug("%s: connection from %s failed", type(self.owner).__name__,
                  client_address, exc_info=True)


def basic_auth_ok(header: str | None, username: str, password: str) -> bool:
    """Whether an Authorization header carries exactly these basic credentials."""
    if not header or not header.startswith("Basic "):
        return False
    try:
        given = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return False
    return hmac.compare_digest(given, f"{username}:{password}")


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (a free port), HTTPS with `pki`. Its handler
    reaches this object as `self.server.owner`. Use it as a context manager: the server
    thread ends on exit."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], *, pki: ServerPki | None = None,
                 port: int = 0) -> None:
        self._httpd = _Server((LOOPBACK, port), handler)
        self._httpd.owner = self
        if pki is not None:
            ctx = pki.server_context()
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self.scheme = "https" if pki is not None else "http"
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """As the test reaches it."""
        return f"{self.scheme}://{LOOPBACK}:{self.port}"

    @property
    def guest_url(self) -> str:
        """As a QEMU guest reaches it."""
        return f"{self.scheme}://{GUEST_HOST}:{self.port}"

    @property
    def guest_address(self) -> str:
        return f"{GUEST_HOST}:{self.port}"

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.2}, daemon=True,
                                        name=f"{type(self).__name__}:{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
