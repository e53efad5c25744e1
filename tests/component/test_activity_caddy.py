"""ActivityTracker against a real Caddy: its /metrics move the way the tracker expects."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import bcrypt
import pytest

from agentspaces.lifeline import die_with_parent
from agentspaces_vm.activity import ActivityTracker

CADDY = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "caddy"
HOST, PUBLIC_HOST = "ws.test", "8080.ws.test"
USER, PASSWORD = "dev", "correct horse"

pytestmark = pytest.mark.timeout(90)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Backend(BaseHTTPRequestHandler):
    """Answers at once, except /hold, which stays open until `release` is set."""

    holding = threading.Event()
    release = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/hold":
            type(self).holding.set()
            type(self).release.wait(timeout=30)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Caddy:
    web: int
    admin: int


@pytest.fixture
def backend() -> Iterator[int]:
    Backend.holding.clear()
    Backend.release.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        Backend.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def caddy(tmp_path: Path, backend: int) -> Iterator[Caddy]:
    web, admin = free_port(), free_port()
    digest = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    proxy = {"handler": "reverse_proxy", "upstreams": [{"dial": f"127.0.0.1:{backend}"}]}
    config = {
        "admin": {"listen": f"127.0.0.1:{admin}", "config": {"persist": False}},
        "apps": {"http": {
            "metrics": {"per_host": True},
            "servers": {"workspace": {
                "listen": [f"127.0.0.1:{web}"],
                "automatic_https": {"disable": True},
                "routes": [
                    {"match": [{"host": [HOST]}], "terminal": True, "handle": [
                        {"handler": "authentication", "providers": {"http_basic": {
                            "hash": {"algorithm": "bcrypt"},
                            "accounts": [{"username": USER, "password": digest}]}}},
                        proxy]},
                    {"match": [{"host": [PUBLIC_HOST]}], "terminal": True, "handle": [proxy]},
                    {"handle": [{"handler": "static_response", "status_code": 404}]},
                ],
            }},
        }},
    }
    path = tmp_path / "caddy.json"
    path.write_text(json.dumps(config))
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    log = (tmp_path / "caddy.log").open("wb")
    process = subprocess.Popen([str(CADDY), "run", "--config", str(path)],
                               stdout=log, stderr=subprocess.STDOUT, env=env,
                               preexec_fn=die_with_parent)
    try:
        for _ in range(100):
            if process.poll() is not None:
                raise RuntimeError(f"caddy exited: {(tmp_path / 'caddy.log').read_text()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/config/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("caddy admin API did not come up within 10 s")
        yield Caddy(web=web, admin=admin)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def request(port: int, host: str, path: str = "/", *, auth: bool = False) -> int:
    headers = {"Host": host}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{USER}:{PASSWORD}".encode()).decode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def tick(self) -> datetime:
        self.now += timedelta(seconds=5)
        return self.now


def test_caddy_metrics_drive_http_activity(caddy: Caddy, tmp_path: Path):
    clock = Clock()
    (tmp_path / "proc").mkdir()
    tracker = ActivityTracker(
        clock, workspaces_root=tmp_path / "none", scan_files=False,
        caddy_metrics_url=f"http://127.0.0.1:{caddy.admin}/metrics",
        proc_root=tmp_path / "proc", reason_window=timedelta(seconds=1),
        http_counts_host=lambda host: host != PUBLIC_HOST)
    tracker.poll()

    # Scanners and the public port: answered, but none of it is the user's activity.
    assert request(caddy.web, HOST) == 401
    assert request(caddy.web, "scanner.example") == 404
    assert request(caddy.web, PUBLIC_HOST) == 200
    clock.tick()
    tracker.poll()
    snap = tracker.snapshot()
    assert snap["lastActivityTime"] is None, snap

    assert request(caddy.web, HOST, auth=True) == 200
    used = clock.tick()
    tracker.poll()
    snap = tracker.snapshot()
    assert snap["reasons"] == ["http"]
    assert snap["lastUserActivityTime"] == used.strftime("%Y-%m-%dT%H:%M:%SZ")

    # A long-lived authenticated request is an open session once seen on two polls.
    holder = threading.Thread(target=request, args=(caddy.web, HOST, "/hold"),
                              kwargs={"auth": True})
    holder.start()
    try:
        assert Backend.holding.wait(timeout=20)
        clock.tick()
        tracker.poll()
        assert "http-session" not in tracker.snapshot()["reasons"]
        held = clock.tick()
        tracker.poll()
        snap = tracker.snapshot()
        assert snap["reasons"] == ["http-session"]
        assert snap["sessions"]["httpInFlight"] >= 1
        assert snap["lastUserActivityTime"] == held.strftime("%Y-%m-%dT%H:%M:%SZ")
    finally:
        Backend.release.set()
        holder.join(timeout=20)
    assert not holder.is_alive()
    clock.tick()
    tracker.poll()  # the finished request is counted, and nothing is in flight any more
    snap = tracker.snapshot()
    assert snap["reasons"] == ["http"] and snap["sessions"]["httpInFlight"] == 0
