"""The generated Caddy config in the real `caddy` binary, driven by the real agent."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agentspaces.agent_client import pinned_context
from agentspaces_vm.caddy import AgentAuth, CaddyInputs, render_config
from agentspaces_vm.password_hash import hash_password
from agentspaces_vm.templates import load_template
from tests.component.agent_harness import (
    CADDY,
    HOST,
    AgentProcess,
    CaddyProcess,
    TinyServer,
    make_agent,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

PASSWORD = "s3cret-pass"
HASH = hash_password(PASSWORD, log_n=10)


@pytest.mark.parametrize("tls_mode", ["none", "internal", "acme"])
def test_generated_config_validates(tmp_path: Path, tls_mode: str) -> None:
    inputs = CaddyInputs(
        host=HOST, admin_listen="127.0.0.1:2999", bind="127.0.0.1", tls_mode=tls_mode,
        http_port=8080, https_port=8443, ui_port=3001, ask_endpoint="http://127.0.0.1:9180/ask",
        ports={3000: "127.0.0.1", 5173: "::1"}, public_ports=frozenset({8081}),
        agent_auth=AgentAuth("127.0.0.1:9180", "k"), reserved_ports=frozenset({22, 9180}))
    path = tmp_path / "caddy.json"
    path.write_text(json.dumps(render_config(load_template("caddy.json"), inputs)))
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "d"),
           "XDG_CONFIG_HOME": str(tmp_path / "c"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([str(CADDY), "validate", "--config", str(path)], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Valid configuration" in result.stdout + result.stderr


@dataclass
class Stack:
    agent: AgentProcess
    caddy: CaddyProcess
    ui: TinyServer

    @property
    def base(self) -> str:
        return f"http://{self.agent.addr}:{self.agent.ports['http']}"

    def get(self, host: str, auth: tuple[str, str] | None = None) -> httpx.Response:
        return httpx.get(f"{self.base}/some/path", headers={"Host": host}, auth=auth,
                         timeout=10)

    def status(self, host: str, auth: tuple[str, str] | None = None) -> int | None:
        """For waiting: the status code, or None while Caddy does not listen yet."""
        try:
            return self.get(host, auth).status_code
        except httpx.TransportError:
            return None

    def deliver_secrets(self) -> None:
        with httpx.Client(verify=pinned_context(self.agent.creds.cert_pem), timeout=10) as c:
            resp = c.put(f"{self.agent.base_url}/v1/secrets",
                         headers={"Authorization": f"Bearer {self.agent.creds.token}"},
                         json={"version": "v1",
                               "basicAuth": {"username": "dev", "scryptHash": HASH}})
        assert resp.status_code == 200 and resp.json()["caddyLoaded"] is True


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    public = 0
    agent = make_agent(tmp_path, tls_mode="none")
    # A public port needs a number up front; take a free one on this address.
    with socket.socket() as sock:
        sock.bind((agent.addr, 0))
        public = sock.getsockname()[1]
    agent.config["publicPorts"] = [public]
    caddy = CaddyProcess(tmp_path, agent.config["caddy"]["admin"])
    ui = TinyServer(agent.addr, agent.ports["ui"], "cloudcli")
    try:
        caddy.start()
        ui.__enter__()
        agent.start()
        stack = Stack(agent, caddy, ui)
        # The agent loads its config as soon as Caddy answers.
        wait_for(lambda: stack.status(HOST) == 503, 20, "the agent's routes in Caddy")
        yield stack
    finally:
        agent.stop()
        ui.close()
        caddy.stop()


def test_private_routes_wait_for_secrets_then_require_a_password(stack: Stack) -> None:
    before = stack.get(HOST)
    assert before.status_code == 503 and before.text == "workspace is starting\n"
    assert stack.get(HOST, auth=("dev", PASSWORD)).status_code == 503
    stack.deliver_secrets()
    assert stack.get(HOST).status_code == 401
    assert stack.get(HOST, auth=("dev", "wrong")).status_code == 401
    ok = stack.get(HOST, auth=("dev", PASSWORD))
    assert ok.status_code == 200
    seen = ok.json()
    assert seen["server"] == "cloudcli" and seen["path"] == "/some/path"
    assert seen["authorization"] is None  # the password never reaches the program


def test_unknown_hosts_are_refused(stack: Stack) -> None:
    stack.deliver_secrets()
    for host in ("example.test", f"evil.{HOST}", f"{HOST}.evil.test",
                 f"{stack.agent.ports['api'] + 7}.{HOST}"):
        resp = stack.get(host, auth=("dev", PASSWORD))
        assert resp.status_code == 404, host
        assert resp.text == "unknown host\n"


def test_discovered_port_gets_a_private_route_and_loses_it(stack: Stack) -> None:
    stack.deliver_secrets()
    with TinyServer(stack.agent.addr, 0, "devserver") as app:
        host = f"{app.port}.{HOST}"
        # status(): Caddy may drop a connection while it swaps in the new config.
        wait_for(lambda: stack.status(host) == 401, 15, "the port's route")
        resp = stack.get(host, auth=("dev", PASSWORD))
        assert resp.status_code == 200 and resp.json()["server"] == "devserver"
        assert resp.json()["host"] == host
    wait_for(lambda: stack.status(host, auth=("dev", PASSWORD)) == 404, 15,
             "the route to go when the port closes")


def test_public_port_needs_no_auth(stack: Stack) -> None:
    stack.deliver_secrets()
    public = stack.agent.config["publicPorts"][0]
    host = f"{public}.{HOST}"
    assert stack.get(host).status_code == 502  # routed, nothing listening yet
    with TinyServer(stack.agent.addr, public, "public-app"):
        wait_for(lambda: stack.status(host) == 200, 15, "the public port to answer")
        assert stack.get(host).json()["server"] == "public-app"


def test_metrics_count_requests_per_host(stack: Stack) -> None:
    stack.deliver_secrets()
    assert stack.get(HOST, auth=("dev", PASSWORD)).status_code == 200
    metrics = httpx.get(f"http://{stack.caddy.admin}/metrics", timeout=10).text
    lines = [line for line in metrics.splitlines()
             if line.startswith("caddy_http_request_duration_seconds_count")
             and f'host="{HOST}"' in line and 'code="200"' in line]
    assert lines and float(lines[0].rsplit(" ", 1)[1]) >= 1


def test_on_demand_tls_asks_the_agent(tmp_path: Path) -> None:
    """tlsMode internal: Caddy issues certificates only for names the agent allows."""
    agent = make_agent(tmp_path, tls_mode="internal")
    caddy = CaddyProcess(tmp_path, agent.config["caddy"]["admin"])
    ui = TinyServer(agent.addr, agent.ports["ui"], "cloudcli")
    try:
        caddy.start()
        ui.__enter__()
        agent.start()
        port = agent.ports["https"]

        def handshake(name: str) -> str | None:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # Caddy's internal CA is not trusted here
            try:
                with socket.create_connection((agent.addr, port), timeout=10) as raw, \
                        ctx.wrap_socket(raw, server_hostname=name) as tls:
                    der = tls.getpeercert(binary_form=True)
                    return "ok" if der else None
            except (ssl.SSLError, ConnectionError):
                return None

        wait_for(lambda: handshake(HOST), 30, "a certificate for the workspace host")
        assert handshake(f"unknown.{HOST}") is None
        assert handshake("example.test") is None
        obtained = [line for line in caddy.log().splitlines()
                    if "certificate obtained successfully" in line]
        assert obtained and all(f'"identifier":"{HOST}"' in line for line in obtained)
        # Caddy asked the agent about every name and was turned away for the others.
        assert "GET /ask 200" in agent.logs() and "GET /ask 403" in agent.logs()
    finally:
        agent.stop()
        ui.close()
        caddy.stop()
