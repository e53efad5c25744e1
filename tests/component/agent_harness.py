"""Run the real workspace agent (and real Caddy) as child processes on 127.0.0.N.

Every test gets its own loopback address and free ports, so tests never collide with
each other or with anything else on the machine; everything started here is stopped by
pid in a `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from agentspaces.lifeline import die_with_parent
from agentspaces.pki import AgentCredentials, generate

REPO = Path(__file__).resolve().parents[2]
CADDY = REPO / ".venv" / "bin" / "caddy"
HOST = "demo-default-1a2b3c.example.test"


def pick_loopback() -> str:
    """A 127.0.0.N address nobody is listening on right now (N random)."""
    for _ in range(50):
        addr = f"127.0.{random.randint(1, 254)}.{random.randint(2, 254)}"
        with socket.socket() as sock:
            try:
                sock.bind((addr, 0))
                return addr
            except OSError:
                continue
    raise RuntimeError("no free loopback address")


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] |
              None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before listening")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listening on {host}:{port} after {timeout}s")


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@dataclass
class AgentProcess:
    addr: str
    root: Path
    creds: AgentCredentials
    config: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"https://{self.addr}:{self.ports['api']}"

    @property
    def local_url(self) -> str:
        return f"http://{self.addr}:{self.ports['local']}"

    @property
    def config_path(self) -> Path:
        return self.root / "agent.json"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    def logs(self) -> str:
        return "".join((self.root / name).read_text(errors="replace")
                       for name in ("agent.stdout", "agent.stderr")
                       if (self.root / name).exists())

    def start(self) -> AgentProcess:
        self.config_path.write_text(json.dumps(self.config))
        out = open(self.root / "agent.stdout", "ab")  # noqa: SIM115 - the child owns it
        err = open(self.root / "agent.stderr", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentspaces_vm", "--config", str(self.config_path)],
            stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=self.root,
            start_new_session=True, preexec_fn=die_with_parent)
        out.close()
        err.close()
        wait_port(self.addr, self.ports["api"], proc=self.proc)
        wait_port(self.addr, self.ports["local"], proc=self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)


def make_agent(root: Path, *, addr: str | None = None, simulate: bool = True,
               tls_mode: str = "none", public_ports: list[int] | None = None,
               **overrides: Any) -> AgentProcess:
    """An agent config under `root` on its own loopback address (not started)."""
    addr = addr or pick_loopback()
    creds = generate(HOST, datetime.now(UTC))
    (root / "tls.crt").write_text(creds.cert_pem)
    (root / "tls.key").write_text(creds.key_pem)
    os.chmod(root / "tls.key", 0o600)
    ports = {name: free_port(addr) for name in ("api", "local", "admin", "http", "https", "ui")}
    config: dict[str, Any] = {
        "version": 1,
        "workspace": {"name": "demo", "namespace": "default", "uid": "0000-1111"},
        "host": HOST,
        "listen": {"api": f"{addr}:{ports['api']}", "local": f"{addr}:{ports['local']}"},
        "tls": {"cert": str(root / "tls.crt"), "key": str(root / "tls.key")},
        "tokenSha256": creds.token_sha256,
        "caddy": {"admin": f"{addr}:{ports['admin']}", "bind": addr, "tlsMode": tls_mode,
                  "httpPort": ports["http"], "httpsPort": ports["https"],
                  "uiPort": ports["ui"]},
        "publicPorts": public_ports or [],
        "paths": {"workspaces": str(root / "workspaces"), "state": str(root / "state")},
        "repository": {"url": "https://git.example.test/org/demo.git", "ref": "main"},
        "simulate": simulate,
        # Only this test's address counts, so other processes' ports stay out.
        "portDiscovery": {"addresses": [addr], "intervalSeconds": 0.2},
        "activityPollSeconds": 0.5,
    }
    config.update(overrides)
    return AgentProcess(addr=addr, root=root, creds=creds, config=config, ports=ports)


@contextlib.contextmanager
def running_agent(root: Path, **kwargs: Any) -> Iterator[AgentProcess]:
    agent = make_agent(root, **kwargs)
    try:
        yield agent.start()
    finally:
        agent.stop()


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in for a workspace program: answers with its name and what it saw."""

    name = "app"

    def do_GET(self) -> None:
        body = json.dumps({"server": self.name, "path": self.path,
                           "authorization": self.headers.get("Authorization"),
                           "host": self.headers.get("Host")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class TinyServer:
    """A threaded HTTP server on (host, port), started and stopped explicitly."""

    def __init__(self, host: str, port: int, name: str) -> None:
        handler = type("Handler", (_Recorder,), {"name": name})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self) -> TinyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()


class CaddyProcess:
    """Real Caddy with only its admin API configured; the agent loads the rest."""

    def __init__(self, root: Path, admin: str) -> None:
        self.root = root
        self.admin = admin
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CaddyProcess:
        boot = self.root / "caddy-boot.json"
        boot.write_text(json.dumps({"admin": {"listen": self.admin,
                                              "config": {"persist": False}}}))
        env = {**os.environ, "HOME": str(self.root), "XDG_DATA_HOME": str(self.root / "data"),
               "XDG_CONFIG_HOME": str(self.root / "cfg")}
        log = open(self.root / "caddy.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen([str(CADDY), "run", "--config", str(boot)], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True,
                                     preexec_fn=die_with_parent)
        log.close()
        host, _, port = self.admin.rpartition(":")
        wait_port(host, int(port), proc=self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        path = self.root / "caddy.log"
        return path.read_text(errors="replace") if path.exists() else ""
