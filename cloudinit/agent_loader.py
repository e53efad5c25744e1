"""Stage 0 of the workspace agent: run the agent bundle, receiving it first if needed.

The agent is too large for Hetzner's 32 KiB user-data, so cloud-init may write only
this loader, agent.json, the TLS files and the sha256 of the expected bundle
(docs/vm.md). agentspaces-agent.service runs the loader, which

- execs the bundle right away when the file exists and has the expected digest
  (every boot after the first, or when the user-data carried the bundle), or
- serves the agent's API address with the agent's certificate and bearer-token check
  until the operator delivers the bundle with `PUT /v1/agent`, then writes it and execs
  it in the same process (same PID for systemd).

While waiting, `GET /v1/status` answers with bootStage "awaiting-agent"; every other
request gets 503.

A warm-pool server's agent.json has `pool: {class}` and no `workspace` (nor host,
publicPorts, repository, claudeCode). It serves even when the bundle is installed:
bootStage "awaiting-claim" until the operator's `PUT /v1/claim` names the workspace
(`{"config": {workspace, host, ...}, "claudeSeeds": {name: text},
"sshAuthorizedKeys": [line]}`). The loader writes the seeds and keys, rewrites
agent.json (the claim's keys in, `pool` out), then waits for the bundle as above, or
execs the installed one. A repeated claim for the same workspace uid answers 200;
`PUT /v1/agent` before the claim gets 409, since the agent needs its workspace.

Like the agent's API, it caps connections (in total and per address), gives the TLS
handshake and request head one total deadline, and checks the token before reading any
body byte. Python 3 standard library only, like the agent.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.server
import io
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_CLAIM_BYTES = 256 * 1024
FAILURES_PER_MINUTE = 10
IO_TIMEOUT_SECONDS = 30
# Defaults of agent.json's optional apiLimits (the agent reads the same keys).
LIMITS = {"maxConnections": 64, "perAddress": 8, "headerSeconds": 10.0,
          "bodyFloorSeconds": 10.0, "bodyBytesPerSecond": 65536}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
CLAIM_KEYS = ("workspace", "host", "publicPorts", "repository", "claudeCode")
SEEDS = ("settings.json", "CLAUDE.md", "mcp.json")
SSH_KEYS_FILE = "/root/.ssh/authorized_keys"


class LoaderError(Exception):
    """The loader cannot start (bad configuration or files); the message says which."""


class BadClaim(ValueError):
    """A PUT /v1/claim body the loader refuses (400); the argument names the bad field."""


def in_pool(config: Any) -> bool:
    """A warm-pool server's agent.json, not claimed yet."""
    return isinstance(config, dict) and "pool" in config and "workspace" not in config


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _need(ok: object, field: str) -> None:
    if not ok:
        raise BadClaim(field)


def check_claim(doc: Any) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The claim's config, Claude seeds and SSH keys; BadClaim for the first bad part."""
    _need(isinstance(doc, dict), "body")
    for key in doc:
        _need(key in ("config", "claudeSeeds", "sshAuthorizedKeys"), str(key))
    config, seeds = doc.get("config"), doc.get("claudeSeeds", {})
    keys = doc.get("sshAuthorizedKeys", [])
    _need(isinstance(config, dict), "config")
    for key in config:  # the agent checks the values it reads
        _need(key in CLAIM_KEYS, f"config.{key}")
    _need(isinstance(config.get("workspace"), dict), "config.workspace")
    for key in ("name", "namespace", "uid"):
        _need(_text(config["workspace"].get(key)), f"config.workspace.{key}")
    _need(_text(config.get("host")), "config.host")
    _need(isinstance(seeds, dict), "claudeSeeds")
    for name, text in seeds.items():
        _need(name in SEEDS and isinstance(text, str), f"claudeSeeds.{name}")
    _need(isinstance(keys, list), "sshAuthorizedKeys")
    for i, key in enumerate(keys):  # one line each: a newline would add another key
        _need(_text(key) and key.isprintable(), f"sshAuthorizedKeys[{i}]")
    return config, seeds, [key.strip() for key in keys]


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write a temporary file with `mode` from the start, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fd, mode)
        fh.write(data)
        fh.flush()
        os.fsync(fd)
    os.replace(tmp, path)


def file_sha256(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`."""
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:([0-9]{1,5})|([^:\[\]]+):([0-9]{1,5})", text)
    if not match:
        raise LoaderError(f"listen.api: expected host:port, got {text!r}")
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise LoaderError(f"listen.api: port out of range in {text!r}")
    return match.group(1) or match.group(3), port


def read_limits(config: dict[str, Any]) -> dict[str, float]:
    given = config.get("apiLimits") or {}
    limits = {}
    for key, default in LIMITS.items():
        value = given.get(key, default) if isinstance(given, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise LoaderError(f"apiLimits.{key}: expected a positive number")
        limits[key] = value
    return limits


class DeadlineReader(io.RawIOBase):
    """Socket reads that share one total budget: with a timeout per read, a client
    trickling a byte now and then would hold its connection forever."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.sock, self.deadline = sock, deadline

    def expect(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class State:
    """What the request handlers share with the main loop."""

    def __init__(self, config: dict[str, Any], bundle: Path, expected: str,
                 config_path: Path) -> None:
        self.limits = read_limits(config)
        self.token_sha256 = str(config.get("tokenSha256", "")).lower()
        if not _HEX64.match(self.token_sha256):
            raise LoaderError("tokenSha256: expected 64 hex digits")
        self.simulated = bool(config.get("simulate", False))
        self.bundle = bundle
        self.expected = expected
        self.delivered = threading.Event()
        self.config, self.config_path = config, config_path
        self.pool = in_pool(config)
        self.seed_dir = Path(config.get("claudeSeedDir") or config_path.parent / "claude")
        self.keys_file = Path(config.get("sshAuthorizedKeysFile") or SSH_KEYS_FILE)
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def throttled(self, address: str, now: float) -> bool:
        with self._lock:
            recent = self._failures[address]
            while recent and now - recent[0] > 60:
                recent.popleft()
            return len(recent) >= FAILURES_PER_MINUTE

    def failed(self, address: str, now: float) -> None:
        with self._lock:
            self._failures[address].append(now)

    def token_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        digest = hashlib.sha256(header[len("Bearer "):].strip().encode()).hexdigest()
        return hmac.compare_digest(digest, self.token_sha256)

    def status(self) -> dict[str, Any]:
        unclaimed = in_pool(self.config)
        doc = {"version": "loader", "simulated": self.simulated,
               "bootStage": "awaiting-claim" if unclaimed else "awaiting-agent",
               "bootMessage": "a warm-pool server, waiting to be claimed" if unclaimed
               else "waiting for the operator to deliver the agent bundle",
               "agentBundle": {"sha256": self.expected}}
        if unclaimed:
            doc["pool"] = self.config["pool"]  # {"class"}
        if "workspace" in self.config:
            doc["workspace"] = self.config["workspace"]
        return doc

    def store(self, body: bytes) -> None:
        """Write the bundle atomically (it is only ever read whole, by exec)."""
        write_atomic(self.bundle, body, 0o644)

    def claim(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Apply a PUT /v1/claim body; (status code, answer). Files first, agent.json
        last: until it is replaced, a repeated claim writes everything again."""
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            doc = None
        config, seeds, keys = check_claim(doc)
        with self._lock:  # the throttle's: claims are rare
            current = self.config.get("workspace")
            if isinstance(current, dict) and current.get("uid") == config["workspace"]["uid"]:
                return 200, {"workspace": current}  # a repeat (or a restarted loader)
            if not self.pool:
                return 409, {"error": "not-a-pool-server"}
            if current is not None:
                return 409, {"error": "already-claimed"}
            for name, text in seeds.items():
                write_atomic(self.seed_dir / name, text.encode(errors="replace"), 0o644)
            path = self.keys_file
            if keys:  # appended, each line once
                path.parent.mkdir(parents=True, exist_ok=True)
                path.parent.chmod(0o700)
                lines = path.read_text().splitlines() if path.exists() else []
                text = "".join(f"{line}\n" for line in dict.fromkeys(lines + keys))
                write_atomic(path, text.encode(errors="replace"), 0o600)
            claimed = {k: v for k, v in self.config.items() if k != "pool"} | config
            write_atomic(self.config_path, json.dumps(claimed, indent=2).encode(), 0o600)
            self.config = claimed
            return 202, {"workspace": config["workspace"]}


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "agentspaces-loader"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    state: State  # set on the subclass made by serve()
    server: TlsServer

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced: the head's budget began before the handshake
        self.reader = DeadlineReader(self.connection, self.server.deadline.head)
        self.rfile = io.BufferedReader(self.reader)

    def _body_budget(self, length: int) -> None:
        limits = self.state.limits
        self.reader.expect(limits["bodyFloorSeconds"] + length / limits["bodyBytesPerSecond"])

    def _send(self, code: int, body: dict[str, Any], *headers: tuple[str, str]) -> None:
        # One request per connection: a kept-alive connection would hold server_close()
        # (and so the exec of the agent) for as long as the client keeps polling on it.
        self.close_connection = True
        self.connection.settimeout(IO_TIMEOUT_SECONDS)
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _drain(self) -> None:
        """Read a body we do not use, so closing does not reset the answer away."""
        try:
            left = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return
        left = left if 0 < left <= MAX_BUNDLE_BYTES else 0
        self._body_budget(left)
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                return
            left -= len(chunk)

    def _authorized(self) -> bool:
        # Token first: others failing at the same address never lock out the valid
        # token. No body byte is read before this; refusals close the connection.
        if self.state.token_ok(self.headers.get("Authorization")):
            return True
        address, now = self.client_address[0], time.monotonic()
        if self.state.throttled(address, now):
            self._send(429, {"error": "too-many-requests"}, ("Retry-After", "60"))
            return False
        self.state.failed(address, now)
        self._send(401, {"error": "unauthorized"})
        return False

    def _not_yet(self) -> None:
        self._drain()
        self._send(503, {"error": "agent-not-installed",
                         "detail": "the agent bundle has not been delivered yet"},
                   ("Retry-After", "5"))

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path == "/v1/status":
            self._send(200, self.state.status())
        else:
            self._not_yet()

    def do_PUT(self) -> None:
        if not self._authorized():
            return
        cap = {"/v1/agent": MAX_BUNDLE_BYTES, "/v1/claim": MAX_CLAIM_BYTES}.get(self.path)
        if cap is None:
            self._not_yet()
            return
        if self.path == "/v1/agent" and in_pool(self.state.config):
            self._drain()
            self._send(409, {"error": "not-claimed", "detail": "claim the server first"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send(411, {"error": "length-required"})
            return
        if not 0 < length <= cap:
            self._send(413, {"error": "too-large", "detail": f"at most {cap} bytes"})
            return
        self._body_budget(length)
        body = self.rfile.read(length)
        if self.path == "/v1/claim":
            try:
                code, answer = self.state.claim(body)
            except BadClaim as exc:
                code, answer = 400, {"error": "bad-claim", "field": str(exc), "detail": str(exc)}
            except OSError as exc:
                code, answer = 500, {"error": "claim-failed", "detail": type(exc).__name__}
            self._send(code, answer)
            if code == 202 and file_sha256(self.state.bundle) == self.state.expected:
                self.state.delivered.set()  # installed already: the process execs it next
            return
        digest = hashlib.sha256(body).hexdigest()
        if len(body) != length or not hmac.compare_digest(digest, self.state.expected):
            self._send(409, {"error": "bundle-mismatch",
                             "detail": "the body's sha256 is not the one this VM expects"})
            return
        self.state.store(body)
        self._send(202, {"sha256": digest})  # the process execs the agent next
        self.state.delivered.set()

    def do_POST(self) -> None:
        if self._authorized():
            self._not_yet()

    do_DELETE = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"agentspaces-loader: {self.client_address[0]} {format % args}\n")


class TlsServer(http.server.ThreadingHTTPServer):
    """Handshakes in the request thread, so a silent client cannot block accept();
    connections over the total or per-address cap are closed there at once."""

    daemon_threads = False  # server_close() waits for the 202 to be sent

    def __init__(self, address: tuple[str, int], handler: type[Handler],
                 context: ssl.SSLContext, limits: dict[str, float]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.context = context
        self.limits = limits
        self.deadline = threading.local()  # each connection has its own thread
        self.open: dict[str, int] = {}
        self.lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        address = client_address[0]
        with self.lock:
            held = self.open.get(address, 0)
            full = (sum(self.open.values()) >= self.limits["maxConnections"]
                    or held >= self.limits["perAddress"])
            if not full:
                self.open[address] = held + 1
        if full:
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                left = self.open.pop(client_address[0]) - 1
                if left:
                    self.open[client_address[0]] = left

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake, request line and headers share one deadline (CPython's
        # do_handshake keeps the timeout as a total across its waits).
        self.deadline.head = time.monotonic() + self.limits["headerSeconds"]
        request.settimeout(self.limits["headerSeconds"])
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        super().finish_request(tls, client_address)


def serve(config: dict[str, Any], bundle: Path, expected: str, config_path: Path) -> None:
    """Answer on listen.api until the bundle has been delivered (or, on a warm-pool
    server, claimed with the bundle installed)."""
    try:
        host, port = parse_address(config["listen"]["api"])
        cert, key = config["tls"]["cert"], config["tls"]["key"]
    except (KeyError, TypeError):
        raise LoaderError("agent.json lacks listen.api or tls.cert/tls.key") from None
    state = State(config, bundle, expected, config_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise LoaderError(f"cannot load the TLS certificate or key: {exc.__class__.__name__}"
                          ) from None
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = TlsServer((host, port), handler, context, state.limits)
    server.timeout = 0.5
    bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
    awaited = "a claim" if state.pool else "the agent bundle"
    print(f"agentspaces-loader: waiting for {awaited} on {bound_host}:{bound_port}",
          flush=True)
    try:
        while not state.delivered.is_set():
            server.handle_request()
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent-loader")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--sha256-file", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        expected = args.sha256_file.read_text(encoding="utf-8").strip().lower()
        if not _HEX64.match(expected):
            raise LoaderError(f"{args.sha256_file}: expected 64 hex digits")
        config = json.loads(args.config.read_text(encoding="utf-8"))
        if file_sha256(args.bundle) != expected or in_pool(config):
            serve(config, args.bundle, expected, args.config)
    except (OSError, ValueError, LoaderError) as exc:
        print(f"agentspaces-loader: {exc}", file=sys.stderr)
        return 1
    print(f"agentspaces-loader: starting {args.bundle}", flush=True)
    os.execv(sys.executable, [sys.executable, str(args.bundle), "--config", str(args.config)])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
