"""HTTP front ends of the agent (stdlib ThreadingHTTPServer).

- The API server (HTTPS, `listen.api`) for the operator: bearer token, per-address
  failure limit, JSON in and out.
- The local server (plain HTTP, loopback `listen.local`) for Caddy's on-demand TLS
  permission check and Claude Code's http hooks.

Both survive bad input: every error is a JSON answer, bodies have a size cap, the TLS
handshake happens in the connection's own thread (a slow client cannot stall the accept
loop), connections are capped in total and per address, and each phase of a connection
has a total deadline (agentspaces_vm.connections). Nothing from a request body or header
is ever logged.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import select
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agentspaces_vm.agent import Agent, BadRequest
from agentspaces_vm.caddy import FRONT_KEY_HEADER
from agentspaces_vm.config import Address
from agentspaces_vm.connections import (
    LOCAL_LIMITS,
    ConnectionLimits,
    ConnectionSlots,
    DeadlineReader,
    DeadlineWriter,
    address_key,
)
from agentspaces_vm.status import StatusWatch, requested_etag, requested_wait
from agentspaces_vm.webauth import MAX_LOGIN_BODY, Answer, WebRequest

log = logging.getLogger(__name__)

MAX_API_BODY = 4 << 20     # backup plans carry many presigned part URLs
MAX_HOOK_BODY = 8 << 20    # tool payloads can carry whole files
MAX_DRAIN = 64 << 20       # read and drop oversized bodies up to this, so the 413 arrives
SOCKET_TIMEOUT = 30.0


class _BodyError(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


class _Handler(BaseHTTPRequestHandler):
    server_version = "agentspaces-agent"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT
    agent: Agent  # set on the subclass each server builds
    watch: StatusWatch  # likewise: long-polls of GET /v1/status, shared by both servers
    max_body = MAX_API_BODY

    # -- plumbing -------------------------------------------------------------------

    @property
    def limits(self) -> ConnectionLimits:
        return self._server().limits

    def _server(self) -> AgentHTTPServer:
        assert isinstance(self.server, AgentHTTPServer)
        return self.server

    def setup(self) -> None:
        super().setup()
        # Swap the plain socket files for ones whose reads and writes have total
        # deadlines; the first request's budget started before the TLS handshake.
        self.rfile.close()
        self.wfile.close()
        self._reader = DeadlineReader(self.connection, self._server().head_deadline())
        self.rfile = io.BufferedReader(self._reader)
        self.wfile = DeadlineWriter(self.connection, self.limits.write_seconds)

    def handle(self) -> None:
        # BaseHTTPRequestHandler.handle, with the keep-alive wait on its own deadline.
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            self._reader.expect_next(self.limits.idle_seconds, self.limits.header_seconds)
            self.handle_one_request()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the default prints the raw request line; we log our own line instead

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = urlsplit(self.path).path if hasattr(self, "path") else "-"
        log.info("%s %s %s %s", self.client_address[0], getattr(self, "command", "-"),
                 path[:200], code)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        # Malformed request lines/headers: answer in JSON like everything else, without
        # echoing any of the client's bytes.
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase.lower()
        except ValueError:
            phrase = "error"
        self.error_json(code, phrase)

    def send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(doc).encode() if doc is not None else b""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if status != 204:
            self.wfile.write(body)

    def error_json(self, status: int, error: str, detail: str = "",
                   headers: dict[str, str] | None = None) -> None:
        doc = {"error": error}
        if detail:
            doc["detail"] = detail
        self.send_json(status, doc, headers)

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise _BodyError(411, "length required", "send a Content-Length, not chunks")
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise _BodyError(400, "bad request", "invalid Content-Length") from None
        if length > self.max_body:
            self._drain(length)
            raise _BodyError(413, "request too large", f"limit is {self.max_body} bytes")
        self._reader.expect(self.limits.body_seconds(length))
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise _BodyError(400, "bad request", "body shorter than Content-Length")
        return body

    def _drain(self, length: int) -> None:
        if length > MAX_DRAIN:
            self.close_connection = True
            return
        self._reader.expect(self.limits.body_seconds(length))
        left = length
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)
        self.close_connection = True

    def read_json(self) -> Any:
        body = self.read_body()
        if not body:
            raise _BodyError(400, "bad request", "expected a JSON body")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise _BodyError(400, "bad request", f"invalid JSON: {detail}") from None

    def dispatch(self, routes: dict[tuple[str, str], Callable[[], None]]) -> None:
        path = urlsplit(self.path).path
        handler = routes.get((self.command, path))
        try:
            if handler is None:
                if any(p == path for _, p in routes):
                    self.error_json(405, "method not allowed")
                else:
                    self.error_json(404, "not found")
                return
            handler()
        except _BodyError as exc:
            self.error_json(exc.status, exc.error, exc.detail)
        except BadRequest as exc:
            self.error_json(400, "bad request", str(exc))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.exception("%s %s failed", self.command, path)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.error_json(500, "internal error")


class ApiHandler(_Handler):
    def _guard(self) -> bool:
        status, retry = self.agent.authenticate(self.client_address[0],
                                                self.headers.get("Authorization"))
        if status == 0:
            return True
        # The body is not read: close so its bytes are not taken for a next request.
        self.close_connection = True
        if status == 429:
            self.error_json(429, "too many failed attempts", headers={"Retry-After": str(retry)})
        else:
            self.error_json(401, "unauthorized", headers={"WWW-Authenticate": "Bearer"})
        return False

    def _status(self) -> None:
        """The status document; a long-poll when the request carries `If-None-Match`
        and `Prefer: wait=<seconds>` (docs/agent-protocol.md)."""
        wait = requested_wait(self.headers.get("Prefer"))
        answer = self.watch.answer(requested_etag(self.headers.get("If-None-Match")), wait,
                                   address_key(self.client_address[0]), self._peer_gone)
        headers = {"ETag": f'"{answer.etag}"'}
        if answer.waited:
            headers["Preference-Applied"] = f"wait={wait:g}"
        self.send_json(200, answer.status.to_json(), headers)

    def _peer_gone(self) -> bool:
        """While a long-poll is held the client sends nothing, so a readable socket means
        it hung up (or broke the protocol): either way, stop holding it."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def _route(self) -> None:
        if not self._guard():
            return
        a = self.agent
        self.dispatch({
            ("GET", "/v1/status"): self._status,
            ("PUT", "/v1/secrets"): lambda: self.send_json(200, a.apply_secrets(self.read_json())),
            ("PUT", "/v1/config"): lambda: self.send_json(200,
                                                          a.apply_config(self.read_json())),
            ("POST", "/v1/start"): lambda: self.send_json(*a.request_start(self.read_json())),
            ("POST", "/v1/backup"): lambda: self.send_json(*a.start_backup(self.read_json())),
            ("GET", "/v1/backup"): lambda: self.send_json(200,
                                                          a.backups.snapshot().to_json()),
            ("POST", "/v1/save"): lambda: self.send_json(*a.saves.start(self.read_json())),
            ("GET", "/v1/save"): lambda: self.send_json(200, a.saves.snapshot().to_json()),
        })
        if self.command != "GET":
            self.watch.changed()  # what a write changed (secrets, start, backup) shows now

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _route


class LocalHandler(_Handler):
    max_body = MAX_HOOK_BODY

    def _ask(self) -> None:
        domains = parse_qs(urlsplit(self.path).query).get("domain", [])
        allowed = len(domains) == 1 and self.agent.allowed_domain(domains[0])
        self.send_json(200 if allowed else 403, {"allowed": allowed})

    def _hooks(self) -> None:
        if not self.agent.hook_authorized(self.headers.get("Authorization")):
            self.close_connection = True
            self.error_json(401, "unauthorized")
            return
        body = self.read_body()
        try:
            payload: object = json.loads(body) if body else None
        except (ValueError, UnicodeDecodeError):
            payload = None  # still reported, so the tracker counts it as malformed
        self.agent.record_hook(payload)
        self.watch.changed()  # held long-polls see the new agent state at once
        self.send_json(204, None)

    def _web_request(self, forwarded: bool) -> WebRequest:
        """The user's request as Caddy describes it: X-Forwarded-Method/-Uri on the
        forward-auth call, X-Agentspaces-Client/-Scheme always (Caddy sets them,
        overwriting whatever the client sent)."""
        h = self.headers
        return WebRequest(
            method=(h.get("X-Forwarded-Method") if forwarded else None) or self.command,
            uri=(h.get("X-Forwarded-Uri") if forwarded else None) or self.path,
            host=h.get("Host") or "",
            scheme=h.get("X-Agentspaces-Scheme") or "http",
            client=h.get("X-Agentspaces-Client") or self.client_address[0],
            origin=h.get("Origin"), fetch_site=h.get("Sec-Fetch-Site"),
            fetch_mode=h.get("Sec-Fetch-Mode"),
            upgrade=h.get("X-Agentspaces-Upgrade") or None, accept=h.get("Accept") or "",
            authorization=h.get("Authorization"), cookie=h.get("Cookie"))

    def _send_answer(self, answer: Answer) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(answer.body)

    def _from_caddy(self) -> bool:
        if self.agent.web_front_key_matches(self.headers.get(FRONT_KEY_HEADER)):
            return True
        self.close_connection = True
        self.error_json(403, "forbidden", "only Caddy asks this")
        return False

    def _web_auth(self) -> None:
        if self.headers.get("Content-Length") not in (None, "0") or \
                self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # a body we do not read must not become a request
        if self._from_caddy():
            self._send_answer(self.agent.web_check(self._web_request(forwarded=True)))

    def _web_login(self) -> None:
        if not self._from_caddy():
            return
        body = b""
        if self.command == "POST":
            self.max_body = MAX_LOGIN_BODY
            body = self.read_body()
        self._send_answer(self.agent.web_login(self._web_request(forwarded=False), body))

    def _route(self) -> None:
        self.dispatch({("GET", "/ask"): self._ask, ("POST", "/hooks"): self._hooks,
                       ("GET", "/web/auth"): self._web_auth,
                       ("GET", "/web/login"): self._web_login,
                       ("POST", "/web/login"): self._web_login})

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _route


class AgentHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: Address, handler: type[_Handler],
                 tls: ssl.SSLContext | None = None,
                 limits: ConnectionLimits = LOCAL_LIMITS) -> None:
        self.address_family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        self._tls = tls
        self.limits = limits
        self._slots = ConnectionSlots(limits.max_connections, limits.per_address)
        self._connection = threading.local()  # each connection has its own thread
        self.on_close: Callable[[], None] = lambda: None
        super().__init__((address.host, address.port), handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (slow, pointless here).
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        key = address_key(client_address[0])
        if not self._slots.acquire(key):
            # Over a cap: close in the accept loop, so a flood costs no threads.
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release(key)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release(address_key(client_address[0]))

    def head_deadline(self) -> float:
        """When the current connection's first request head must be complete."""
        deadline = getattr(self._connection, "head_deadline", None)
        return deadline if deadline is not None else time.monotonic() + \
            self.limits.header_seconds

    def finish_request(self, request: Any, client_address: Any) -> None:
        self._connection.head_deadline = time.monotonic() + self.limits.header_seconds
        # The handshake is bounded in total by the timeout (CPython's do_handshake keeps
        # one deadline across its waits).
        request.settimeout(self.limits.header_seconds)
        if self._tls is None:
            super().finish_request(request, client_address)
            return
        try:
            conn = self._tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.info("%s TLS handshake failed: %s", client_address[0],
                     getattr(exc, "reason", None) or type(exc).__name__)
            return
        try:
            super().finish_request(conn, client_address)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            # The client hung up (Caddy closes its on-demand TLS `ask` connections).
            log.debug("connection from %s closed by the client", client_address[0])
            return
        log.exception("connection from %s failed", client_address[0])

    def server_close(self) -> None:
        super().server_close()
        self.on_close()


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return ctx


def build_servers(agent: Agent) -> tuple[AgentHTTPServer, AgentHTTPServer]:
    """(api, local) servers bound to the configured addresses (not yet serving)."""
    cfg = agent.config
    watch = StatusWatch(agent.status_document)
    api_handler = type("BoundApiHandler", (ApiHandler,), {"agent": agent, "watch": watch})
    local_handler = type("BoundLocalHandler", (LocalHandler,),
                         {"agent": agent, "watch": watch})
    tls = server_tls_context(cfg.tls_cert, cfg.tls_key)
    api = AgentHTTPServer(cfg.api_listen, api_handler, tls, cfg.api_limits)
    api.on_close = watch.close
    try:
        local = AgentHTTPServer(cfg.local_listen, local_handler)
    except BaseException:
        api.server_close()
        raise
    return api, local
