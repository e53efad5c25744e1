"""Hetzner Cloud API emulator: a local HTTP server that speaks enough of the real v1 API
for the `hcloud` library (servers, actions, server types, locations, data centers,
images, SSH keys, firewalls), with the real error bodies, pagination, per-token rate
limiting, runtime fault injection, per-endpoint call counters and hooks for simulated VMs.

    with HetznerEmulator(token="t", boot_seconds=0.2) as emu:
        client = hcloud.Client(token="t", api_endpoint=emu.url)

Request pipeline: count the call -> fault rules -> rate limit (every request, even
unauthenticated ones, like the real API) -> bearer token -> API -> held/dropped response.
Every request is counted in `calls`, including faulted, 401 and 429 ones.
Run standalone: python -m agentspaces.sandbox.hetzner --port 8081 --token X
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .hetzner_api import HetznerApi, endpoint_key
from .hetzner_errors import ApiError, error_body
from .hetzner_faults import FaultInjector, FaultPlan, FaultRule
from .hetzner_ratelimit import RateLimiter, RateLimitState
from .hetzner_state import CloudState
from .hetzner_workers import Callback, HookDispatcher, Scheduler

log = logging.getLogger(__name__)
API_PREFIX = "/v1"
# respond(status, body, headers): body is a JSON object, plain text, or None (empty).
Responder = Callable[[int, dict[str, Any] | str | None, dict[str, str]], None]
LOG_SIZE = 10_000  # the request log keeps the most recent requests only


@dataclass
class RequestRecord:
    """One request as the emulator saw it; status None means no answer was sent (yet)."""
    method: str
    path: str
    endpoint: str
    status: int | None = None
    fault: str | None = None


class HetznerEmulator:
    def __init__(self, token: str, *, host: str = "127.0.0.1", port: int = 0,
                 boot_seconds: float = 1.0, delete_seconds: float = 0.5,
                 action_seconds: float = 0.3,
                 ip_allocator: Callable[[], str] | None = None,
                 rate_limit: int = 3600, rate_refill_per_second: float = 1.0,
                 rate_clock: Callable[[], float] = time.monotonic) -> None:
        self.token = token
        self._host, self._port = host, port
        self._scheduler = Scheduler()
        self._hooks = HookDispatcher()
        self.state = CloudState(self._scheduler, self._hooks, ip_allocator)
        self.state.boot_seconds = boot_seconds
        self.state.delete_seconds = delete_seconds
        self.state.action_seconds = action_seconds
        self.api = HetznerApi(self.state)
        self.faults = FaultInjector()
        self.rate_limiter = RateLimiter(rate_limit, rate_refill_per_second, rate_clock)
        self._calls: Counter[str] = Counter()
        self._log: deque[RequestRecord] = deque(maxlen=LOG_SIZE)
        self._calls_lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> HetznerEmulator:
        if self._httpd is not None:
            raise RuntimeError("emulator already started")
        self._httpd = ThreadingHTTPServer((self._host, self._port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._scheduler.start()
        self._hooks.start()
        # A short poll interval keeps stop() quick (shutdown waits for the next poll).
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="hetzner-emulator-http", daemon=True)
        self._thread.start()
        log.info("hetzner emulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving; held or hung requests are released, pending hooks dropped."""
        self._stopping.set()
        self.faults.clear()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._scheduler.stop()
        self._hooks.stop()

    def __enter__(self) -> HetznerEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("emulator not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}{API_PREFIX}"

    # -- simulation knobs ------------------------------------------------------------
    @property
    def boot_seconds(self) -> float:
        return self.state.boot_seconds

    @boot_seconds.setter
    def boot_seconds(self, value: float) -> None:
        self.state.boot_seconds = value

    @property
    def delete_seconds(self) -> float:
        return self.state.delete_seconds

    @delete_seconds.setter
    def delete_seconds(self, value: float) -> None:
        self.state.delete_seconds = value

    @property
    def action_seconds(self) -> float:
        return self.state.action_seconds

    @action_seconds.setter
    def action_seconds(self, value: float) -> None:
        self.state.action_seconds = value

    @property
    def ip_allocator(self) -> Callable[[], str]:
        return self.state.ip_allocator

    @ip_allocator.setter
    def ip_allocator(self, allocator: Callable[[], str]) -> None:
        self.state.ip_allocator = allocator

    def set_rate_limit(self, limit: int, refill_per_second: float = 1.0) -> None:
        """New bucket size and refill rate; every token's bucket starts full."""
        self.rate_limiter.configure(limit, refill_per_second)

    # -- observation -----------------------------------------------------------------
    @property
    def calls(self) -> Counter[str]:
        """Snapshot: "METHOD /normalized/path" -> number of requests received."""
        with self._calls_lock:
            return Counter(self._calls)

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of every request in arrival order (status filled once answered)."""
        with self._calls_lock:
            return [replace(r) for r in self._log]

    def reset_calls(self) -> None:
        with self._calls_lock:
            self._calls.clear()
            self._log.clear()

    @property
    def servers(self) -> dict[int, dict[str, Any]]:
        """Snapshot: server id -> API representation plus "user_data" and
        "ssh_key_ids". Deleted servers are gone from it."""
        return self.state.snapshots()

    def server(self, server_id: int) -> dict[str, Any] | None:
        return self.servers.get(server_id)

    @property
    def firewalls(self) -> dict[int, dict[str, Any]]:
        """Snapshot: firewall id -> API representation (with `applied_to`)."""
        return {f["id"]: f for f in self.api.firewalls.all()}

    def firewall_servers(self, firewall_id: int) -> set[int]:
        """The servers a firewall applies to, directly or by label selector. The
        simulated VMs are local processes, so nothing is actually filtered."""
        return self.api.firewalls.servers_of(firewall_id)

    def user_data(self, server_id: int) -> str | None:
        server = self.server(server_id)
        return None if server is None else server["user_data"]

    # -- hooks -----------------------------------------------------------------------
    def on_server_created(self, callback: Callback) -> Callback:
        """Call `callback(server_snapshot)` after each server is created (status
        initializing; the snapshot includes user_data). Usable as a decorator."""
        return self._hooks.register("created", callback)

    def on_server_deleted(self, callback: Callback) -> Callback:
        """Call `callback(server_snapshot)` when a deleted server disappears."""
        return self._hooks.register("deleted", callback)

    def on_server_status_changed(self, callback: Callback) -> Callback:
        """Call `callback(server_snapshot)` on every status change."""
        return self._hooks.register("status", callback)

    def remove_hook(self, callback: Callback) -> None:
        for event in HookDispatcher.EVENTS:
            self._hooks.unregister(event, callback)

    def wait_for_hooks(self, timeout: float = 5.0) -> bool:
        """Block until every hook emitted so far has run; False on timeout."""
        return self._hooks.wait_idle(timeout)

    # -- request pipeline (called from handler threads) -------------------------------
    def _record(self, method: str, path: str, endpoint: str) -> RequestRecord:
        record = RequestRecord(method, path, endpoint)
        with self._calls_lock:
            self._calls[endpoint] += 1
            self._log.append(record)
        return record

    def _finish_record(self, record: RequestRecord, status: int | None,
                       fault: str | None) -> None:
        with self._calls_lock:
            record.status, record.fault = status, fault

    def _wait(self, rule: FaultRule, seconds: float) -> None:
        rule.wait(self._stopping, seconds)

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes,
               respond: Responder) -> None:
        """Process one request and answer through `respond(status, payload, headers)`;
        returning without calling it drops the connection."""
        split = urlsplit(target)
        path = split.path
        if not path.startswith(API_PREFIX + "/"):
            respond(404, error_body("not_found", "not found"), {})
            return
        path = path[len(API_PREFIX):]
        endpoint = endpoint_key(method, path)
        record = self._record(method, path, endpoint)
        plan = self.faults.plan(method, path, endpoint)
        bearer = headers.get("authorization", "")
        token = bearer[7:].strip() if bearer.lower().startswith("bearer ") else ""

        for rule in plan.delays:
            self._wait(rule, rule.seconds)
        if plan.respond is not None or plan.drop_before is not None:
            self._fault_answer(plan, token, record, respond)
            return

        limit = self.rate_limiter.take(token)
        status, payload = self._api_answer(method, path, split.query, token, body, limit)
        for rule in plan.holds:
            self._wait(rule, rule.seconds)
        if plan.drop_after is not None:
            self._drop(plan.drop_after, record)
            return
        # Recorded before answering: a client that saw the answer must find it logged.
        self._finish_record(record, status, "hold" if plan.holds else None)
        respond(status, payload, limit.headers())

    def _api_answer(self, method: str, path: str, query: str, token: str, body: bytes,
                    limit: RateLimitState) -> tuple[int, dict[str, Any] | None]:
        if not limit.allowed:
            return 429, error_body("rate_limit_exceeded",
                                   f"limit of {limit.limit} requests per hour reached")
        if not secrets.compare_digest(token.encode(), self.token.encode()):
            return 401, error_body("unauthorized", "unable to authenticate")
        try:
            return self.api.dispatch(method, path, parse_qs(query, keep_blank_values=True),
                                     body)
        except ApiError as exc:
            return exc.status, exc.body()
        except Exception:
            log.exception("hetzner emulator: internal error on %s %s", method, path)
            return 500, error_body("server_error", "internal error in the emulator")

    def _fault_answer(self, plan: FaultPlan, token: str, record: RequestRecord,
                      respond: Responder) -> None:
        rule = plan.respond
        if rule is None:
            assert plan.drop_before is not None
            self._drop(plan.drop_before, record)
            return
        self._wait(rule, rule.seconds)
        status = rule.status or 500
        headers = self.rate_limiter.peek(token).headers()
        self._finish_record(record, status, "status")
        if rule.json_body:
            message = rule.message or f"injected fault {status}"
            respond(status, error_body(rule.error_code(), message), headers)
        else:
            respond(status, rule.message or "upstream error", headers)

    def _drop(self, rule: FaultRule, record: RequestRecord) -> None:
        if rule.kind == "hang":
            self._wait(rule, rule.seconds)
        self._finish_record(record, None, rule.kind)


def _make_handler(emulator: HetznerEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "hetzner-emulator"
        protocol_version = "HTTP/1.0"  # one request per connection: easy to drop/hang

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            emulator.handle(self.command, self.path, headers, body, self._respond)
            self.close_connection = True

        def _respond(self, status: int, payload: dict[str, Any] | str | None,
                     headers: dict[str, str]) -> None:
            if isinstance(payload, str):  # a gateway's non-JSON error page
                data, ctype = payload.encode(), "text/plain"
            elif payload is None:
                data, ctype = b"", "application/json"
            else:
                data, ctype = json.dumps(payload).encode(), "application/json"
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Correlation-Id", secrets.token_hex(8))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                log.debug("hetzner emulator: client went away before the answer")

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("hetzner emulator: " + format, *args)

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the Hetzner Cloud API emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--token", required=True, help="the bearer token clients must send")
    parser.add_argument("--boot-seconds", type=float, default=1.0)
    parser.add_argument("--rate-limit", type=int, default=3600)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    emulator = HetznerEmulator(args.token, host=args.host, port=args.port,
                               boot_seconds=args.boot_seconds, rate_limit=args.rate_limit)
    with emulator:
        print(f"Hetzner Cloud API emulator at {emulator.url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
