"""What the wake gateway adds to a request: a woken workspace's request through the
gateway's Caddy (reverse proxy to the server, the Host kept) against the same request
sent to the server directly, and the gateway app's own answer (the waking page's JSON
state for a stopped workspace, signed in with a session cookie).

Runs the real thing on loopback: the real Caddy configured by the gateway through its
admin API, the gateway (app and sync loop, in a thread of its own) fed by an in-memory
workspace source, and a small threaded HTTP server standing in for the VM. Each row
sends `--requests` GETs one after the other, once over one kept-alive connection and
once with a new connection per request.

    .venv/bin/python benchmarks/gateway_latency.py [--requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support: the same pieces the component tests use

import httpx  # noqa: E402
from tests.component.agent_harness import (  # noqa: E402
    CaddyProcess,
    free_port,
    pick_loopback,
)
from tests.support.gateway import (  # noqa: E402
    MemorySource,
    access_secret,
    gateway_class,
    host_of,
    running_at,
    stopped_workspace,
)

from agentspaces.gateway.service import Gateway, GatewaySettings, start_gateway  # noqa: E402
from agentspaces_vm import share_links  # noqa: E402

PASSWORD = "bench-password"


class GatewayThread:
    """The gateway in an event loop of its own, so the client here does not share it."""

    def __init__(self, settings: GatewaySettings, source: MemorySource) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gateway: Gateway = self._run(start_gateway(settings, source=source))

    def _run(self, coro: object) -> Gateway:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)  # type: ignore[arg-type]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.aclose(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class _Server(BaseHTTPRequestHandler):
    """The stand-in VM: a small JSON answer, HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes

    def do_GET(self) -> None:
        body = json.dumps({"host": self.headers.get("Host"), "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def upstream(host: str, port: int) -> Iterator[None]:
    server = ThreadingHTTPServer((host, port), _Server)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _timed(n: int, fresh: bool, address: tuple[str, int], path: str,
           headers: dict[str, str]) -> list[float]:
    """Milliseconds per GET, to the last byte of the body (http.client: next to no
    client overhead, so the differences are the servers')."""
    times = []
    kept = http.client.HTTPConnection(*address, timeout=10)
    try:
        for i in range(n + 1):
            start = time.perf_counter()
            conn = http.client.HTTPConnection(*address, timeout=10) if fresh else kept
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if fresh:
                conn.close()
            elapsed = (time.perf_counter() - start) * 1000
            assert resp.status == 200, resp.status
            if i:  # the first one warms up the connection and Caddy's proxy
                times.append(elapsed)
    finally:
        kept.close()
    return times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _row(label: str, values: list[float], base: list[float] | None = None) -> str:
    p50, p95 = statistics.median(values), _pct(values, 0.95)
    added = " | | "
    if base is not None:
        added = (f" | {p50 - statistics.median(base):+.2f}"
                 f" | {p95 - _pct(base, 0.95):+.2f}")
    return f"| {label} | {len(values)} | {p50:.2f} | {p95:.2f}{added} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    n = max(10, min(args.requests, 20000))

    gw_addr, vm_addr = pick_loopback(), pick_loopback()
    port, https_port, admin, app = (free_port(gw_addr) for _ in range(4))
    share_key, session_key = share_links.new_key(), share_links.new_key()
    source = MemorySource()
    source.put_class(gateway_class("bench", http_port=port, https_port=https_port))
    now = time.time()
    source.put(running_at(stopped_workspace("woken", "bench", "bench"), vm_addr,
                          ready_at=now, changed_at=now, target="Gateway"))
    source.put(stopped_workspace("asleep", "bench", "bench"))
    source.put_secret("bench", "asleep-access",
                      access_secret(PASSWORD, share_key, session_key))
    woken, asleep = host_of("woken", "bench"), host_of("asleep", "bench")

    with tempfile.TemporaryDirectory() as tmp, upstream(vm_addr, port):
        caddy = CaddyProcess(Path(tmp), f"{gw_addr}:{admin}").start()
        runner = None
        try:
            runner = GatewayThread(GatewaySettings(
                caddy_admin=f"{gw_addr}:{admin}", listen=f"{gw_addr}:{app}", bind=gw_addr,
                http_port=port, https_port=https_port), source)
            deadline = time.monotonic() + 30
            while not runner.gateway.synced_once and time.monotonic() < deadline:
                time.sleep(0.1)
            woken_headers = {"Host": f"{woken}:{port}"}
            login = httpx.post(
                f"http://{gw_addr}:{port}/.agentspaces/login", content=f"password={PASSWORD}",
                headers={"Host": f"{asleep}:{port}", "Origin": f"http://{asleep}:{port}",
                         "Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
            assert login.status_code == 303, login.text
            cookie = f"agentspaces-session={login.cookies['agentspaces-session']}"
            state_headers = {"Host": f"{asleep}:{port}", "Cookie": cookie}

            rows = []
            for fresh in (False, True):
                how = "new connection each" if fresh else "one kept-alive connection"
                direct = _timed(n, fresh, (vm_addr, port), "/src/app.py", woken_headers)
                proxied = _timed(n, fresh, (gw_addr, port), "/src/app.py", woken_headers)
                state = _timed(n, fresh, (gw_addr, port), "/.agentspaces/gateway/status",
                               state_headers)
                rows += [_row(f"direct to the server ({how})", direct),
                         _row(f"through the gateway's Caddy ({how})", proxied, direct),
                         _row(f"gateway app: waking-page state ({how})", state, direct)]
        finally:
            if runner is not None:
                runner.close()
            caddy.stop()

    print(f"\nWake gateway latency, {n} sequential GETs per row (ms; 'added' against "
          "direct to the server)\n")
    print("| request | n | p50 | p95 | added p50 | added p95 |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nload average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
