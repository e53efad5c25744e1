"""The operator's AgentClient against a real agent server (in-process, real TLS)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agentspaces.agent_client import (
    AgentAuthError,
    AgentCertificateMismatch,
    AgentClient,
    AgentError,
    AgentRateLimited,
    AgentUnreachable,
)
from agentspaces.pki import generate
from agentspaces_vm.agent import Agent
from agentspaces_vm.config import parse_config
from agentspaces_vm.contracts import BackupPlan, BootStage, JobState, RestorePlan
from agentspaces_vm.password_hash import hash_password
from agentspaces_vm.server import build_servers
from agentspaces_vm.share_links import new_key
from agentspaces_vm.templates import load_template
from tests.component.agent_harness import HOST, make_agent

pytestmark = pytest.mark.timeout(60)
HASH = hash_password("pw", log_n=10)


KEY = bytes(range(32))
RESTORE_PLAN = RestorePlan(backup_id="20261127T041900Z", workspace_uid="uid-1",
                           object_key="backups/demo/0.agsp", key_id="dk-1", key=KEY,
                           url="https://r2.example.test/x?sig=1", size=10, sha256="ab" * 32)
BACKUP_PLAN = BackupPlan(backup_id="b-1", workspace_uid="uid-1", object_key="backups/demo/1",
                         key_id="dk-1", key=KEY, part_size=5 << 20,
                         part_urls=("https://r2.example.test/p1?sig=1",))


class RestoreBroken(Exception):
    reason = "BackupCorrupt"


@dataclass
class Calls:
    restores: list[tuple[dict[str, Any], Path]] = field(default_factory=list)
    backups: list[dict[str, Any]] = field(default_factory=list)
    release_backup: threading.Event = field(default_factory=threading.Event)
    restore_error: Exception | None = None


@dataclass
class Served:
    agent: Agent
    url: str
    token: str
    cert_pem: str
    calls: Calls

    def client(self, token: str | None = None, cert_pem: str | None = None,
               timeout: float = 5.0) -> AgentClient:
        return AgentClient(self.url, token or self.token, cert_pem or self.cert_pem, timeout)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    spec = make_agent(tmp_path)
    calls = Calls()

    def restore(plan: dict[str, Any], root: Path) -> None:
        calls.restores.append((plan, root))
        if calls.restore_error is not None:
            raise calls.restore_error

    def backup(plan: dict[str, Any], root: Path, progress: Callable[[Any], None]) -> Any:
        calls.backups.append(plan)
        progress({"bytes": 10})
        assert calls.release_backup.wait(20)
        return {"object": "backups/demo/1.agsp", "size": 1234}

    agent = Agent(parse_config(spec.config), caddy_template=load_template("caddy.json"),
                  restore_fn=restore, backup_fn=backup)
    api, local = build_servers(agent)
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1},
                                daemon=True) for s in (api, local)]
    for t in threads:
        t.start()
    agent.start()
    try:
        yield Served(agent, spec.base_url, spec.creds.token, spec.creds.cert_pem, calls)
    finally:
        calls.release_backup.set()
        for s in (api, local):
            s.shutdown()
            s.server_close()
        agent.stop()


async def wait_status(client: AgentClient, check: Callable[[dict[str, Any]], bool],
                      attempts: int = 200) -> dict[str, Any]:
    for _ in range(attempts):
        doc = await client.status()
        if check(doc):
            return doc
        await asyncio.sleep(0.05)
    raise AssertionError(f"status never matched; last {doc}")


async def test_round_trip_of_every_call(served: Served) -> None:
    async with served.client() as c:
        assert (await c.status())["bootStage"] == "waiting-for-start"
        applied = await c.put_secrets(version="7", basic_auth_username="dev",
                                      basic_auth_scrypt_hash=HASH, anthropic_api_key="sk-1",
                                      share_link_key=new_key(), session_key=new_key())
        assert applied["version"] == "7"
        config = await c.put_config([8080, 3000], link_ports=[5173])
        assert config["publicPorts"] == [3000, 8080] and config["linkPorts"] == [5173]
        plan = RESTORE_PLAN
        assert (await c.start(plan))["bootStage"] in ("waiting-for-start", "restoring",
                                                      "starting-devcontainer", "ready")
        doc = await wait_status(c, lambda d: d["bootStage"] == "ready")
        assert doc["restore"] == {"state": "succeeded", "error": None, "reason": None}
        assert doc["secrets"] == {"version": "7", "shareLinks": True}
        assert served.calls.restores == [(plan.to_json(),
                                          served.agent.config.paths.workspaces)]
        # A second start is a no-op: the restore is not repeated.
        assert (await c.start(None)) == {"bootStage": "ready"}
        assert len(served.calls.restores) == 1

        backup_id = await c.start_backup(BACKUP_PLAN)
        assert backup_id == "b-1"
        assert served.calls.backups == [BACKUP_PLAN.to_json()]
        with pytest.raises(AgentError) as busy:
            await c.start_backup(replace(BACKUP_PLAN, backup_id="b-2"))
        assert busy.value.status == 409
        running = await c.backup_status()
        assert running.state is JobState.RUNNING and running.backup_id == "b-1"
        assert (await c.status())["backup"] == {"state": "running", "id": "b-1"}
        typed = await c.agent_status()
        assert typed.backup_state is JobState.RUNNING and typed.secrets_version == "7"
        assert typed.boot_stage is BootStage.READY and typed.ports == ()
        served.calls.release_backup.set()
        for _ in range(200):
            done = await c.backup_status()
            if done.state is not JobState.RUNNING:
                break
            await asyncio.sleep(0.05)
        assert done.state is JobState.SUCCEEDED
        assert done.result == {"object": "backups/demo/1.agsp", "size": 1234}
        assert done.progress == {"bytes": 10}


async def test_failed_restore_is_reported_and_final(served: Served) -> None:
    served.calls.restore_error = RestoreBroken(
        "chunk 3 failed authentication (https://r2.example.test/obj?X-Amz-Signature=abc)")
    async with served.client() as c:
        await c.start(RESTORE_PLAN)
        doc = await wait_status(c, lambda d: d["bootStage"] == "failed")
        assert doc["restore"]["state"] == "failed"
        assert doc["restore"]["reason"] == "BackupCorrupt"
        assert "chunk 3" in doc["restore"]["error"]
        assert "X-Amz-Signature" not in doc["restore"]["error"]  # presigned URL scrubbed
        with pytest.raises(AgentError) as final:
            await c.start(None)
        assert final.value.status == 409


async def test_wrong_token_and_rate_limit_errors_never_show_the_token(served: Served) -> None:
    secret = "definitely-not-the-token-9f8e7d"
    async with served.client(token=secret) as c:
        for _ in range(11):
            with pytest.raises(AgentAuthError) as denied:
                await c.status()
            assert denied.value.status == 401
            assert secret not in str(denied.value) and secret not in repr(c)
        with pytest.raises(AgentRateLimited) as limited:
            await c.status()
        assert limited.value.status == 429
        assert limited.value.retry_after is not None and 1 <= limited.value.retry_after <= 60
        assert secret not in str(limited.value)


async def test_a_different_certificate_is_rejected(served: Served) -> None:
    other = generate(HOST, datetime.now(UTC))
    async with served.client(cert_pem=other.cert_pem) as c:
        with pytest.raises(AgentCertificateMismatch) as err:
            await c.status()
    assert served.token not in str(err.value)


async def test_unreachable_agents(tmp_path: Path) -> None:
    creds = generate(HOST, datetime.now(UTC))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with AgentClient(f"https://127.0.0.1:{port}", creds.token, creds.cert_pem, 2) as c:
        with pytest.raises(AgentUnreachable):
            await c.status()
    # A server that accepts but never speaks: the timeout turns into AgentUnreachable.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        async with AgentClient(f"https://127.0.0.1:{port}", creds.token, creds.cert_pem,
                               0.5) as c:
            with pytest.raises(AgentUnreachable) as err:
                await c.status()
    assert creds.token not in str(err.value)


async def test_the_bundles_connection_is_closed_after_its_answer(tmp_path: Path) -> None:
    """A connection that carried the agent bundle keeps TLS buffers of its size while it
    lives: the client closes it, and the next request opens another."""
    creds = generate(HOST, datetime.now(UTC))
    (tmp_path / "tls.crt").write_text(creds.cert_pem)
    (tmp_path / "tls.key").write_text(creds.key_pem)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    connections: list[list[str]] = []
    closed_by_client: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index, requests = len(connections), []
        connections.append(requests)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode().split("\r\n")
                requests.append(" ".join(lines[0].split()[:2]))
                length = next((int(line.split(":")[1]) for line in lines
                               if line.lower().startswith("content-length:")), 0)
                await reader.readexactly(length)
                code = "202 Accepted" if lines[0].startswith("PUT") else "200 OK"
                writer.write(f"HTTP/1.1 {code}\r\ncontent-type: application/json\r\n"
                             "content-length: 2\r\n\r\n{}".encode())
                await writer.drain()
        except asyncio.IncompleteReadError:
            closed_by_client.append(index)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        async with AgentClient(f"https://127.0.0.1:{port}", creds.token, creds.cert_pem,
                               5) as client:
            assert await client.put_agent_bundle(bytes(300_000)) == {}
            await client.status()
            await client.status()
            await asyncio.sleep(0.2)
            assert connections == [["PUT /v1/agent"], ["GET /v1/status", "GET /v1/status"]]
            assert closed_by_client == [0]
    finally:
        server.close()
        await server.wait_closed()
