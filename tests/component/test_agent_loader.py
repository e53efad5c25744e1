"""The stage-0 agent loader (cloudinit/agent_loader.py) as a real process on loopback:
it waits for the bundle behind the agent's TLS certificate and token, accepts only the
expected bytes, then execs the bundle in its own process. A warm-pool server's loader
first waits for its claim (PUT /v1/claim), which names the workspace."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agentspaces import pki
from agentspaces.agent_client import AgentClient, AgentError
from agentspaces.lifeline import die_with_parent
from agentspaces.vmconfig.agent_bundle import zip_files
from agentspaces_vm.contracts import BootStage
from tests.component.slow_clients import SlowClient, all_closed, poke_all, raw_request
from tests.support.waiting import wait_for

LOADER = Path(__file__).resolve().parents[2] / "cloudinit" / "agent_loader.py"
HOST = "demo-default-1a2b3c.example.com"
MAX_BUNDLE = 64 * 1024 * 1024


def fake_agent(marker: Path) -> bytes:
    """A zipapp that records its argv in `marker`, standing in for the agent."""
    main = ("import json, sys\n"
            f"open({str(marker)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    return zip_files({"__main__.py": main.encode()})


@dataclass
class Loader:
    process: subprocess.Popen[str]
    port: int
    token: str
    context: ssl.SSLContext
    bundle_path: Path
    marker: Path
    config_path: Path
    cert_pem: str = ""

    def request(self, method: str, path: str, body: bytes | None = None,
                token: str | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context,
                                           timeout=10)
        try:
            headers = {"Authorization": f"Bearer {token or self.token}"}
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data or b"{}"), dict(response.getheaders())
        finally:
            conn.close()


def _start(tmp_path: Path, bundle: bytes, *, preinstalled: bool,
           limits: dict[str, float] | None = None,
           extra: dict[str, Any] | None = None) -> Loader:
    creds = pki.generate(HOST, datetime.now(UTC))
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text(creds.cert_pem)
    key.write_text(creds.key_pem)
    config = tmp_path / "agent.json"
    config.write_text(json.dumps({
        "listen": {"api": "127.0.0.1:0"}, "tls": {"cert": str(cert), "key": str(key)},
        "tokenSha256": creds.token_sha256, "simulate": True,
        **({"apiLimits": limits} if limits else {}), **(extra or {})}))
    digest = tmp_path / "agent.pyz.sha256"
    digest.write_text(hashlib.sha256(bundle).hexdigest() + "\n")
    bundle_path = tmp_path / "opt" / "agent.pyz"
    if preinstalled:
        bundle_path.parent.mkdir()
        bundle_path.write_bytes(bundle)
    process = subprocess.Popen(
        [sys.executable, str(LOADER), "--config", str(config), "--bundle", str(bundle_path),
         "--sha256-file", str(digest)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
    context = ssl.create_default_context(cadata=creds.cert_pem)  # pinned, as the operator
    context.check_hostname = False
    return Loader(process, 0, creds.token, context, bundle_path, tmp_path / "ran.json", config,
                  creds.cert_pem)


def _wait_for_port(loader: Loader) -> int:
    assert loader.process.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = loader.process.stdout.readline()
        found = re.search(r"waiting for (?:the agent bundle|a claim) on 127\.0\.0\.1:(\d+)",
                          line)
        if found:
            return int(found.group(1))
        if not line and loader.process.poll() is not None:
            break
    raise AssertionError(f"loader did not start: {loader.process.stderr.read()}")  # type: ignore[union-attr]


def _stop(loader: Loader) -> None:
    if loader.process.poll() is None:
        loader.process.kill()
    loader.process.wait(timeout=10)
    for stream in (loader.process.stdout, loader.process.stderr):
        if stream:
            stream.close()


@pytest.fixture
def waiting_loader(tmp_path: Path) -> Iterator[tuple[Loader, bytes]]:
    bundle = fake_agent(tmp_path / "ran.json")
    loader = _start(tmp_path, bundle, preinstalled=False)
    try:
        loader.port = _wait_for_port(loader)
        yield loader, bundle
    finally:
        _stop(loader)


PER_ADDRESS = 2
HEADER_SECONDS = 3.0


@pytest.fixture
def limited_loader(tmp_path: Path) -> Iterator[Loader]:
    """A waiting loader with short limits, so deadlines pass in seconds."""
    loader = _start(tmp_path, fake_agent(tmp_path / "ran.json"), preinstalled=False,
                    limits={"perAddress": PER_ADDRESS, "headerSeconds": HEADER_SECONDS})
    try:
        loader.port = _wait_for_port(loader)
        yield loader
    finally:
        _stop(loader)


def test_status_says_it_awaits_the_agent(waiting_loader: tuple[Loader, bytes]) -> None:
    loader, bundle = waiting_loader
    status, body, _ = loader.request("GET", "/v1/status")
    assert status == 200
    assert body["bootStage"] == "awaiting-agent"
    assert body["agentBundle"] == {"sha256": hashlib.sha256(bundle).hexdigest()}
    assert body["simulated"] is True
    status, body, headers = loader.request("POST", "/v1/start", b"{}")
    assert (status, body["error"], headers["Retry-After"]) == (503, "agent-not-installed", "5")


def test_wrong_token_is_refused_then_throttled(waiting_loader: tuple[Loader, bytes]) -> None:
    loader, _ = waiting_loader
    for _ in range(10):
        status, body, _ = loader.request("GET", "/v1/status", token="wrong")
        assert (status, body) == (401, {"error": "unauthorized"})
    status, _, headers = loader.request("GET", "/v1/status", token="wrong")
    assert status == 429 and headers["Retry-After"] == "60"
    # The failures at this address (the operator's, say) never lock out the valid token.
    assert loader.request("GET", "/v1/status")[0] == 200


def test_an_unauthenticated_put_is_refused_before_its_body(
        waiting_loader: tuple[Loader, bytes]) -> None:
    loader, _ = waiting_loader
    for auth in ("Authorization: Bearer wrong\r\n", ""):
        head = (f"PUT /v1/agent HTTP/1.1\r\nHost: agent\r\n{auth}"
                f"Content-Length: {MAX_BUNDLE}\r\n\r\n").encode()
        # Only the head is sent: the answer and the close come without any body byte.
        answer, seconds = raw_request("127.0.0.41", "127.0.0.1", loader.port,
                                      loader.context, head)
        assert answer.startswith(b"HTTP/1.1 401 ") and b"unauthorized" in answer
        assert seconds < 2.0
    head = (f"PUT /v1/agent HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer "
            f"{loader.token}\r\nContent-Length: {MAX_BUNDLE + 1}\r\n\r\n").encode()
    answer, seconds = raw_request("127.0.0.41", "127.0.0.1", loader.port, loader.context,
                                  head)
    assert answer.startswith(b"HTTP/1.1 413 ") and seconds < 2.0


def test_slow_clients_cannot_hold_the_loader(limited_loader: Loader) -> None:
    loader, attacker = limited_loader, "127.0.0.42"
    head = b"GET /v1/status HTTP/1.1\r\nHost: agent\r\nX-Slow: " + b"a" * 200
    clients = [SlowClient.handshake(attacker, "127.0.0.1", loader.port),
               SlowClient.headers(attacker, "127.0.0.1", loader.port, loader.context, head)]
    extra = [SlowClient.handshake(attacker, "127.0.0.1", loader.port) for _ in range(2)]
    try:
        wait_for(lambda: all_closed(extra), 1.5, "the connections over the cap to close",
                 interval=0.05)
        assert poke_all(clients) == clients
        started = time.monotonic()
        assert loader.request("GET", "/v1/status")[0] == 200  # from 127.0.0.1
        assert time.monotonic() - started < 2.0
        # A byte every 0.3 s keeps neither the handshake nor the headers going.
        wait_for(lambda: all_closed(clients), HEADER_SECONDS + 3, "the header deadline",
                 interval=0.3)
        for client in clients:
            assert HEADER_SECONDS - 0.5 <= client.lifetime <= HEADER_SECONDS + 2.0
            assert client.sent >= 5
    finally:
        for client in clients + extra:
            client.close()


def test_only_the_expected_bundle_is_accepted_and_then_run(
        waiting_loader: tuple[Loader, bytes]) -> None:
    loader, bundle = waiting_loader
    status, body, _ = loader.request("PUT", "/v1/agent", bundle + b"tampered")
    assert (status, body["error"]) == (409, "bundle-mismatch")
    assert not loader.bundle_path.exists()
    status, body, _ = loader.request("PUT", "/v1/agent", bundle)
    assert (status, body) == (202, {"sha256": hashlib.sha256(bundle).hexdigest()})
    assert loader.process.wait(timeout=20) == 0
    assert loader.bundle_path.read_bytes() == bundle
    assert json.loads(loader.marker.read_text()) == ["--config", str(loader.config_path)]


def test_an_installed_bundle_runs_without_waiting(tmp_path: Path) -> None:
    bundle = fake_agent(tmp_path / "ran.json")
    loader = _start(tmp_path, bundle, preinstalled=True)
    try:
        assert loader.process.wait(timeout=20) == 0
        assert json.loads(loader.marker.read_text()) == ["--config", str(loader.config_path)]
    finally:
        if loader.process.poll() is None:
            loader.process.kill()
        loader.process.communicate(timeout=10)


def test_a_bad_digest_file_stops_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "digest").write_text("not-hex\n")
    result = subprocess.run(
        [sys.executable, str(LOADER), "--config", str(tmp_path / "agent.json"),
         "--bundle", str(tmp_path / "agent.pyz"), "--sha256-file", str(tmp_path / "digest")],
        capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert "expected 64 hex digits" in result.stderr


# -- warm-pool servers: the claim ------------------------------------------------------------

WORKSPACE = {"name": "demo", "namespace": "default", "uid": "uid-1"}
CLAIM_CONFIG = {"workspace": WORKSPACE, "host": HOST, "publicPorts": [3000],
                "repository": {"url": "https://example.com/r.git", "ref": None},
                "claudeCode": "native"}
SEED_TEXT = {"CLAUDE.md": "# Demo\n", "settings.json": '{"model": "x"}\n'}
KEY_A, KEY_B = "ssh-ed25519 AAAAC3Nza...A alice@x", "ssh-ed25519 AAAAC3Nza...B bob@x"


def _claim(config: dict[str, Any] | None = None, **parts: Any) -> bytes:
    return json.dumps({"config": config or CLAIM_CONFIG, **parts}).encode()


def _pool_config(tmp_path: Path) -> dict[str, Any]:
    return {"pool": {"class": "standard"},
            "sshAuthorizedKeysFile": str(tmp_path / "root" / ".ssh" / "authorized_keys")}


@pytest.fixture
def pool_loader(tmp_path: Path) -> Iterator[tuple[Loader, bytes]]:
    bundle = fake_agent(tmp_path / "ran.json")
    loader = _start(tmp_path, bundle, preinstalled=False, extra=_pool_config(tmp_path))
    try:
        loader.port = _wait_for_port(loader)
        yield loader, bundle
    finally:
        _stop(loader)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_pool_server_awaits_its_claim_and_takes_no_bundle_before(
        pool_loader: tuple[Loader, bytes]) -> None:
    loader, bundle = pool_loader
    status, body, _ = loader.request("GET", "/v1/status")
    assert status == 200
    assert body["bootStage"] == "awaiting-claim" and "claimed" in body["bootMessage"]
    assert body["pool"] == {"class": "standard"} and "workspace" not in body
    assert body["agentBundle"] == {"sha256": hashlib.sha256(bundle).hexdigest()}
    assert body["simulated"] is True and body["version"] == "loader"
    status, body, _ = loader.request("PUT", "/v1/agent", bundle)
    assert (status, body["error"]) == (409, "not-claimed")
    assert not loader.bundle_path.exists() and loader.process.poll() is None


@pytest.mark.parametrize(("doc", "field"), [
    ([], "body"),
    ({"config": CLAIM_CONFIG, "extra": 1}, "extra"),
    ({}, "config"),
    ({"config": {**CLAIM_CONFIG, "listen": {"api": "0.0.0.0:1"}}}, "config.listen"),
    ({"config": {**CLAIM_CONFIG, "tokenSha256": "ab" * 32}}, "config.tokenSha256"),
    ({"config": {**CLAIM_CONFIG, "pool": {}}}, "config.pool"),
    ({"config": {k: v for k, v in CLAIM_CONFIG.items() if k != "workspace"}},
     "config.workspace"),
    ({"config": {**CLAIM_CONFIG, "workspace": {**WORKSPACE, "uid": ""}}},
     "config.workspace.uid"),
    ({"config": {**CLAIM_CONFIG, "workspace": {"name": "a", "uid": "u"}}},
     "config.workspace.namespace"),
    ({"config": {**CLAIM_CONFIG, "host": ""}}, "config.host"),
    ({"config": {**CLAIM_CONFIG, "host": 7}}, "config.host"),
    ({"config": {**CLAIM_CONFIG, "workspace": "demo"}}, "config.workspace"),
    ({"config": CLAIM_CONFIG, "claudeSeeds": {"../x": "t"}}, "claudeSeeds.../x"),
    ({"config": CLAIM_CONFIG, "claudeSeeds": {"CLAUDE.md": 1}}, "claudeSeeds.CLAUDE.md"),
    ({"config": CLAIM_CONFIG, "claudeSeeds": []}, "claudeSeeds"),
    ({"config": CLAIM_CONFIG, "sshAuthorizedKeys": KEY_A}, "sshAuthorizedKeys"),
    ({"config": CLAIM_CONFIG, "sshAuthorizedKeys": [KEY_A, f"{KEY_B}\n{KEY_A}"]},
     "sshAuthorizedKeys[1]"),
    ({"config": CLAIM_CONFIG, "sshAuthorizedKeys": [" "]}, "sshAuthorizedKeys[0]"),
    ({"config": CLAIM_CONFIG, "sshAuthorizedKeys": [f"{KEY_A}\r"]}, "sshAuthorizedKeys[0]"),
    ({"config": CLAIM_CONFIG, "sshAuthorizedKeys": [7]}, "sshAuthorizedKeys[0]"),
])
def test_a_bad_claim_is_refused_naming_the_field(
        pool_loader: tuple[Loader, bytes], doc: object, field: str) -> None:
    loader, _ = pool_loader
    before = loader.config_path.read_bytes()
    status, body, _ = loader.request("PUT", "/v1/claim", json.dumps(doc).encode())
    assert (status, body["error"], body["field"]) == (400, "bad-claim", field)
    assert loader.config_path.read_bytes() == before
    assert not (loader.config_path.parent / "claude").exists()
    assert loader.request("GET", "/v1/status")[1]["bootStage"] == "awaiting-claim"


def test_a_claim_that_is_not_json_is_refused(pool_loader: tuple[Loader, bytes]) -> None:
    loader, _ = pool_loader
    for body in (b"{not json", b"[" * 100_000, "é".encode("latin-1")):
        status, answer, _ = loader.request("PUT", "/v1/claim", body)
        assert (status, answer["field"]) == (400, "body")


def test_an_unauthenticated_or_oversized_claim_is_refused_before_its_body(
        pool_loader: tuple[Loader, bytes]) -> None:
    loader, _ = pool_loader
    for auth in ("Authorization: Bearer wrong\r\n", ""):
        head = (f"PUT /v1/claim HTTP/1.1\r\nHost: agent\r\n{auth}"
                "Content-Length: 1000\r\n\r\n").encode()
        answer, seconds = raw_request("127.0.0.43", "127.0.0.1", loader.port,
                                      loader.context, head)
        assert answer.startswith(b"HTTP/1.1 401 ") and b"unauthorized" in answer
        assert seconds < 2.0
    head = (f"PUT /v1/claim HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer "
            f"{loader.token}\r\nContent-Length: {256 * 1024 + 1}\r\n\r\n").encode()
    answer, seconds = raw_request("127.0.0.43", "127.0.0.1", loader.port, loader.context,
                                  head)
    assert answer.startswith(b"HTTP/1.1 413 ") and seconds < 2.0
    assert loader.request("GET", "/v1/status")[1]["bootStage"] == "awaiting-claim"


def test_a_claim_writes_the_workspace_then_the_bundle_runs(
        tmp_path: Path, pool_loader: tuple[Loader, bytes]) -> None:
    loader, bundle = pool_loader
    pool_doc = json.loads(loader.config_path.read_text())
    keys = tmp_path / "root" / ".ssh" / "authorized_keys"
    keys.parent.mkdir(parents=True, mode=0o755)
    keys.write_text(f"{KEY_A}\n")
    claim = _claim(claudeSeeds=SEED_TEXT, sshAuthorizedKeys=[KEY_B, KEY_A, KEY_B])
    status, body, _ = loader.request("PUT", "/v1/claim", claim)
    assert (status, body) == (202, {"workspace": WORKSPACE})

    config = json.loads(loader.config_path.read_text())
    assert config == {**{k: v for k, v in pool_doc.items() if k != "pool"}, **CLAIM_CONFIG}
    assert _mode(loader.config_path) == 0o600
    for name, text in SEED_TEXT.items():
        seed = tmp_path / "claude" / name  # beside agent.json, as the agent reads them
        assert seed.read_text() == text and _mode(seed) == 0o644
    assert not (tmp_path / "claude" / "mcp.json").exists()
    assert keys.read_text() == f"{KEY_A}\n{KEY_B}\n"
    assert _mode(keys) == 0o600 and _mode(keys.parent) == 0o700
    assert not [p for p in tmp_path.rglob(".*.tmp")]

    status, body, _ = loader.request("GET", "/v1/status")
    assert (status, body["bootStage"], body["workspace"]) == (200, "awaiting-agent", WORKSPACE)
    assert "pool" not in body

    written = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in
               (loader.config_path, keys, tmp_path / "claude" / "CLAUDE.md")}
    other = {**CLAIM_CONFIG, "host": "other.example.com"}
    status, body, _ = loader.request("PUT", "/v1/claim",
                                     _claim(other, claudeSeeds={"CLAUDE.md": "changed"}))
    assert (status, body) == (200, {"workspace": WORKSPACE})  # the same uid: a repeat
    another = {**CLAIM_CONFIG, "workspace": {**WORKSPACE, "uid": "uid-2"}}
    status, body, _ = loader.request("PUT", "/v1/claim", _claim(another))
    assert (status, body) == (409, {"error": "already-claimed"})
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in written} == written

    status, body, _ = loader.request("PUT", "/v1/agent", bundle)
    assert (status, body) == (202, {"sha256": hashlib.sha256(bundle).hexdigest()})
    assert loader.process.wait(timeout=20) == 0
    assert json.loads(loader.marker.read_text()) == ["--config", str(loader.config_path)]


def test_a_pool_server_with_the_bundle_installed_runs_it_once_claimed(tmp_path: Path) -> None:
    bundle = fake_agent(tmp_path / "ran.json")
    loader = _start(tmp_path, bundle, preinstalled=True, extra=_pool_config(tmp_path))
    try:
        loader.port = _wait_for_port(loader)  # it serves, though the bundle is there
        assert loader.request("GET", "/v1/status")[1]["bootStage"] == "awaiting-claim"
        assert not loader.marker.exists()
        status, body, _ = loader.request("PUT", "/v1/claim", _claim())
        assert (status, body) == (202, {"workspace": WORKSPACE})
        assert loader.process.wait(timeout=20) == 0
        assert json.loads(loader.marker.read_text()) == ["--config", str(loader.config_path)]
        assert json.loads(loader.config_path.read_text())["workspace"] == WORKSPACE
        assert not (tmp_path / "root").exists()  # no keys given: nothing written
    finally:
        _stop(loader)


def test_only_a_pool_server_takes_a_claim(waiting_loader: tuple[Loader, bytes]) -> None:
    loader, _ = waiting_loader
    before = loader.config_path.read_bytes()
    status, body, _ = loader.request("PUT", "/v1/claim", _claim())
    assert (status, body) == (409, {"error": "not-a-pool-server"})
    assert loader.config_path.read_bytes() == before


def test_a_claimed_servers_restarted_loader_answers_the_same_claim(tmp_path: Path) -> None:
    """A loader restarted after the claim reads the claimed agent.json: the operator's
    repeat still gets 200, and it waits for the bundle without claim rules."""
    bundle = fake_agent(tmp_path / "ran.json")
    loader = _start(tmp_path, bundle, preinstalled=False, extra=CLAIM_CONFIG)
    try:
        loader.port = _wait_for_port(loader)
        status, body, _ = loader.request("GET", "/v1/status")
        assert (body["bootStage"], body["workspace"]) == ("awaiting-agent", WORKSPACE)
        status, body, _ = loader.request("PUT", "/v1/claim", _claim())
        assert (status, body) == (200, {"workspace": WORKSPACE})
        another = {**CLAIM_CONFIG, "workspace": {**WORKSPACE, "uid": "uid-2"}}
        status, body, _ = loader.request("PUT", "/v1/claim", _claim(another))
        assert (status, body) == (409, {"error": "not-a-pool-server"})
    finally:
        _stop(loader)


async def test_the_operators_client_claims_a_pool_server(
        pool_loader: tuple[Loader, bytes]) -> None:
    loader, bundle = pool_loader
    async with AgentClient(f"https://127.0.0.1:{loader.port}", loader.token,
                           loader.cert_pem) as client:
        status = await client.agent_status()
        assert (status.boot_stage, status.pool_class) == (BootStage.AWAITING_CLAIM, "standard")
        with pytest.raises(AgentError) as early:
            await client.put_agent_bundle(bundle)
        assert (early.value.status, early.value.body["error"]) == (409, "not-claimed")
        with pytest.raises(AgentError) as bad:
            await client.claim({"config": {"host": HOST}})
        assert (bad.value.status, bad.value.body["field"]) == (400, "config.workspace")
        claim = {"config": CLAIM_CONFIG, "claudeSeeds": SEED_TEXT, "sshAuthorizedKeys": [KEY_A]}
        assert await client.claim(claim) == {"workspace": WORKSPACE}  # 202
        assert await client.claim(claim) == {"workspace": WORKSPACE}  # 200, a repeat
        with pytest.raises(AgentError) as taken:
            await client.claim({**claim, "config": {
                **CLAIM_CONFIG, "workspace": {**WORKSPACE, "uid": "uid-2"}}})
        assert (taken.value.status, taken.value.body) == (409, {"error": "already-claimed"})
        status = await client.agent_status()
        assert (status.boot_stage, status.pool_class) == (BootStage.AWAITING_AGENT, None)
        await client.put_agent_bundle(bundle)
    assert loader.process.wait(timeout=20) == 0
