"""Attacks on the web front (real Caddy + the real agent on loopback) and their failure.

- reserved ports published as public ports (3001 would put CloudCLI online unguarded);
- cross-site WebSocket hijacking and CSRF with ambient credentials, from another
  workspace's (same-site) page;
- password guessing that burns the VM's CPU.

CloudCLI is a recording stand-in: a request that reaches it is a request that got in.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import statistics
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentspaces.agent_client import pinned_context
from agentspaces_vm.password_hash import hash_password
from agentspaces_vm.webauth import COOKIE, FAILED_CHECKS_PER_WINDOW, LOGIN_PATH
from tests.component.agent_harness import HOST, AgentProcess, CaddyProcess, make_agent
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

PASSWORD = "s3cret-pass"
USER = "dev"
OTHER_WORKSPACE = "http://8080.mallory-default-9f8e7d.example.test"


class _Recording(BaseHTTPRequestHandler):
    """Records every request; answers WebSocket upgrades with 101, the rest with 200."""

    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append({"method": self.command, "path": self.path, "body": body,
                          "headers": {k.lower(): v for k, v in self.headers.items()}})
        if (self.headers.get("Upgrade") or "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.close_connection = True
            return
        out = json.dumps({"server": "cloudcli", "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = _any

    def log_message(self, format: str, *args: Any) -> None:
        pass


class RecordingUpstream:
    def __init__(self, host: str, port: int) -> None:
        self.seen: list[dict[str, Any]] = []
        handler = type("Handler", (_Recording,), {"seen": self.seen})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Front:
    agent: AgentProcess
    caddy: CaddyProcess
    ui: RecordingUpstream

    @property
    def base(self) -> str:
        return f"http://{self.agent.addr}:{self.agent.ports['http']}"

    @property
    def origin(self) -> str:
        """What a browser on the workspace's own page sends as Origin."""
        return f"http://{self.host}"

    @property
    def host(self) -> str:
        return f"{HOST}:{self.agent.ports['http']}"

    def client(self, source: str | None = None) -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=source) if source else None
        return httpx.Client(base_url=self.base, transport=transport, timeout=30,
                            follow_redirects=False, trust_env=False)

    def request(self, method: str, path: str = "/", host: str | None = None,
                source: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Host": host or self.host, **kwargs.pop("headers", {})}
        with self.client(source) as c:
            return c.request(method, path, headers=headers, **kwargs)

    def status(self, host: str, headers: dict[str, str] | None = None) -> int | None:
        """For waiting: the status of GET / on `host`, or None when Caddy dropped the
        connection (it may, while it swaps in a new config)."""
        try:
            return self.request("GET", host=host, headers=headers or {}).status_code
        except httpx.TransportError:
            return None

    def api(self, method: str, path: str, doc: Any) -> httpx.Response:
        with httpx.Client(verify=pinned_context(self.agent.creds.cert_pem), timeout=30) as c:
            return c.request(method, f"{self.agent.base_url}{path}", json=doc,
                             headers={"Authorization": f"Bearer {self.agent.creds.token}"})

    def deliver(self, scrypt_hash: str) -> None:
        resp = self.api("PUT", "/v1/secrets", {
            "version": scrypt_hash[-8:], "basicAuth": {"username": USER,
                                                       "scryptHash": scrypt_hash}})
        assert resp.status_code == 200, resp.text
        assert resp.json()["caddyLoaded"] is True

    def websocket(self, headers: dict[str, str], host: str | None = None) -> str:
        """Send a WebSocket handshake by hand; the response's status line."""
        lines = ["GET /shell HTTP/1.1", f"Host: {host or self.host}", "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode()
        with socket.create_connection((self.agent.addr, self.agent.ports["http"]), 10) as s:
            s.sendall(raw)
            return s.makefile("rb").readline().decode().strip()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def another_loopback(avoid: str) -> str:
    for _ in range(100):
        addr = f"127.0.{random.randint(1, 254)}.{random.randint(2, 254)}"
        if addr != avoid:
            return addr
    raise AssertionError("no other loopback address")


@pytest.fixture
def front(tmp_path: Path) -> Iterator[Front]:
    agent = make_agent(tmp_path, tls_mode="none")
    ports = agent.ports
    # Every port the VM itself uses, asked for as a public port.
    agent.config["publicPorts"] = [ports["ui"], ports["local"], ports["admin"], ports["api"],
                                   ports["http"], 22]
    caddy = CaddyProcess(tmp_path, agent.config["caddy"]["admin"])
    ui = RecordingUpstream(agent.addr, ports["ui"])
    try:
        caddy.start()
        agent.start()
        front = Front(agent, caddy, ui)
        wait_for(lambda: front.status(front.host) == 503, 20, "the agent's routes in Caddy")
        yield front
    finally:
        agent.stop()
        ui.close()
        caddy.stop()


def test_reserved_ports_never_get_a_route_whatever_the_agent_is_told(front: Front) -> None:
    front.deliver(hash_password(PASSWORD, log_n=10))
    ports = front.agent.ports
    reserved = [ports["ui"], ports["local"], ports["admin"], ports["api"], ports["http"], 22]
    asked = front.api("PUT", "/v1/config", {"publicPorts": [*reserved, 4321]})
    assert asked.status_code == 200
    assert asked.json()["publicPorts"] == [4321]
    assert asked.json()["ignoredPorts"] == sorted(reserved)

    def unrouted() -> bool:
        for port in reserved:
            resp = front.request("GET", "/", host=f"{port}.{HOST}:{ports['http']}")
            assert resp.status_code == 404 and resp.text == "unknown host\n", port
            # Nor would Caddy get a certificate for the name.
            ask = httpx.get(f"{front.agent.local_url}/ask",
                            params={"domain": f"{port}.{HOST}"})
            assert ask.status_code == 403, port
        return True

    assert unrouted()
    # A tampered settings file is filtered as well when the agent restarts.
    front.agent.stop()
    (front.agent.state / "public-ports.json").write_text(json.dumps([*reserved, 4321]))
    front.agent.start()
    public = f"4321.{HOST}:{ports['http']}"
    wait_for(lambda: front.status(public) == 502, 20,
             "the restarted agent's routes (4321 routed, nothing listening)")
    assert unrouted()
    assert not front.ui.seen  # CloudCLI was never reached without a password


def test_cross_origin_websocket_with_valid_credentials_is_refused(front: Front) -> None:
    front.deliver(hash_password(PASSWORD, log_n=10))
    creds = basic(USER, PASSWORD)
    for attacker in ({"Origin": OTHER_WORKSPACE},
                     {"Origin": OTHER_WORKSPACE, "Sec-Fetch-Site": "same-site"},
                     {"Origin": "null"},
                     {"Origin": f"https://{front.host}"}):  # another scheme: another origin
        assert front.websocket({**creds, **attacker}).startswith("HTTP/1.1 403"), attacker
    assert not front.ui.seen
    # The same handshake from the workspace's own page goes through.
    assert front.websocket({**creds, "Origin": front.origin}).startswith("HTTP/1.1 101")
    [seen] = front.ui.seen
    assert seen["path"] == "/shell" and "authorization" not in seen["headers"]


def test_cross_site_form_posts_are_refused_before_the_ide(front: Front) -> None:
    front.deliver(hash_password(PASSWORD, log_n=10))
    creds = basic(USER, PASSWORD)
    for attacker in ({"Origin": OTHER_WORKSPACE},
                     {"Sec-Fetch-Site": "same-site"},
                     {"Sec-Fetch-Site": "cross-site", "Origin": front.origin}):
        resp = front.request("POST", "/api/shell", headers={**creds, **attacker},
                             content=b"cmd=id")
        assert resp.status_code == 403, attacker
        assert resp.text == "cross-origin request refused\n"
    assert not front.ui.seen
    ok = front.request("POST", "/api/shell", content=b"cmd=id",
                       headers={**creds, "Origin": front.origin,
                                "Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 200
    [seen] = front.ui.seen
    assert seen["method"] == "POST" and seen["body"] == b"cmd=id"


def test_browsers_sign_in_to_a_host_only_strict_session(front: Front) -> None:
    front.deliver(hash_password(PASSWORD, log_n=10))
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    page = front.request("GET", "/projects?x=1", headers=browser)
    assert page.status_code == 401
    assert "www-authenticate" not in page.headers  # no basic prompt a browser would cache
    assert 'action="/.agentspaces/login"' in page.text
    assert 'name="next" value="/projects?x=1"' in page.text
    script = front.request("GET", "/api/projects")
    assert script.status_code == 401 and script.headers["www-authenticate"].startswith("Basic")
    # A page's own fetch without a session gets no challenge: the browser would prompt.
    fetch = front.request("GET", "/api/projects",
                          headers={"Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"})
    assert fetch.status_code == 401 and "www-authenticate" not in fetch.headers

    form = {"password": PASSWORD, "next": "/projects?x=1"}
    cross = front.request("POST", LOGIN_PATH, data=form,
                          headers={"Origin": OTHER_WORKSPACE, "Sec-Fetch-Site": "same-site"})
    assert cross.status_code == 403  # no login CSRF either
    wrong = front.request("POST", LOGIN_PATH, data={**form, "password": "nope"},
                          headers={"Origin": front.origin})
    assert wrong.status_code == 401 and "Wrong password." in wrong.text
    login = front.request("POST", LOGIN_PATH, data=form, headers={"Origin": front.origin})
    assert login.status_code == 303 and login.headers["location"] == "/projects?x=1"
    cookie = login.headers["set-cookie"]
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert attributes == {"path", "max-age", "httponly", "samesite"}  # no Domain: host-only
    assert "SameSite=Strict" in cookie
    name, _, value = cookie.split(";")[0].partition("=")
    assert name == COOKIE
    session = {"Cookie": f"theme=dark; {COOKIE}={value}"}
    assert not front.ui.seen

    ide = front.request("GET", "/projects", headers={**browser, **session})
    assert ide.status_code == 200
    # Another workspace's page cannot frame the IDE and trick clicks into it.
    assert ide.headers["content-security-policy"] == "frame-ancestors 'self'"
    post = front.request("POST", "/api/save", content=b"data",
                         headers={**session, "Origin": front.origin})
    assert post.status_code == 200
    assert front.websocket({**session, "Origin": front.origin}).startswith("HTTP/1.1 101")
    # The IDE sees neither the session nor any credential; its own cookies stay.
    assert len(front.ui.seen) == 3
    for seen in front.ui.seen:
        assert COOKIE not in seen["headers"].get("cookie", "")
        assert "theme=dark" in seen["headers"]["cookie"]
        assert "authorization" not in seen["headers"]
    # Cross-site use of the session is refused like any other credential.
    assert front.websocket({**session, "Origin": OTHER_WORKSPACE}).startswith("HTTP/1.1 403")
    # The session is for this host only (were it sent to a port's host, it would not work).
    with socket.socket() as sock:
        sock.bind((front.agent.addr, 0))
        sock.listen()
        port_host = f"{sock.getsockname()[1]}.{front.host}"
        wait_for(lambda: front.status(port_host) == 401, 15, "the listening port's route")
        assert front.request("GET", host=port_host, headers=session).status_code == 401
    # A new password ends every session.
    front.deliver(hash_password("rotated-" + PASSWORD, log_n=10))
    assert front.request("GET", "/projects", headers=session).status_code == 401


def test_the_agent_answers_auth_questions_only_for_caddy(front: Front) -> None:
    """The container shares the host network and reaches the agent's local listener: it
    must not mint sessions or guess passwords there with a made-up client address."""
    front.deliver(hash_password(PASSWORD, log_n=10))
    local = front.agent.local_url
    spoofed = {"Host": front.host, "X-Agentspaces-Client": "198.51.100.7",
               "X-Agentspaces-Front-Key": "guessed"}
    direct_login = httpx.post(f"{local}/web/login", data={"password": PASSWORD},
                              headers=spoofed)
    assert direct_login.status_code == 403 and "set-cookie" not in direct_login.headers
    direct_check = httpx.get(f"{local}/web/auth", headers={**spoofed, **basic(USER, PASSWORD)})
    assert direct_check.status_code == 403
    # Through Caddy the same password works.
    assert front.request("GET", headers=basic(USER, PASSWORD)).status_code == 200


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _burst(front: Front, source: str, headers: dict[str, str], count: int
           ) -> tuple[float, list[int]]:
    """`count` concurrent requests (one connection each) from `source`: the agent's CPU
    time they cost, and their status codes. CPU time, not wall time: the attack burns
    CPU, and CPU time does not stretch when other work shares the machine."""
    transport = httpx.HTTPTransport(local_address=source,
                                    limits=httpx.Limits(max_connections=count))
    assert front.agent.proc is not None
    pid = front.agent.proc.pid
    with httpx.Client(base_url=front.base, transport=transport, timeout=60,
                      trust_env=False) as client, \
            ThreadPoolExecutor(max_workers=count) as pool:

        def one(_: int) -> int:
            return client.get("/", headers={"Host": front.host, **headers}).status_code

        before = _cpu_seconds(pid)
        codes = list(pool.map(one, range(count)))
        return _cpu_seconds(pid) - before, codes


def test_password_guessing_cannot_burn_the_cpu(front: Front) -> None:
    # A deliberately costly hash, so hashing work shows clearly against request overhead.
    front.deliver(hash_password(PASSWORD, log_n=16))
    limit = FAILED_CHECKS_PER_WINDOW
    burst = 40
    attacker, guesser, user, prober = (another_loopback(front.agent.addr) for _ in range(4))
    assert len({attacker, guesser, user, prober}) == 4
    # What one wrong password costs the agent (a lone request, so one check).
    probes = [_burst(front, prober, basic(USER, "probe"), 1) for _ in range(3)]
    assert [codes for _, codes in probes] == [[401]] * 3
    one_check = statistics.median(spent for spent, _ in probes)
    assert one_check > 0.05  # the hash is costly enough to be seen

    # The user at the attacker's address signed in before (basic auth, now cached).
    good = basic(USER, PASSWORD)
    assert front.request("GET", "/", source=attacker, headers=good).status_code == 200

    # What a burst costs the agent when it needs no password check (no credentials).
    overhead, codes = _burst(front, attacker, {}, burst)
    assert codes == [401] * burst
    # Unknown usernames cost no hashing either (with Caddy's bcrypt: ~1 s each).
    spent, codes = _burst(front, attacker, basic("root", "x"), burst)
    assert set(codes) <= {401, 429} and codes.count(401) <= limit
    assert codes.count(429) >= burst - limit
    assert spent < overhead + 2 * one_check, (spent, overhead, one_check)

    # Wrong passwords: at most `limit` checks run; the rest get 429 before any hashing.
    spent, codes = _burst(front, guesser, basic(USER, "guess"), burst)
    assert set(codes) <= {401, 429} and codes.count(401) <= limit
    assert codes.count(429) >= burst - limit
    # Unlimited, the burst would cost `burst` checks; the slack covers the checks being
    # a little dearer under contention than the lone one measured above.
    assert spent < overhead + (limit + 5) * one_check, (spent, overhead, one_check)

    # Blocked addresses are refused before any hashing, even with the right password...
    blocked = front.request("GET", "/", source=guesser, headers=basic(USER, "next guess"))
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    assert front.request("POST", LOGIN_PATH, source=guesser, data={"password": PASSWORD},
                         headers={"Origin": front.origin}).status_code == 429
    # Claiming another address does not help: Caddy states the client address itself.
    spoofed = {"X-Agentspaces-Client": "198.51.100.77", "X-Forwarded-For": "198.51.100.78"}
    assert front.request("GET", "/", source=guesser,
                         headers={**basic(USER, "guess"), **spoofed}).status_code == 429
    # ...but valid, already verified credentials are never refused for others' failures,
    assert front.request("GET", "/", source=attacker, headers=good).status_code == 200
    # and a correct password from another address is checked and accepted.
    login = front.request("POST", LOGIN_PATH, source=user, data={"password": PASSWORD},
                          headers={"Origin": front.origin})
    assert login.status_code == 303


def test_a_burst_of_signed_in_requests_all_get_through(front: Front) -> None:
    """A dev server page loads many modules at once (HTTP/2 streams): every one is a
    forward-auth call to the agent, and none may fail because the agent's local
    listener ran out of connections."""
    front.deliver(hash_password(PASSWORD))
    user = another_loopback(front.agent.addr)
    assert front.request("GET", source=user, headers=basic(USER, PASSWORD)).status_code == 200
    _, codes = _burst(front, user, basic(USER, PASSWORD), 200)
    assert codes == [200] * 200
