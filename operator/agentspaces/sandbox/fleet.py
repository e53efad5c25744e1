"""A fleet of simulated VMs in one process, for scale benchmarks.

The simulator (vmsim.py) runs the real agent and Caddy per server: faithful, but some
60 MB and four processes per VM. The fleet instead answers the operator's side of the
agent protocol (docs/agent-protocol.md) for every server the Hetzner emulator creates,
from one asyncio loop, so a thousand workspaces fit on two cores:

    fleet = FleetSimulator(state_dir).start()
    fleet.attach(emulator)        # hooks + loopback ip_allocator, as vmsim
    ...
    fleet.stop_all(); fleet.close()

Each server gets what the operator expects of a VM: its own loopback address, the
agent port from its user-data's agent.json, that file's TLS certificate (the pinned
one) and bearer-token hash. It plays the loader (a warm-pool server's awaiting-claim
until PUT /v1/claim, then awaiting-agent until PUT /v1/agent), then the agent: config
and secrets are kept, POST /v1/start makes it ready after `ready_seconds`, and GET
/v1/status long-polls with ETags as the agent does. It has no storage: backups and
saves answer 404 (an agent without them). Nothing here runs what the VM would run (no
clone, no devcontainer, no Caddy).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from agentspaces.vmconfig.layout import VM_LAYOUT
from agentspaces.vmconfig.userdata import read_write_files
from agentspaces_vm.contracts import (
    Activity,
    AgentStatus,
    BootStage,
    DevcontainerReport,
    RestoreReport,
    RestoreState,
)
from agentspaces_vm.status import MAX_WAIT_SECONDS, requested_etag, requested_wait

from .vm_backend import VmBackend
from .vmsim_ips import LoopbackPool
from .vmsim_layout import SimulationError, port_of

log = logging.getLogger(__name__)

AGENT_VERSION = "fleet"
START_TIMEOUT = 30.0  # for the loop to bind a VM's port or stop it


@dataclass(frozen=True)
class FleetVmInfo:
    server_id: int
    ip: str | None
    port: int | None
    stage: BootStage
    secrets_version: str | None
    errors: tuple[str, ...]


@dataclass
class _FleetVm:
    server_id: int
    name: str
    ip: str | None
    fleet: FleetSimulator
    port: int | None = None
    token_sha256: str = ""
    stage: BootStage = BootStage.AWAITING_AGENT
    pool_class: str | None = None  # a warm-pool server's (it awaits its claim first)
    workspace: dict[str, Any] | None = None  # agent.json's or the claim's
    secrets_version: str | None = None
    restored: bool = False
    booted: datetime = field(default_factory=lambda: datetime.now(UTC))
    generation: int = 0
    changed: asyncio.Event | None = None  # created on the loop
    site: web.TCPSite | None = None
    errors: list[str] = field(default_factory=list)

    def note(self, message: str, error: bool = False) -> None:
        if error:
            self.errors.append(message)
            log.warning("fleet VM %s (%s): %s", self.server_id, self.ip, message)

    def stop(self, term_seconds: float, kill_seconds: float) -> None:
        if self.site is not None:
            self.fleet.run(self._stop_site(), term_seconds + kill_seconds)

    async def _stop_site(self) -> None:
        site, self.site = self.site, None
        if self.ip and self.port:
            self.fleet.forget(self.ip, self.port)
        if site is not None:
            await site.stop()
        if self.changed is not None:
            self.changed.set()  # held long-polls answer now

    @property
    def etag(self) -> str:
        return f"{self.server_id}-{self.generation}"

    def bump(self) -> None:
        self.generation += 1
        if self.changed is not None:
            self.changed.set()
            self.changed = asyncio.Event()

    def status(self) -> AgentStatus:
        if self.stage is BootStage.AWAITING_CLAIM:
            return AgentStatus(version="loader", boot_stage=self.stage, simulated=True,
                               pool_class=self.pool_class)
        if self.stage is BootStage.AWAITING_AGENT:
            return AgentStatus(version="loader", boot_stage=self.stage, simulated=True)
        return AgentStatus(
            version=AGENT_VERSION, boot_stage=self.stage, simulated=True,
            devcontainer=DevcontainerReport(
                state="simulated" if self.stage is BootStage.READY else "absent",
                policy="generated"),
            # Nobody there since boot: a steady, idle report (the idle timeout decides).
            activity=Activity(agent_state="idle", agent_state_since=self.booted,
                              last_activity_time=self.booted),
            secrets_version=self.secrets_version,
            restore=RestoreReport(RestoreState.SUCCEEDED if self.restored
                                  else RestoreState.NONE),
            share_links=True)


class FleetSimulator(VmBackend[_FleetVm, FleetVmInfo]):
    kind = "fleet VM"
    subdir = "fleet"

    def __init__(self, state_dir: Path | None = None, *, ip_pool: LoopbackPool | None = None,
                 ready_seconds: float = 0.0) -> None:
        super().__init__(Path(state_dir or tempfile.gettempdir()),
                         ip_pool or LoopbackPool("127.1.0.10", "127.1.15.250"), 5.0, 5.0)
        self.ready_seconds = ready_seconds
        self.requests = 0
        """Agent API requests answered (all VMs)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleet",
                                        daemon=True)
        self._runner: web.AppRunner | None = None
        self._by_address: dict[tuple[str, int], _FleetVm] = {}

    # -- the loop ------------------------------------------------------------------

    def start(self) -> FleetSimulator:
        self._thread.start()
        app = web.Application(client_max_size=64 * 1024 * 1024)  # the agent bundle
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        self.run(self._runner.setup(), START_TIMEOUT)
        return self

    def close(self) -> None:
        """Stop serving (after stop_all) and end the loop's thread."""
        if self._runner is not None and self._thread.is_alive():
            self.run(self._runner.cleanup(), START_TIMEOUT)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT)
        self._loop.close()

    def __enter__(self) -> FleetSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        self.close()

    def run(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- VmBackend -----------------------------------------------------------------

    def _new_vm(self, server_id: int, name: str, ip: str | None, root: Path) -> _FleetVm:
        return _FleetVm(server_id, name, ip, self)

    def _info(self, vm: _FleetVm) -> FleetVmInfo:
        return FleetVmInfo(vm.server_id, vm.ip, vm.port, vm.stage, vm.secrets_version,
                           tuple(vm.errors))

    def _boot(self, vm: _FleetVm, user_data: object) -> None:
        if not vm.ip or not isinstance(user_data, str):
            vm.note("no loopback address or no user-data: nothing to serve", error=True)
            return
        try:
            cert, key, vm.token_sha256, vm.port, config = _agent_side(user_data)
        except (SimulationError, KeyError, ValueError, TypeError) as exc:
            vm.note(f"unusable user-data: {exc}", error=True)
            return
        pool, workspace = config.get("pool"), config.get("workspace")
        vm.workspace = workspace if isinstance(workspace, dict) else None
        if isinstance(pool, dict) and "workspace" not in config:
            vm.pool_class, vm.stage = str(pool.get("class")), BootStage.AWAITING_CLAIM
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="fleet-tls-") as tmp:
            (Path(tmp) / "tls.crt").write_bytes(cert)
            (Path(tmp) / "tls.key").write_bytes(key)
            context.load_cert_chain(Path(tmp) / "tls.crt", Path(tmp) / "tls.key")
        self.run(self._serve(vm, context), START_TIMEOUT)

    async def _serve(self, vm: _FleetVm, context: ssl.SSLContext) -> None:
        assert self._runner is not None and vm.ip and vm.port
        vm.changed = asyncio.Event()
        site = web.TCPSite(self._runner, vm.ip, vm.port, ssl_context=context,
                           reuse_address=True)
        await site.start()
        vm.site = site
        self._by_address[(vm.ip, vm.port)] = vm

    def forget(self, ip: str, port: int) -> None:
        self._by_address.pop((ip, port), None)

    # -- the agent API ---------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        vm = self._by_address.get((sockname[0], sockname[1])) if sockname else None
        if vm is None or vm.site is None:
            return web.json_response({"error": "no such VM"}, status=503)
        self.requests += 1
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not token or not hmac.compare_digest(
                hashlib.sha256(token.encode()).hexdigest(), vm.token_sha256):
            return web.json_response({"error": "unauthorized"}, status=401)
        route = (request.method, request.path)
        if route == ("GET", "/v1/status"):
            return await self._status(vm, request)
        body = await request.read()
        if route == ("PUT", "/v1/claim"):
            code, claimed = _claim(vm, body)
            if code == 202:
                vm.bump()
            return web.json_response(claimed, status=code)
        if vm.stage is BootStage.AWAITING_CLAIM:
            if route == ("PUT", "/v1/agent"):
                return web.json_response({"error": "not-claimed"}, status=409)
            return web.json_response({"error": "the agent is not running yet"}, status=503)
        if vm.stage is BootStage.AWAITING_AGENT:
            if route != ("PUT", "/v1/agent"):
                return web.json_response({"error": "the agent is not running yet"}, status=503)
            vm.stage = BootStage.WAITING_FOR_START
            vm.bump()
            return web.json_response({"sha256": hashlib.sha256(body).hexdigest()}, status=202)
        doc = json.loads(body) if body else {}
        answer: tuple[int, dict[str, Any]]
        if route == ("PUT", "/v1/config"):
            answer = 200, {"publicPorts": doc.get("publicPorts", []),
                           "linkPorts": doc.get("linkPorts", [])}
        elif route == ("PUT", "/v1/secrets"):
            vm.secrets_version = str(doc.get("version"))
            answer = 200, {"version": vm.secrets_version, "caddyLoaded": True}
        elif route == ("POST", "/v1/start") and vm.stage is BootStage.WAITING_FOR_START:
            vm.restored = doc.get("restore") is not None
            vm.stage = BootStage.RESTORING if vm.restored else BootStage.STARTING_DEVCONTAINER
            asyncio.get_running_loop().call_later(self.ready_seconds, self._ready, vm)
            answer = 202, {"bootStage": vm.stage.value}
        elif route == ("POST", "/v1/start"):
            answer = 409, {"error": "already started"}
        else:  # backups and saves: this agent has none
            answer = 404, {"error": "not found"}
        vm.bump()
        return web.json_response(answer[1], status=answer[0])

    def _ready(self, vm: _FleetVm) -> None:
        vm.stage = BootStage.READY
        vm.bump()

    async def _status(self, vm: _FleetVm, request: web.Request) -> web.StreamResponse:
        wait = requested_wait(request.headers.get("Prefer"))
        asked = requested_etag(request.headers.get("If-None-Match"))
        waited = False
        if wait is not None and asked == vm.etag and vm.changed is not None:
            waited = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(wait, MAX_WAIT_SECONDS)):
                    await vm.changed.wait()
        headers = {"ETag": f'"{vm.etag}"'}
        if waited:
            headers["Preference-Applied"] = f"wait={wait:g}"
        return web.json_response(vm.status().to_json(), headers=headers)


def _claim(vm: _FleetVm, body: bytes) -> tuple[int, dict[str, Any]]:
    """PUT /v1/claim as the loader answers it (checking only the workspace uid)."""
    try:
        workspace = json.loads(body)["config"]["workspace"]
        uid = workspace["uid"]
    except (ValueError, KeyError, TypeError):
        uid = None
    if not isinstance(uid, str) or not uid:
        return 400, {"error": "bad-claim", "field": "config.workspace.uid"}
    if vm.workspace is not None and vm.workspace.get("uid") == uid:
        return 200, {"workspace": vm.workspace}
    if vm.pool_class is None:
        return 409, {"error": "not-a-pool-server"}
    if vm.workspace is not None:
        return 409, {"error": "already-claimed"}
    vm.workspace, vm.stage = dict(workspace), BootStage.AWAITING_AGENT
    return 202, {"workspace": vm.workspace}


def _agent_side(user_data: str) -> tuple[bytes, bytes, str, int, dict[str, Any]]:
    """(certificate PEM, key PEM, token sha256, API port, agent.json) from a server's
    user-data."""
    files = read_write_files(user_data)
    config = json.loads(files[VM_LAYOUT.agent_json].content)
    token = str(config["tokenSha256"]).lower()
    if len(token) != 64:
        raise SimulationError("agent.json: tokenSha256 is not 64 hex digits")
    port = port_of(config["listen"]["api"], "listen.api")
    return (files[config["tls"]["cert"]].content, files[config["tls"]["key"]].content,
            token, port, config)

