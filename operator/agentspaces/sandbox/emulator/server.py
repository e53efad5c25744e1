"""HTTP plumbing of the emulators on the standard library's threading HTTP server: every
method (also unknown ones such as OPTIONS) goes to one request callback, which answers
through `respond(reply)` or returns without answering to drop the connection."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Reply:
    """An answer: a JSON object, a text page (`content_type` says which), or no body."""
    status: int
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def encode(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


Responder = Callable[[Reply], None]
# handle(method, target, lower-cased headers, body, respond)
RequestCallback = Callable[[str, str, dict[str, str], bytes, Responder], None]


class HttpFrontend:
    """`keep_alive` serves many requests per connection (fast); without it every
    connection carries one request, so dropping or hanging one affects only that one."""

    def __init__(self, handle: RequestCallback, *, host: str, port: int, name: str,
                 keep_alive: bool) -> None:
        self._handle, self._host, self._port = handle, host, port
        self._name, self._keep_alive = name, keep_alive
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._httpd is not None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("emulator not started")
        return int(self._httpd.server_address[1])

    @property
    def host(self) -> str:
        return self._host

    def start(self) -> None:
        self._httpd = ThreadingHTTPServer((self._host, self._port), self._handler_class())
        self._httpd.daemon_threads = True
        # A short poll interval keeps stop() quick (shutdown waits for the next poll).
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name=f"{self._name}-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        frontend = self

        class Handler(BaseHTTPRequestHandler):
            server_version = frontend._name
            protocol_version = "HTTP/1.1" if frontend._keep_alive else "HTTP/1.0"
            timeout = 10  # idle keep-alive connections end on their own
            # One buffered write per response: headers and body in separate packets meet
            # delayed ACKs and cost ~40 ms per request on loopback.
            wbufsize = 64 * 1024
            disable_nagle_algorithm = True

            def __getattr__(self, name: str) -> Any:
                # http.server looks up do_<METHOD>; every method is served (and an
                # unsupported one answered in the provider's shape, not a 501 page).
                if name.startswith("do_"):
                    return self._serve
                raise AttributeError(name)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length > 0 else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                answered = False

                def respond(reply: Reply) -> None:
                    nonlocal answered
                    answered = True
                    self._send(reply)

                frontend._handle(self.command, self.path, headers, body, respond)
                if not answered or not frontend._keep_alive:
                    self.close_connection = True

            def _send(self, reply: Reply) -> None:
                data = reply.encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    log.debug("%s: client went away before the answer", frontend._name)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug(f"{frontend._name}: " + format, *args)

        return Handler
