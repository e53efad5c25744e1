"""The real agent process: TLS API, auth, limits, secrets, /ask, hooks, simulated start."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import zipapp
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import agentspaces_cloudinit
import httpx
import pytest

import agentspaces_vm
from agentspaces.agent_client import pinned_context
from agentspaces.lifeline import die_with_parent
from agentspaces.pki import generate
from agentspaces_vm.password_hash import hash_password
from tests.component.agent_harness import (
    HOST,
    AgentProcess,
    TinyServer,
    make_agent,
    running_agent,
    stop_process,
    wait_port,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)

API_KEY = "sk-ant-test-7d1f0c2b9a8e4f6d"
REPO_TOKEN = "ghp_testtoken_5b3e9a1c7d2f"
PASSWORD = b"correct horse battery staple"
PASSWORD_HASH = hash_password(PASSWORD.decode(), log_n=10)


class FakeCaddyAdmin:
    """Records the configs the agent POSTs to /load (real Caddy is in test_caddy_real)."""

    def __init__(self, host: str, port: int) -> None:
        loads: list[dict[str, Any]] = []
        self.loads = loads

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/load":
                    loads.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                body = json.dumps(loads[-1] if loads else None).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def routes(self) -> list[dict[str, Any]]:
        return self.loads[-1]["apps"]["http"]["servers"]["workspace"]["routes"]


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    with running_agent(tmp_path, public_ports=[8080]) as proc:
        yield proc


@pytest.fixture
def caddy_admin(agent: AgentProcess) -> Iterator[FakeCaddyAdmin]:
    admin = FakeCaddyAdmin(agent.addr, agent.ports["admin"])
    try:
        yield admin
    finally:
        admin.close()


def client(agent: AgentProcess, token: str | None = None, source: str | None = None,
           ) -> httpx.Client:
    ctx = pinned_context(agent.creds.cert_pem)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    transport = httpx.HTTPTransport(verify=ctx, local_address=source)
    return httpx.Client(base_url=agent.base_url, headers=headers, transport=transport,
                        timeout=10)


def authed(agent: AgentProcess, source: str | None = None) -> httpx.Client:
    return client(agent, agent.creds.token, source)


def deliver_secrets(agent: AgentProcess, **extra: Any) -> httpx.Response:
    body = {"version": "v1", "anthropicApiKey": API_KEY, "repositoryToken": REPO_TOKEN,
            "basicAuth": {"username": "dev", "scryptHash": PASSWORD_HASH}, **extra}
    with authed(agent) as c:
        return c.put("/v1/secrets", json=body)


def test_requests_without_or_with_a_wrong_token_are_unauthorized(agent: AgentProcess) -> None:
    with client(agent) as anonymous, client(agent, "not-the-token") as wrong, \
            authed(agent) as right:
        for c in (anonymous, wrong):
            for method, path in (("GET", "/v1/status"), ("PUT", "/v1/secrets"),
                                 ("GET", "/no/such/path")):
                resp = c.request(method, path)
                assert resp.status_code == 401, (method, path)
                assert resp.json() == {"error": "unauthorized"}
        assert right.get("/v1/status").status_code == 200
        assert right.get("/no/such/path").status_code == 404
        assert right.delete("/v1/status").status_code == 405


def test_repeated_failures_from_one_address_are_rate_limited(agent: AgentProcess) -> None:
    attacker, bystander = "127.0.0.201", "127.0.0.202"
    with client(agent, "guess", source=attacker) as bad:
        codes = [bad.get("/v1/status").status_code for _ in range(11)]
        assert codes == [401] * 11
        blocked = bad.get("/v1/status")
        assert blocked.status_code == 429
        assert 1 <= int(blocked.headers["Retry-After"]) <= 60
        assert blocked.json()["error"] == "too many failed attempts"
    with authed(agent, source=bystander) as c:
        assert c.get("/v1/status").status_code == 200


def test_failures_at_a_shared_address_never_lock_out_the_valid_token(
        agent: AgentProcess) -> None:
    # A NAT or the operator's egress: someone else at the operator's address guesses.
    shared = "127.0.0.203"
    with client(agent, "guess", source=shared) as bad, authed(agent, source=shared) as good:
        codes = [bad.get("/v1/status").status_code for _ in range(20)]
        assert codes == [401] * 11 + [429] * 9
        assert good.get("/v1/status").status_code == 200
        assert good.put("/v1/config", json={"publicPorts": [8080]}).status_code == 200
        assert bad.get("/v1/status").status_code == 429  # the guesser stays blocked


def test_status_document_has_the_documented_shape(agent: AgentProcess) -> None:
    with authed(agent) as c:
        doc = c.get("/v1/status").json()
    assert doc["version"] == "0.1.0"
    assert doc["simulated"] is True
    assert doc["bootStage"] == "waiting-for-start"
    assert doc["devcontainer"] == {"state": "absent", "message": "", "policy": None,
                                   "removed": []}
    assert doc["ports"] == []
    assert doc["secrets"] == {"version": None, "shareLinks": True}
    assert doc["restore"] == {"state": "none", "error": None, "reason": None}
    assert doc["backup"] == {"state": "idle", "id": None}
    activity = doc["activity"]
    assert activity["agentState"] == "absent"
    assert activity["malformedHookEvents"] == 0
    assert set(activity) >= {"agentState", "agentStateSince", "lastActivityTime", "reasons",
                             "malformedHookEvents"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_are_written_privately_and_caddy_gets_the_hash(
        agent: AgentProcess, caddy_admin: FakeCaddyAdmin) -> None:
    resp = deliver_secrets(agent)
    assert resp.status_code == 200
    assert resp.json() == {"version": "v1", "caddyLoaded": True}
    secrets = agent.state / "secrets"
    assert _mode(secrets) == 0o700
    assert _mode(secrets / "claude") == 0o700
    key_file = secrets / "claude" / "anthropic-api-key"
    assert key_file.read_text().strip() == API_KEY and _mode(key_file) == 0o600
    token_file = secrets / "repository-token"
    assert token_file.read_text().strip() == REPO_TOKEN and _mode(token_file) == 0o600
    assert _mode(secrets / "git-askpass") == 0o700
    assert REPO_TOKEN not in (secrets / "git-askpass").read_text()

    [ui_handler] = caddy_admin.routes()[0]["handle"]
    ask_agent = ui_handler["routes"][1]["handle"][0]  # forward-auth: the agent checks
    assert ask_agent["rewrite"] == {"method": "GET", "uri": "/web/auth"}
    assert PASSWORD_HASH not in (agent.state / "caddy.json").read_text()
    assert _mode(agent.state / "caddy.json") == 0o600

    # A new delivery replaces the old one: no API key now means none on disk.
    with authed(agent) as c:
        resp = c.put("/v1/secrets", json={
            "version": "v2", "basicAuth": {"username": "dev", "scryptHash": PASSWORD_HASH}})
        assert resp.status_code == 200
        assert not key_file.exists() and not token_file.exists()
        assert c.get("/v1/status").json()["secrets"] == {"version": "v2", "shareLinks": True}


def test_bad_bodies_get_json_errors_and_the_agent_survives(agent: AgentProcess) -> None:
    with authed(agent) as c:
        cases = [
            c.put("/v1/secrets", content=b"{not json", headers={"Content-Type": "x"}),
            c.put("/v1/secrets", content=b"\xff\xfe", headers={"Content-Type": "x"}),
            c.put("/v1/secrets", json=[1, 2, 3]),
            c.put("/v1/secrets", json={"version": "v1", "basicAuth": {
                "username": "dev", "scryptHash": "plaintext-password"}}),
            c.put("/v1/config", json={"publicPorts": [0, 70000]}),
            c.put("/v1/config", json={"ports": [80]}),
            c.post("/v1/start", json={"restore": "yes"}),
            c.post("/v1/start", content=b""),
        ]
        for resp in cases:
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"] == "bad request"
            assert resp.json()["detail"]
        big = c.put("/v1/secrets", content=b"x" * (5 << 20),
                    headers={"Content-Type": "application/json"})
        assert big.status_code == 413 and big.json()["error"] == "request too large"
    # Garbage over TLS and a handshake-less connection must not hurt either.
    ctx = pinned_context(agent.creds.cert_pem)
    with socket.create_connection((agent.addr, agent.ports["api"]), timeout=5) as raw, \
            ctx.wrap_socket(raw) as tls:
        tls.sendall(b"BREW /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := tls.recv(4096):  # the agent closes after an error
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 501")
        assert answer.endswith(b'{"error": "not implemented"}')
    with socket.create_connection((agent.addr, agent.ports["api"]), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\n\r\n")  # plain HTTP to the TLS port
    with authed(agent) as c:
        assert c.get("/v1/status").status_code == 200
    assert agent.proc is not None and agent.proc.poll() is None


def test_ask_allows_only_the_workspace_names(agent: AgentProcess) -> None:
    def ask(domain: str) -> int:
        return httpx.get(f"{agent.local_url}/ask", params={"domain": domain}).status_code

    assert ask(HOST) == 200
    assert ask(HOST.upper() + ".") == 200
    assert ask(f"8080.{HOST}") == 200        # public port, even before it listens
    port = agent.ports["ui"] + 1000
    assert ask(f"{port}.{HOST}") == 403      # nothing listening there
    for name in ("example.test", f"x.{HOST}", f"1.2.{HOST}", f"0{port}.{HOST}",
                 f"{HOST}.evil.test", "", f"{agent.ports['api']}.{HOST}"):
        assert ask(name) == 403, name
    with TinyServer(agent.addr, 0, "app") as app:
        wait_for(lambda: ask(f"{app.port}.{HOST}") == 200, 10, "the new port to be allowed")
        with authed(agent) as c:
            assert app.port in c.get("/v1/status").json()["ports"]
    wait_for(lambda: ask(f"{app.port}.{HOST}") == 403, 10, "the closed port to be refused")


def test_public_ports_follow_put_config(agent: AgentProcess,
                                        caddy_admin: FakeCaddyAdmin) -> None:
    def ask(port: int) -> int:
        return httpx.get(f"{agent.local_url}/ask",
                         params={"domain": f"{port}.{HOST}"}).status_code

    assert ask(9000) == 403
    with authed(agent) as c:
        resp = c.put("/v1/config", json={"publicPorts": [9000, 9000, 8443]})
    assert resp.status_code == 200 and resp.json()["publicPorts"] == [8443, 9000]
    assert ask(9000) == 200 and ask(8080) == 403
    hosts = [r["match"][0]["host"][0] for r in caddy_admin.routes() if "match" in r]
    assert f"9000.{HOST}" in hosts and f"8080.{HOST}" not in hosts
    public = next(r for r in caddy_admin.routes() if r.get("@id") == "ws-port-9000")
    assert [h["handler"] for h in public["handle"]] == ["reverse_proxy"]


def test_the_class_ca_bundle_arrives_with_the_config_and_is_installed_by_the_start(
        agent: AgentProcess) -> None:
    """PUT /v1/config carries the class's CA certificates; the start sequence puts them
    into the (simulated) system store before anything is fetched."""
    ca = generate("private-ca.example", datetime.now(UTC)).cert_pem
    with authed(agent) as c:
        refused = c.put("/v1/config", json={"publicPorts": [], "caBundle": "not PEM"})
        assert refused.status_code == 400
        assert refused.json()["detail"] == "caBundle: expected PEM certificates and nothing else"
        resp = c.put("/v1/config", json={"publicPorts": [8080], "caBundle": ca})
        assert resp.status_code == 200 and resp.json()["caCertificates"] == 1
        assert (agent.state / "trust" / "ca-bundle.pem").read_text() == ca
        assert deliver_secrets(agent).status_code == 200
        assert c.post("/v1/start", json={"restore": None}).status_code == 202
        wait_for(lambda: c.get("/v1/status").json()["bootStage"] == "ready", 20, "ready")
    installed = agent.state / "trust" / "system-ca-certificates" / "agentspaces-class-1.crt"
    assert installed.read_text() == ca
    # A config without it removes the delivered bundle (a full replacement).
    with authed(agent) as c:
        assert c.put("/v1/config", json={"publicPorts": [8080]}).json()["caCertificates"] == 0
    assert not (agent.state / "trust" / "ca-bundle.pem").exists()


def test_simulated_start_reaches_ready_and_hooks_are_wired(agent: AgentProcess) -> None:
    # Seeds as cloud-init writes them, next to agent.json.
    seeds = agent.config_path.parent / "claude"
    seeds.mkdir()
    (seeds / "settings.json").write_text(json.dumps({"env": {"DISABLE_AUTOUPDATER": "1"}}))
    (seeds / "CLAUDE.md").write_text("# demo workspace\n")
    assert deliver_secrets(agent).status_code == 200
    with authed(agent) as c:
        first = c.post("/v1/start", json={"restore": None})
        assert first.status_code == 202
        ready = wait_for(lambda: (doc := c.get("/v1/status").json())["bootStage"] == "ready"
                         and doc, 20, "bootStage ready")
        assert ready["devcontainer"]["state"] == "simulated"
        again = c.post("/v1/start", json={"restore": None})
        assert again.status_code == 202 and again.json() == {"bootStage": "ready"}

    # The Claude settings the agent manages point the hooks at its local listener.
    settings = json.loads((agent.workspaces / ".claude" / "settings.json").read_text())
    hook = settings["hooks"]["PreToolUse"][0]["hooks"][0]
    assert hook["type"] == "http" and hook["url"] == f"{agent.local_url}/hooks"
    assert settings["apiKeyHelper"] == "cat /run/agentspaces/anthropic-api-key"
    assert settings["env"] == {"DISABLE_AUTOUPDATER": "1"}
    assert (agent.workspaces / ".claude" / "CLAUDE.md").read_text() == "# demo workspace\n"
    hook_token = (agent.state / "hook-token").read_text().strip()
    assert hook["headers"]["Authorization"] == f"Bearer {hook_token}"

    url = f"{agent.local_url}/hooks"
    event = {"hook_event_name": "UserPromptSubmit", "session_id": "s1", "cwd": "/workspaces"}
    assert httpx.post(url, json=event).status_code == 401
    assert httpx.post(url, json=event, headers={"Authorization": "Bearer nope"}).status_code == 401
    auth = {"Authorization": f"Bearer {hook_token}"}
    assert httpx.post(url, json=event, headers=auth).status_code == 204
    assert httpx.post(url, content=b"{broken", headers=auth).status_code == 204
    assert httpx.post(url, json={"hook_event_name": 5}, headers=auth).status_code == 204
    with authed(agent) as c:
        activity = c.get("/v1/status").json()["activity"]
    assert activity["agentState"] == "working"
    assert activity["malformedHookEvents"] == 2


def test_secrets_never_reach_the_logs(agent: AgentProcess,
                                      caddy_admin: FakeCaddyAdmin) -> None:
    deliver_secrets(agent)
    with client(agent, "wrong-token-value") as c:
        c.get("/v1/status")
    with authed(agent) as c:
        c.put("/v1/secrets", json={"version": "v3", "anthropicApiKey": "has space",
                                   "basicAuth": {"username": "dev", "scryptHash": PASSWORD_HASH}})
        c.post("/v1/start", json={"restore": None})
        wait_for(lambda: c.get("/v1/status").json()["bootStage"] == "ready", 20, "ready")
    hook_token = (agent.state / "hook-token").read_text().strip()
    httpx.post(f"{agent.local_url}/hooks", json={"hook_event_name": "Stop", "session_id": "x"},
               headers={"Authorization": f"Bearer {hook_token}"})
    logs = agent.logs()
    assert "PUT /v1/secrets 200" in logs  # the log does record the call itself
    for secret in (API_KEY, REPO_TOKEN, PASSWORD_HASH, agent.creds.token, hook_token,
                   "wrong-token-value", PASSWORD.decode()):
        assert secret not in logs


def test_tls_is_the_pinned_certificate_only(agent: AgentProcess) -> None:
    # A client with the system trust store must not accept the self-signed cert.
    with pytest.raises(httpx.ConnectError), httpx.Client(verify=ssl.create_default_context()) as c:
        c.get(f"{agent.base_url}/v1/status")
    with authed(agent) as c:
        assert c.get("/v1/status").status_code == 200


def build_zipapp(target: Path) -> Path:
    """The VM's agent.pyz layout: agentspaces_vm plus the agentspaces_cloudinit templates."""
    src = target / "pyz-src"
    shutil.copytree(Path(agentspaces_vm.__file__).parent, src / "agentspaces_vm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    cloudinit = src / "agentspaces_cloudinit"
    cloudinit.mkdir()
    shutil.copy(agentspaces_cloudinit.__file__, cloudinit / "__init__.py")
    shutil.copy(Path(agentspaces_cloudinit.__file__).parent / "caddy.json", cloudinit)
    pyz = target / "agent.pyz"
    zipapp.create_archive(src, pyz, main="agentspaces_vm.__main__:main")
    shutil.rmtree(src)
    return pyz


def test_the_zipapp_runs_and_finds_its_caddy_template(tmp_path: Path) -> None:
    pyz = build_zipapp(tmp_path)
    spec = make_agent(tmp_path)
    spec.config_path.write_text(json.dumps(spec.config))
    proc = subprocess.Popen([sys.executable, str(pyz), "--config", str(spec.config_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, cwd=tmp_path, start_new_session=True,
                            preexec_fn=die_with_parent)
    try:
        wait_port(spec.addr, spec.ports["api"], proc=proc)
        with authed(spec) as c:
            assert c.get("/v1/status").json()["bootStage"] == "waiting-for-start"
        rendered = wait_for(lambda: (spec.state / "caddy.json").exists() and json.loads(
            (spec.state / "caddy.json").read_text()), 10, "the rendered Caddy config")
        assert rendered["admin"]["listen"] == spec.config["caddy"]["admin"]
        assert rendered["apps"]["http"]["metrics"] == {"per_host": True}
    finally:
        stop_process(proc)


def test_a_bad_config_exits_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "agent.json"
    bad.write_text(json.dumps({"version": 1, "host": "demo.example.com"}))
    result = subprocess.run([sys.executable, "-m", "agentspaces_vm", "--config", str(bad)],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "workspace: required" in result.stderr


class _GitHandler(SimpleHTTPRequestHandler):
    """A "dumb HTTP" git server that wants the token as basic-auth password."""

    expected = ""
    seen_auth: list[str] = []

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        self.seen_auth.append(auth or "")
        if auth != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: Any) -> None:
        pass


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, timeout=60,
                   env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "GIT_AUTHOR_NAME": "t",
                        "GIT_AUTHOR_EMAIL": "t@example.test", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@example.test"})


def test_real_start_clones_with_the_token_and_runs_devcontainer_up(tmp_path: Path) -> None:
    """simulate off: real git over HTTP with basic auth, a recording devcontainer CLI."""
    work = tmp_path / "src"
    work.mkdir()
    _git("init", "-q", "-b", "main", cwd=work)
    (work / "README.md").write_text("hello\n")
    _git("add", ".", cwd=work)
    _git("commit", "-q", "-m", "first", cwd=work)
    served = tmp_path / "served"
    served.mkdir()
    _git("clone", "-q", "--bare", str(work), str(served / "demo.git"), cwd=tmp_path)
    _git("update-server-info", cwd=served / "demo.git")
    class Handler(_GitHandler):
        expected = "Basic " + base64.b64encode(f"x-access-token:{REPO_TOKEN}".encode()).decode()
        seen_auth: list[str] = []

    handler = Handler
    root = tmp_path / "agent"
    root.mkdir()
    spec = make_agent(root, simulate=False)
    git_server = ThreadingHTTPServer((spec.addr, 0),
                                     lambda *a: handler(*a, directory=str(served)))
    threading.Thread(target=git_server.serve_forever, kwargs={"poll_interval": 0.1},
                     daemon=True).start()
    fake_cli = root / "devcontainer"
    fake_cli.write_text("#!/bin/sh\n"
                        f"printf '%s\\n' \"$@\" >> {root / 'devcontainer.argv'}\n"
                        "echo 'building...' >&2\n"
                        "echo '{\"outcome\":\"success\",\"containerId\":\"c0ffee\"}'\n")
    fake_cli.chmod(0o755)
    spec.config["repository"] = {
        "url": f"http://{spec.addr}:{git_server.server_address[1]}/demo.git", "ref": "main"}
    spec.config["tools"] = {"devcontainer": str(fake_cli)}
    spec.config["containerUser"] = {"uid": os.getuid(), "gid": os.getgid()}
    spec.state.mkdir()
    (spec.state / "bootstrap").write_text("done\n")
    try:
        spec.start()
        assert deliver_secrets(spec).status_code == 200
        with authed(spec) as c:
            assert c.post("/v1/start", json={"restore": None}).status_code == 202
            doc = wait_for(lambda: (d := c.get("/v1/status").json())["bootStage"] in (
                "ready", "failed") and d, 30, "the start sequence to end")
        assert doc["bootStage"] == "ready", doc["bootMessage"]
        assert doc["devcontainer"] == {"state": "running", "message": "",
                                       "policy": "generated", "removed": []}
        repo = spec.workspaces / "demo"
        assert (repo / "README.md").read_text() == "hello\n"
        assert REPO_TOKEN not in (repo / ".git" / "config").read_text()
        assert handler.seen_auth[0] == ""  # git asked, then answered via GIT_ASKPASS
        assert handler.expected in handler.seen_auth
        argv = (root / "devcontainer.argv").read_text().splitlines()
        assert argv[:3] == ["up", "--workspace-folder", str(repo)]
        generated = spec.state / "devcontainer" / "devcontainer.json"
        assert argv[argv.index("--config") + 1] == str(generated)
        assert json.loads(generated.read_text())["runArgs"] == ["--network=host"]
        for text in (spec.logs(), "\n".join(argv)):
            assert REPO_TOKEN not in text
    finally:
        spec.stop()
        git_server.shutdown()
        git_server.server_close()
