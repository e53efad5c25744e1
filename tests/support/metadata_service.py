"""A stand-in for Hetzner's metadata service (169.254.169.254), for QEMU guests.

QemuVms(metadata=(LOOPBACK, service.port)) forwards each guest connection to
169.254.169.254:80 here (sandbox/vmqemu.py). It answers the paths cloud-init's Hetzner
datasource reads, `/hetzner/v1/metadata` and `/hetzner/v1/userdata`, the latter with a
canary string: on a real VM that address hands the user-data (the agent's TLS key
among it) to anyone on the VM who asks, which is why the VM's firewall blocks it after
boot. Every request is recorded with the time it arrived, so a test can tell whether
anything on the VM got through, and when.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.support.tls_servers import LoopbackServer

METADATA_URL = "http://169.254.169.254"


@dataclass(frozen=True)
class MetadataRequest:
    method: str
    path: str
    at: float = field(default_factory=time.time)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        service: MetadataService = self.server.owner  # type: ignore[attr-defined]
        service.record(MetadataRequest(self.command, self.path))
        path = self.path.split("?", 1)[0]
        if path == "/hetzner/v1/userdata":
            status, body = 200, service.canary.encode()
        elif path == "/hetzner/v1/metadata":
            status, body = 200, b"instance-id: 0\nhostname: standin\n"
        else:
            status, body = 404, b"not found\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class MetadataService(LoopbackServer):
    """Plain HTTP on 127.0.0.1; `canary` is what `/hetzner/v1/userdata` returns."""

    def __init__(self, canary: str) -> None:
        super().__init__(_Handler)
        self.canary = canary
        self.requests: list[MetadataRequest] = []
        self._lock = threading.Lock()

    def record(self, request: MetadataRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def requests_since(self, when: float) -> list[MetadataRequest]:
        with self._lock:
            return [r for r in self.requests if r.at >= when]
