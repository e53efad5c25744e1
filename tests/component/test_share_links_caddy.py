"""Share links through the real Caddy and the real agent on loopback.

Two dev servers on ports with visibility link and one on a private port record every
request that reaches them: a request that reaches one is a request that got in, and
what it carried is what a workspace program would see (and could log).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentspaces.agent_client import pinned_context
from agentspaces_vm import share_links
from agentspaces_vm.password_hash import hash_password
from agentspaces_vm.webauth import COOKIE, SHARE_COOKIE, SessionSigner
from tests.component.agent_harness import HOST, AgentProcess, CaddyProcess, make_agent
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

PASSWORD = "s3cret-pass"
USER = "dev"
HASH = hash_password(PASSWORD, log_n=10)
PARAM = share_links.QUERY_PARAM


class _Recording(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]
    name = "app"

    def do_GET(self) -> None:
        self.seen.append({"path": self.path,
                          "headers": {k.lower(): v for k, v in self.headers.items()}})
        out = json.dumps({"server": self.name, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class DevServer:
    """A recording program on (host, any free port), stopped by `close`."""

    def __init__(self, host: str, name: str) -> None:
        self.seen: list[dict[str, Any]] = []
        handler = type("Handler", (_Recording,), {"seen": self.seen, "name": name})
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
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
    ide: DevServer
    link_a: DevServer
    link_b: DevServer
    private: DevServer

    @property
    def http_port(self) -> int:
        return self.agent.ports["http"]

    def host(self, port: int | None = None) -> str:
        """As a browser sends it (the sandbox's Caddy is on a port of its own)."""
        name = f"{port}.{HOST}" if port else HOST
        return f"{name}:{self.http_port}"

    def get(self, path: str, port: int | None = None, cookies: str | None = None,
            auth: tuple[str, str] | None = None) -> httpx.Response:
        headers = {"Host": self.host(port), "Sec-Fetch-Mode": "navigate",
                   "Accept": "text/html"}
        if cookies:
            headers["Cookie"] = cookies
        with httpx.Client(base_url=f"http://{self.agent.addr}:{self.http_port}", timeout=30,
                          follow_redirects=False, trust_env=False) as client:
            return client.get(path, headers=headers, auth=auth)

    def status(self, port: int | None = None) -> int | None:
        try:
            return self.get("/", port).status_code
        except httpx.TransportError:
            return None  # Caddy may drop a connection while it swaps configs

    def api(self, method: str, path: str, doc: Any) -> httpx.Response:
        with httpx.Client(verify=pinned_context(self.agent.creds.cert_pem), timeout=30) as c:
            return c.request(method, f"{self.agent.base_url}{path}", json=doc,
                             headers={"Authorization": f"Bearer {self.agent.creds.token}"})

    def deliver(self, version: str, link_key: str, session_key: str) -> None:
        """What the operator's agent step sends: the config, then the secrets."""
        config = self.api("PUT", "/v1/config", {
            "publicPorts": [], "linkPorts": [self.link_a.port, self.link_b.port]})
        assert config.status_code == 200, config.text
        assert config.json()["linkPorts"] == sorted([self.link_a.port, self.link_b.port])
        resp = self.api("PUT", "/v1/secrets", {
            "version": version, "basicAuth": {"username": USER, "scryptHash": HASH},
            "shareLinkKey": link_key, "sessionKey": session_key})
        assert resp.status_code == 200, resp.text
        assert resp.json()["caddyLoaded"] is True


@pytest.fixture
def front(tmp_path: Path) -> Iterator[Front]:
    agent = make_agent(tmp_path, tls_mode="none")
    caddy = CaddyProcess(tmp_path, agent.config["caddy"]["admin"])
    servers: list[DevServer] = []
    try:
        caddy.start()
        # The IDE stand-in on CloudCLI's port; the others are discovered.
        ide = DevServer.__new__(DevServer)
        ide.seen = []
        handler = type("Handler", (_Recording,), {"seen": ide.seen, "name": "cloudcli"})
        ide.httpd = ThreadingHTTPServer((agent.addr, agent.ports["ui"]), handler)
        ide.port = agent.ports["ui"]
        ide.thread = threading.Thread(target=ide.httpd.serve_forever,
                                      kwargs={"poll_interval": 0.1}, daemon=True)
        ide.thread.start()
        servers.append(ide)
        for name in ("link-a", "link-b", "private"):
            servers.append(DevServer(agent.addr, name))
        agent.start()
        f = Front(agent, caddy, *servers)
        wait_for(lambda: f.status() == 503, 20, "the agent's routes in Caddy")
        yield f
    finally:
        agent.stop()
        for server in servers:
            server.close()
        caddy.stop()


def link_path(key: str, port: int, *, lasts: float = 3600, path: str = "/page?x=1",
              may_wake: bool = False) -> tuple[str, str]:
    raw = share_links.decode_key(key)
    assert raw is not None
    token = share_links.mint(raw, HOST, port, int(time.time() + lasts), may_wake=may_wake)
    sep = "&" if "?" in path else "?"
    return f"{path}{sep}{PARAM}={token}", token


def everything_seen(*servers: DevServer) -> str:
    return json.dumps([s.seen for s in servers])


def test_share_links_open_only_their_port_and_never_reach_the_program(front: Front) -> None:
    key_1, session_1 = share_links.new_key(), share_links.new_key()
    front.deliver("v1", key_1, session_1)
    a, b, private = front.link_a.port, front.link_b.port, front.private.port
    for port in (a, b, private):
        wait_for(lambda p=port: front.status(p) == 401, 20, f"the route of port {port}")

    # A link for port A: 303 to the same URL without the token, with the cookie.
    path, token = link_path(key_1, a)
    followed = front.get(path, a)
    assert followed.status_code == 303
    assert followed.headers["location"] == "/page?x=1"
    set_cookie = followed.headers["set-cookie"]
    assert set_cookie.startswith(f"{SHARE_COOKIE}={token}; Path=/; Max-Age=")
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    assert "Domain" not in set_cookie
    assert front.link_a.seen == []  # the request with the token never got in

    # The cookie opens port A without the password; the program sees neither the
    # cookie nor the token, and the user's other cookies reach it untouched.
    share_cookie = f"{SHARE_COOKIE}={token}"
    opened = front.get("/page?x=1", a, cookies=f"theme=dark; {share_cookie}")
    assert opened.status_code == 200 and opened.json()["server"] == "link-a"
    seen = front.link_a.seen[-1]
    assert seen["path"] == "/page?x=1" and seen["headers"]["cookie"].startswith("theme=dark")
    assert SHARE_COOKIE not in seen["headers"]["cookie"]

    # Port A's link opens neither port B, the private port nor the IDE.
    for port in (b, private, None):
        wrong, _ = link_path(key_1, a)
        assert front.get(wrong, port).status_code == 403, port
        assert front.get("/", port, cookies=share_cookie).status_code == 401, port
    assert front.link_b.seen == [] and front.private.seen == [] and front.ide.seen == []
    # A link made for the private port is refused there (its visibility is not link).
    for_private, _ = link_path(key_1, private)
    refused = front.get(for_private, private)
    assert refused.status_code == 403 and refused.text == "forbidden\n"
    assert front.private.seen == []

    # An expired link, and a tampered one: 403 without a cookie or a reason.
    expired, _ = link_path(key_1, b, lasts=-5)
    tampered, _ = link_path(key_1, b)
    tampered = tampered[:-3] + ("A" if tampered[-3] != "A" else "B") + tampered[-2:]
    for bad in (expired, tampered):
        answer = front.get(bad, b)
        assert answer.status_code == 403 and answer.text == "forbidden\n"
        assert "set-cookie" not in answer.headers
    assert front.link_b.seen == []

    # The password still opens a link port.
    with_password = front.get("/", b, auth=(USER, PASSWORD))
    assert with_password.status_code == 200 and with_password.json()["server"] == "link-b"
    assert front.link_b.seen[-1]["headers"].get("authorization") is None

    # A new key (the operator's re-delivery after a revoke) ends the cookie and the link.
    key_2 = share_links.new_key()
    front.deliver("v2", key_2, session_1)
    assert front.get("/page?x=1", a, cookies=share_cookie).status_code == 401
    old_link, _ = link_path(key_1, a)
    assert front.get(old_link, a).status_code == 403
    new_link, new_token = link_path(key_2, a)
    assert front.get(new_link, a).status_code == 303
    assert front.get("/", a, cookies=f"{SHARE_COOKIE}={new_token}").status_code == 200

    # No token or cookie value ever reached a program.
    everything = everything_seen(front.ide, front.link_a, front.link_b, front.private)
    assert PARAM not in everything and token not in everything and new_token not in everything


def test_a_session_signed_with_the_delivered_key_is_accepted(front: Front) -> None:
    """The wake gateway signs sessions with the workspace's session key; the VM takes
    them (same host-only cookie), and a new key ends them."""
    key, session_key = share_links.new_key(), share_links.new_key()
    front.deliver("v1", key, session_key)
    raw = share_links.decode_key(session_key)
    assert raw is not None
    session = SessionSigner(raw).issue(front.host(), HASH, time.time())
    cookie = f"{COOKIE}={session}"
    wait_for(lambda: front.get("/", cookies=cookie).status_code == 200, 15,
             "the IDE with the gateway's session")
    assert SessionSigner(b"another key" * 3).issue(front.host(), HASH, time.time()) != session
    forged = SessionSigner(b"another key" * 3).issue(front.host(), HASH, time.time())
    assert front.get("/", cookies=f"{COOKIE}={forged}").status_code == 401
    # A session from the agent's own login form works as well, and is signed the same.
    login = httpx.post(f"http://{front.agent.addr}:{front.http_port}/.agentspaces/login",
                       headers={"Host": front.host(), "Origin": f"http://{front.host()}"},
                       data={"password": PASSWORD, "next": "/"}, timeout=30)
    assert login.status_code == 303
    own = login.headers["set-cookie"].split(";")[0]
    assert SessionSigner(raw).valid(own.partition("=")[2], front.host(), HASH, time.time())
    front.deliver("v2", key, share_links.new_key())
    assert front.get("/", cookies=cookie).status_code == 401
    seen = everything_seen(front.ide)
    assert session not in seen and base64.b64encode(PASSWORD.encode()).decode() not in seen
