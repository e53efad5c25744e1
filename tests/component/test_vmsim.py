"""Simulated VMs: the Hetzner emulator plus the VM simulator run the real loader, agent,
Caddy and stand-ins on 127.0.0.N, and the test plays the operator against them."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hcloud
import httpx
import pytest
from hcloud.images import Image
from hcloud.server_types import ServerType
from hcloud.servers import BoundServer

from agentspaces.agent_client import AgentClient, AgentError, AgentUnreachable
from agentspaces.api.types import WorkspaceClass, WorkspaceRef, WorkspaceSpec
from agentspaces.pki import AgentCredentials, generate
from agentspaces.sandbox.hetzner import HetznerEmulator
from agentspaces.sandbox.vmsim import ROLES, VmInfo, VmSimulator, hook_endpoint
from agentspaces.sandbox.vmsim_ips import LoopbackPool, PoolExhausted
from agentspaces.sandbox.vmsim_layout import (
    AGENT_UNIT,
    local_command,
    parse_unit,
    simulated_agent_config,
)
from agentspaces.vmconfig.agent_bundle import load_agent_bundle
from agentspaces.vmconfig.bake import render_bake_user_data
from agentspaces.vmconfig.userdata import read_write_files, render_user_data
from agentspaces_vm.password_hash import hash_password
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)

TOKEN = "vmsim-test-token"
PASSWORD = "s3cret-pass"
HASH = hash_password(PASSWORD, log_n=10)
AUTH = ("dev", PASSWORD)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the loopback pool ----------------------------------------------------------------

def test_pool_starts_at_10_and_reuses_only_released_addresses() -> None:
    pool = LoopbackPool()
    first, second = pool(), pool()
    assert (first, second) == ("127.0.0.10", "127.0.0.11")
    assert pool() == "127.0.0.12"
    assert pool.release("127.0.0.11") is True
    assert pool.release("127.0.0.11") is False  # not handed out any more
    assert pool.release("10.0.0.1") is False
    assert pool() == "127.0.0.11"  # freed, so handed out again
    assert pool() == "127.0.0.13"
    assert pool.in_use() == {"127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13"}


def test_pool_is_thread_safe_and_reports_exhaustion_like_hetzner() -> None:
    pool = LoopbackPool("127.0.0.10", "127.0.0.209")  # 200 addresses
    got: list[str] = []
    lock = threading.Lock()

    def grab() -> None:
        for _ in range(25):
            address = pool()
            with lock:
                got.append(address)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(got) == 200 and len(set(got)) == 200
    assert "127.0.0.1" not in got
    with pytest.raises(PoolExhausted) as raised:
        pool()
    assert raised.value.status == 412 and raised.value.code == "resource_unavailable"


@pytest.mark.parametrize("first,last", [("127.0.0.1", "127.0.0.20"), ("127.0.0.0", "127.0.0.5"),
                                        ("10.0.0.10", "10.0.0.20"), ("127.0.0.9", "127.0.0.3")])
def test_pool_rejects_unusable_ranges(first: str, last: str) -> None:
    with pytest.raises(ValueError):
        LoopbackPool(first, last)


# -- workspace inputs -------------------------------------------------------------------

@dataclass(frozen=True)
class Workspace:
    ref: WorkspaceRef
    host: str
    creds: AgentCredentials
    klass: WorkspaceClass
    user_data: str


def make_workspace(name: str, http_port: int, agent_port: int) -> Workspace:
    klass = WorkspaceClass.from_body({"metadata": {"name": "sandbox"}, "spec": {
        "hetzner": {"tokenSecretRef": {"name": "hcloud"}},
        "dns": {"zoneName": "example.test", "tokenSecretRef": {"name": "cloudflare"}},
        "storage": {"endpoint": "https://r2.example.test", "bucket": "backups",
                    "credentialsSecretRef": {"name": "r2"}},
        "encryption": {"keySecretRef": {"name": "class-key"}},
        # Port 80 needs root: the sandbox class picks a high HTTP port.
        "tls": {"mode": "none", "httpPort": http_port},
        "agent": {"port": agent_port},
    }})
    spec = WorkspaceSpec.from_spec({"className": "sandbox",
                                    "repository": {"url": f"https://github.com/example/{name}"}},
                                   klass)
    ref = WorkspaceRef(namespace="default", name=name, uid=str(uuid.uuid4()), generation=1)
    host = f"{name}-default-1a2b3c.example.test"
    creds = generate(host, datetime.now(UTC))
    user_data = render_user_data(ref, spec, klass, host=host, agent_credentials=creds)
    return Workspace(ref, host, creds, klass, user_data)


# -- pure parts: the agent.json rewrite and the unit command --------------------------------

def test_agent_json_rewrite_changes_only_what_a_local_process_needs(tmp_path: Path) -> None:
    ws = make_workspace("pure", http_port=18080, agent_port=9443)
    files = read_write_files(ws.user_data)
    rendered = json.loads(files["/etc/agentspaces/agent.json"].content)
    sim = simulated_agent_config(rendered, "127.0.0.42", tmp_path)

    assert sim["simulate"] is True and rendered["simulate"] is False
    assert sim["listen"] == {"api": "127.0.0.42:9443", "local": "127.0.0.42:9180"}
    assert sim["caddy"]["admin"] == "127.0.0.42:2019" and sim["caddy"]["bind"] == "127.0.0.42"
    assert sim["tls"] == {"cert": str(tmp_path / "etc/agentspaces/tls.crt"),
                          "key": str(tmp_path / "etc/agentspaces/tls.key")}
    assert sim["paths"] == {"workspaces": str(tmp_path / "workspaces"),
                            "state": str(tmp_path / "var/lib/agentspaces")}
    assert sim["portDiscovery"]["addresses"] == ["127.0.0.42"]
    assert sim["claudeSeedDir"] == str(tmp_path / "etc/agentspaces/claude")
    # Everything else exactly as rendered (secrets arrive later over the API).
    assert sim["tokenSha256"] == ws.creds.token_sha256 == rendered["tokenSha256"]
    for field in ("tlsMode", "httpPort", "httpsPort", "uiPort"):
        assert sim["caddy"][field] == rendered["caddy"][field]
    untouched = set(rendered) - {"simulate", "listen", "caddy", "tls", "paths"}
    assert {k: sim[k] for k in untouched} == {k: rendered[k] for k in untouched}


def test_a_pool_agent_json_maps_too_with_its_ssh_keys_inside_the_root(tmp_path: Path) -> None:
    """A warm-pool server's agent.json has no workspace keys; its claim's SSH keys go to
    sshAuthorizedKeysFile, which must not be the host's /root."""
    ws = make_workspace("pool", http_port=18080, agent_port=9443)
    rendered = json.loads(read_write_files(ws.user_data)["/etc/agentspaces/agent.json"].content)
    pool = {k: v for k, v in rendered.items()
            if k not in ("workspace", "host", "publicPorts", "repository", "claudeCode")}
    pool["pool"] = {"class": "sandbox"}
    sim = simulated_agent_config(pool, "127.0.0.42", tmp_path)
    assert sim["sshAuthorizedKeysFile"] == str(tmp_path / "root/.ssh/authorized_keys")
    assert sim["claudeSeedDir"] == str(tmp_path / "etc/agentspaces/claude")
    assert sim["pool"] == {"class": "sandbox"} and "workspace" not in sim
    assert sim["listen"]["api"] == "127.0.0.42:9443"
    custom = simulated_agent_config({**pool, "sshAuthorizedKeysFile": "/home/dev/.ssh/keys"},
                                    "127.0.0.42", tmp_path)
    assert custom["sshAuthorizedKeysFile"] == str(tmp_path / "home/dev/.ssh/keys")
    assert "sshAuthorizedKeysFile" not in simulated_agent_config(rendered, "127.0.0.42",
                                                                 tmp_path)


def test_loader_command_is_the_units_exec_start(tmp_path: Path) -> None:
    ws = make_workspace("unit", http_port=18080, agent_port=9443)
    unit = parse_unit(read_write_files(ws.user_data)[AGENT_UNIT].content.decode(), AGENT_UNIT)
    assert unit.argv[0] == "/usr/bin/python3" and unit.env == {"PYTHONUNBUFFERED": "1"}
    assert local_command(unit, tmp_path, "/x/python") == [
        "/x/python", str(tmp_path / "opt/agentspaces/agent-loader.py"),
        "--config", str(tmp_path / "etc/agentspaces/agent.json"),
        "--bundle", str(tmp_path / "opt/agentspaces/agent.pyz"),
        "--sha256-file", str(tmp_path / "etc/agentspaces/agent.pyz.sha256")]


# -- the sandbox ----------------------------------------------------------------------------

@dataclass
class Sandbox:
    emulator: HetznerEmulator
    sim: VmSimulator
    client: hcloud.Client

    def create(self, name: str, user_data: str | None) -> tuple[BoundServer, VmInfo]:
        server = self.client.servers.create(name=name, server_type=ServerType(name="cx23"),
                                            image=Image(name="ubuntu-24.04"),
                                            user_data=user_data).server
        server_id = server.id
        assert server_id is not None
        info = wait_for(lambda: self.sim.vm(server_id), 15, f"simulated VM of {name}")
        return server, info

    def delete(self, server: BoundServer) -> None:
        server_id = server.id
        assert server_id is not None
        self.client.servers.delete(server)
        wait_for(lambda: self.sim.vm(server_id) is None, 30, f"VM {server_id} torn down",
                 interval=0.1)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    sim = VmSimulator(tmp_path / "state")
    emulator = HetznerEmulator(TOKEN, boot_seconds=0.1, delete_seconds=0.1,
                               action_seconds=0.05)
    sim.attach(emulator)
    emulator.start()
    try:
        yield Sandbox(emulator, sim,
                      hcloud.Client(token=TOKEN, api_endpoint=emulator.url, poll_interval=0.05))
    finally:
        sim.stop_all()
        emulator.stop()
        sim.stop_all()


def live_processes(ids: set[int]) -> list[tuple[int, str]]:
    """(pid, state) of every non-zombie process whose pid or process group is in `ids`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        pid, state, pgrp = int(entry.name), fields[0], int(fields[2])
        if state != "Z" and (pid in ids or pgrp in ids):
            found.append((pid, state))
    return found


def assert_torn_down(sandbox: Sandbox, info: VmInfo) -> None:
    assert set(info.pids) == set(ROLES)
    assert live_processes(set(info.pids.values())) == []
    assert not info.root.exists()
    assert info.ip not in sandbox.sim.ip_pool.in_use()


async def poll(call: Callable[[], Awaitable[dict[str, Any]]],
               ready: Callable[[dict[str, Any]], bool], seconds: float,
               what: str) -> dict[str, Any]:
    """Call until `ready(answer)`; an unreachable or restarting agent is retried."""
    deadline = asyncio.get_running_loop().time() + seconds
    last: object = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            last = await call()
            if ready(last):  # type: ignore[arg-type]
                return last  # type: ignore[return-value]
        except (AgentUnreachable, AgentError) as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}; last: {last!r}")


async def http_status(client: httpx.AsyncClient, url: str, host: str,
                      auth: tuple[str, str] | None = None) -> int | None:
    try:
        return (await client.get(url, headers={"Host": host}, auth=auth)).status_code
    except httpx.TransportError:
        return None


async def play_operator(ws: Workspace, info: VmInfo, secret_file: str) -> None:
    """What the operator does with a fresh VM, then the user's view through Caddy."""
    bundle = load_agent_bundle()
    base = f"https://{info.ip}:{ws.klass.agent_port}"
    async with AgentClient(base, ws.creds.token, ws.creds.cert_pem, timeout=5) as agent:
        loader = await poll(agent.status, lambda d: d.get("bootStage") == "awaiting-agent",
                            30, "the loader")
        assert loader["version"] == "loader" and loader["simulated"] is True
        assert loader["agentBundle"]["sha256"] == bundle.sha256
        with pytest.raises(AgentError) as not_yet:  # nothing but status before the bundle
            await agent.start(None)
        assert not_yet.value.status == 503

        assert (await agent.put_agent_bundle(bundle.data))["sha256"] == bundle.sha256
        real = await poll(agent.status, lambda d: d.get("version") not in (None, "loader"),
                          30, "the real agent")
        assert real["simulated"] is True and real["bootStage"] == "waiting-for-start"

        delivered = await agent.put_secrets(version="v1", basic_auth_username="dev",
                                            basic_auth_scrypt_hash=HASH)
        assert delivered["version"] == "v1"
        assert (await agent.start(None))["bootStage"] in ("waiting-for-start", "cloning",
                                                          "starting-devcontainer", "ready")
        ready = await poll(agent.status, lambda d: d.get("bootStage") == "ready", 30,
                           "bootStage ready")
        assert ready["simulated"] is True
        assert ready["devcontainer"]["state"] == "simulated"
        assert ready["secrets"]["version"] == "v1"

        (info.workspace_dir / "hello.txt").write_text(secret_file)
        discovered = await poll(agent.status, lambda d: 3000 in d.get("ports", []), 30,
                                "port 3000 discovered")
        # Only this VM's own ports: the agent's, Caddy's and CloudCLI's are never routed.
        assert discovered["ports"] == [3000]

    caddy = f"http://{info.ip}:{ws.klass.tls.http_port}"
    async with httpx.AsyncClient(timeout=5, trust_env=False) as web:
        unauthorized = await poll_http(web, f"{caddy}/", ws.host, None, 401)
        assert unauthorized == 401
        ui = await web.get(f"{caddy}/", headers={"Host": ws.host}, auth=AUTH)
        assert ui.status_code == 200 and "CloudCLI (simulated)" in ui.text
        assert ws.ref.name in ui.text
        port_host = f"3000.{ws.host}"
        await poll_http(web, f"{caddy}/hello.txt", port_host, AUTH, 200)
        served = await web.get(f"{caddy}/hello.txt", headers={"Host": port_host}, auth=AUTH)
        assert served.text == secret_file
        assert await http_status(web, f"{caddy}/hello.txt", port_host) == 401


async def poll_http(web: httpx.AsyncClient, url: str, host: str,
                    auth: tuple[str, str] | None, want: int, seconds: float = 30) -> int:
    deadline = asyncio.get_running_loop().time() + seconds
    last = None
    while asyncio.get_running_loop().time() < deadline:
        last = await http_status(web, url, host, auth)
        if last == want:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{host}{url}: wanted {want} within {seconds}s, last {last}")


async def test_two_simulated_vms_boot_serve_and_are_torn_down(sandbox: Sandbox) -> None:
    # Both classes use the same ports: each VM has an address of its own.
    http_port, agent_port = free_port(), free_port()
    alpha = make_workspace("alpha", http_port, agent_port)
    beta = make_workspace("beta", http_port, agent_port)
    server_a, info_a = sandbox.create("alpha", alpha.user_data)
    server_b, info_b = sandbox.create("beta", beta.user_data)

    assert info_a.ip != info_b.ip
    for server, info in ((server_a, info_a), (server_b, info_b)):
        assert info.ip is not None and info.ip.startswith("127.") and info.ip != "127.0.0.1"
        assert server.public_net is not None
        assert server.public_net.ipv4 is not None and server.public_net.ipv4.ip == info.ip
        assert info.errors == () and set(info.pids) == set(ROLES)
        assert info.server_id == server.id
        assert info.root == sandbox.sim.state_dir / "vms" / str(server.id)
        assert sandbox.sim.workspace_dir(info.server_id) == info.root / "workspaces"
        config = json.loads((info.root / "etc/agentspaces/agent.json").read_text())
        assert config["simulate"] is True and config["caddy"]["bind"] == info.ip
        assert (info.root / "var/lib/agentspaces/bootstrap").read_text().strip() == "done"
    assert {info_a.ip, info_b.ip} <= sandbox.sim.ip_pool.in_use()

    await asyncio.gather(play_operator(alpha, info_a, "alpha's file\n"),
                         play_operator(beta, info_b, "beta's file\n"))

    # Both at the same time, each with its own workspace and host.
    async with httpx.AsyncClient(timeout=5, trust_env=False) as web:
        for ws, info, text in ((alpha, info_a, "alpha's file\n"), (beta, info_b, "beta's file\n")):
            got = await web.get(f"http://{info.ip}:{http_port}/hello.txt",
                                headers={"Host": f"3000.{ws.host}"}, auth=AUTH)
            assert got.status_code == 200 and got.text == text
        crossed = await web.get(f"http://{info_b.ip}:{http_port}/",
                                headers={"Host": alpha.host}, auth=AUTH)
        assert crossed.status_code == 404
    # Claude Code's hooks reach the agent's local listener on the VM's address.
    url, hook_token = hook_endpoint(sandbox.sim.state_dir, info_a.server_id)
    assert url == f"http://{info_a.ip}:9180/hooks"
    event = {"hook_event_name": "SessionStart", "session_id": "s1", "cwd": "/workspaces"}
    async with httpx.AsyncClient(timeout=5, trust_env=False) as web:
        accepted = await web.post(url, json=event,
                                  headers={"Authorization": f"Bearer {hook_token}"})
        refused = await web.post(url, json=event, headers={"Authorization": "Bearer nope"})
    assert (accepted.status_code, refused.status_code) == (204, 401)

    current = sandbox.sim.vm(info_a.server_id)
    assert current is not None and current.ok
    for role in ROLES:
        assert current.logs[role].is_file()
    assert "started agent" in current.logs["vmsim"].read_text()
    assert "agentspaces-loader" in current.logs["agent"].read_text()

    sandbox.delete(server_a)
    assert_torn_down(sandbox, info_a)
    async with httpx.AsyncClient(timeout=5, trust_env=False) as web:  # beta lives on
        got = await web.get(f"http://{info_b.ip}:{http_port}/hello.txt",
                            headers={"Host": f"3000.{beta.host}"}, auth=AUTH)
        assert got.status_code == 200 and got.text == "beta's file\n"

    sandbox.delete(server_b)
    assert_torn_down(sandbox, info_b)

    # The released address is handed out again, and its ports are free for the new VM.
    gamma = make_workspace("gamma", http_port, agent_port)
    _, info_c = sandbox.create("gamma", gamma.user_data)
    assert info_c.ip == min(info_a.ip, info_b.ip, key=lambda ip: int(ip.rsplit(".", 1)[1]))
    async with AgentClient(f"https://{info_c.ip}:{agent_port}", gamma.creds.token,
                           gamma.creds.cert_pem, timeout=5) as agent:
        loader = await poll(agent.status, lambda d: d.get("bootStage") == "awaiting-agent",
                            30, "gamma's loader")
        assert loader["version"] == "loader"

    sandbox.sim.stop_all()
    assert_torn_down(sandbox, info_c)
    assert sandbox.sim.vms == {}
    sandbox.sim.stop_all()  # idempotent


def test_unbootable_servers_are_reported_not_raised(sandbox: Sandbox) -> None:
    bare, bare_info = sandbox.create("bare", None)
    assert bare_info.pids == {} and any("no user-data" in e for e in bare_info.errors)
    foreign, foreign_info = sandbox.create("foreign", "#cloud-config\nwrite_files: []\n")
    assert foreign_info.pids == {}
    assert any("/etc/agentspaces/agent.json" in e for e in foreign_info.errors)
    assert "ERROR" in foreign_info.logs["vmsim"].read_text()
    assert not foreign_info.ok

    # The emulator's hook thread survived: a real VM still boots afterwards.
    ws = make_workspace("after", free_port(), free_port())
    _, info = sandbox.create("after", ws.user_data)
    assert info.errors == () and set(info.pids) == set(ROLES)

    for server, dead in ((bare, bare_info), (foreign, foreign_info)):
        sandbox.delete(server)
        assert not dead.root.exists() and dead.ip not in sandbox.sim.ip_pool.in_use()


async def test_missing_caddy_is_reported_and_the_rest_still_runs(tmp_path: Path) -> None:
    sim = VmSimulator(tmp_path / "state", caddy_binary=str(tmp_path / "no-such-caddy"))
    emulator = HetznerEmulator(TOKEN, boot_seconds=0.1, delete_seconds=0.1)
    sim.attach(emulator)
    emulator.start()
    try:
        sandbox = Sandbox(emulator, sim, hcloud.Client(token=TOKEN, api_endpoint=emulator.url,
                                                        poll_interval=0.05))
        ws = make_workspace("nocaddy", free_port(), free_port())
        _, info = sandbox.create("nocaddy", ws.user_data)
        assert "caddy" not in info.pids and {"agent", "cloudcli", "devserver"} <= set(info.pids)
        assert any("cannot start caddy" in e for e in info.errors)
        async with AgentClient(f"https://{info.ip}:{ws.klass.agent_port}", ws.creds.token,
                               ws.creds.cert_pem, timeout=5) as agent:
            loader = await poll(agent.status,
                                lambda d: d.get("bootStage") == "awaiting-agent", 30, "loader")
        assert loader["simulated"] is True
        pids = set(info.pids.values())
    finally:
        sim.stop_all()
        emulator.stop()
    assert live_processes(pids) == [] and not info.root.exists()
    assert os.listdir(tmp_path / "state" / "vms") == []


# -- workspace-image builders (bake mode) --------------------------------------------------

def bake_timers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("vmsim-bake-") and t.is_alive()]


def bake_state(sandbox: Sandbox, server_id: int) -> str | None:
    vm = sandbox.sim.vm(server_id)
    return vm.bake if vm is not None else None


def server_status(sandbox: Sandbox, server_id: int) -> str | None:
    return sandbox.client.servers.get_by_id(server_id).status


def test_a_builder_bakes_then_powers_itself_off(sandbox: Sandbox) -> None:
    sandbox.sim.bake_seconds = 1.0
    started = time.monotonic()
    server, info = sandbox.create("builder", render_bake_user_data("debian-13"))
    server_id = info.server_id
    assert info.bake == "baking" and info.pids == {} and info.errors == ()
    assert server_status(sandbox, server_id) in ("initializing", "running")
    wait_for(lambda: server_status(sandbox, server_id) == "off", 15, "the builder off",
             interval=0.05)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 6.0
    done = sandbox.sim.vm(server_id)
    assert done is not None and done.bake == "baked" and done.pids == {}
    assert done.errors == ()
    notes = done.logs["vmsim"].read_text()
    assert "baking a debian-13 workspace image" in notes and "baked; powered off" in notes
    assert not (done.root / "etc/agentspaces/agent.json").exists()  # nothing laid out
    assert bake_timers() == []

    sandbox.delete(server)
    assert not info.root.exists() and info.ip not in sandbox.sim.ip_pool.in_use()


def test_a_failed_bake_leaves_the_builder_running(sandbox: Sandbox) -> None:
    sandbox.sim.bake_seconds = 0.3
    sandbox.sim.bake_fails = True
    server, info = sandbox.create("failing", render_bake_user_data("debian-13"))
    wait_for(lambda: bake_state(sandbox, info.server_id) == "failed", 15, "the bake to fail",
             interval=0.05)
    failed = sandbox.sim.vm(info.server_id)
    assert failed is not None
    assert any("no power-off" in e for e in failed.errors) and failed.pids == {}
    time.sleep(0.5)
    assert server_status(sandbox, info.server_id) == "running"
    assert bake_timers() == []
    sandbox.delete(server)
    assert not info.root.exists()


def test_stop_all_during_a_bake_cancels_its_timer(sandbox: Sandbox) -> None:
    sandbox.sim.bake_seconds = 60.0
    _, info = sandbox.create("slow", render_bake_user_data("debian-13"))
    assert info.bake == "baking" and len(bake_timers()) == 1
    sandbox.sim.stop_all()
    assert bake_timers() == []
    assert sandbox.sim.vms == {} and not info.root.exists()
    wait_for(lambda: server_status(sandbox, info.server_id) == "running", 15, "running")
    time.sleep(0.3)
    assert server_status(sandbox, info.server_id) == "running"  # nobody powered it off
