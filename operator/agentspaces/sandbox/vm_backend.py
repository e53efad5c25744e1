"""What every local VM backend does the same way: follow the Hetzner emulator's server
hooks, hand out the servers' loopback addresses, keep one VM per server, report what a
guest does on its own (powering itself off) back to the emulator, and tear VMs down (on
delete, or all at once) without ever raising into the emulator's thread.

The simulator (vmsim.py) and the QEMU backend (vmqemu.py) differ only in how a VM is
made, booted and stopped: `_new_vm` and `_boot`, and the VM's own `stop`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from .vmsim_ips import LoopbackPool

log = logging.getLogger(__name__)

Hook = Callable[[dict[str, Any]], None]


class EmulatorLike(Protocol):
    """The part of the Hetzner emulator a VM backend uses."""

    ip_allocator: Any

    def on_server_created(self, callback: Hook) -> Hook: ...
    def on_server_deleted(self, callback: Hook) -> Hook: ...
    def on_image_created(self, callback: Hook) -> Hook: ...
    def on_image_deleted(self, callback: Hook) -> Hook: ...
    def remove_hook(self, callback: Hook) -> None: ...
    def guest_shutdown(self, server_id: int) -> bool: ...


class BackendVm(Protocol):
    server_id: int
    ip: str | None

    def note(self, message: str, error: bool = False) -> None: ...
    def stop(self, term_seconds: float, kill_seconds: float) -> None: ...


VmT = TypeVar("VmT", bound=BackendVm)
InfoT = TypeVar("InfoT")


class VmBackend(Generic[VmT, InfoT]):
    kind = "VM"
    """How log lines name this backend's VMs ("simulated VM", "QEMU VM")."""
    subdir = "vms"
    """Where under the state directory each server's VM lives."""

    def __init__(self, state_dir: Path, ip_pool: LoopbackPool | None,
                 term_seconds: float, kill_seconds: float) -> None:
        self.state_dir = Path(state_dir)
        self.ip_pool = ip_pool or LoopbackPool()
        self._term_seconds = term_seconds
        self._kill_seconds = kill_seconds
        self._vms: dict[int, VmT] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._emulator: EmulatorLike | None = None

    # -- what a backend provides -----------------------------------------------------

    def _new_vm(self, server_id: int, name: str, ip: str | None, root: Path) -> VmT:
        raise NotImplementedError

    def _boot(self, vm: VmT, user_data: object) -> None:
        raise NotImplementedError

    def _boot_server(self, vm: VmT, server: dict[str, Any]) -> None:
        """Boot `vm` for `server` (the emulator's snapshot of it); most backends need
        only its user-data."""
        self._boot(vm, server.get("user_data"))

    def _info(self, vm: VmT) -> InfoT:
        raise NotImplementedError

    def on_image_created(self, image: dict[str, Any]) -> None:
        """A snapshot of the server `image["created_from"]` was made (a backend with
        real disks keeps one); on the emulator's hook thread, must not raise."""

    def on_image_deleted(self, image: dict[str, Any]) -> None:
        """The image is gone; on the emulator's hook thread, must not raise."""

    # -- wiring --------------------------------------------------------------------

    def attach(self, emulator: EmulatorLike) -> None:
        """Boot a VM for every server the emulator creates, tear it down on delete,
        and hand out the servers' IPv4 addresses from the loopback pool."""
        emulator.ip_allocator = self.ip_pool
        self._emulator = emulator  # for what the guest itself does (powering off)
        emulator.on_server_created(self.on_server_created)
        emulator.on_server_deleted(self.on_server_deleted)
        emulator.on_image_created(self.on_image_created)
        emulator.on_image_deleted(self.on_image_deleted)

    def detach(self, emulator: EmulatorLike) -> None:
        for hook in (self.on_server_created, self.on_server_deleted,
                     self.on_image_created, self.on_image_deleted):
            emulator.remove_hook(hook)
        if self._emulator is emulator:
            self._emulator = None

    @property
    def emulator(self) -> EmulatorLike | None:
        """The emulator this backend is attached to."""
        return self._emulator

    # -- observation ---------------------------------------------------------------

    @property
    def vms(self) -> dict[int, InfoT]:
        """Server id -> snapshot of its VM."""
        with self._lock:
            return {vm.server_id: self._info(vm) for vm in self._vms.values()}

    def vm(self, server_id: int) -> InfoT | None:
        with self._lock:
            vm = self._vms.get(server_id)
            return self._info(vm) if vm is not None else None

    def vm_root(self, server_id: int) -> Path:
        return self.state_dir / self.subdir / str(server_id)

    # -- emulator hooks (never raise) ------------------------------------------------

    def on_server_created(self, server: dict[str, Any]) -> None:
        server_id = int(server.get("id", 0))
        vm = self._new_vm(server_id, str(server.get("name", "")), _ipv4(server),
                          self.vm_root(server_id))
        with self._lock:
            if self._closed:
                log.warning("%s backend stopped: no VM for server %s", self.kind, server_id)
                return
            if server_id in self._vms:
                log.warning("server %s already has a %s", server_id, self.kind)
                return
            self._vms[server_id] = vm
            try:
                self._boot_server(vm, server)
            except Exception as exc:  # the emulator's hook thread must live on
                log.exception("%s %s: boot failed", self.kind, server_id)
                vm.note(f"boot failed: {type(exc).__name__}: {exc}", error=True)

    def on_server_deleted(self, server: dict[str, Any]) -> None:
        server_id = int(server.get("id", 0))
        vm: VmT | None = None
        try:
            with self._lock:
                vm = self._vms.get(server_id)
            if vm is not None:
                vm.stop(self._term_seconds, self._kill_seconds)
                with self._lock:
                    if self._vms.get(server_id) is vm:
                        del self._vms[server_id]
                log.info("%s %s (%s) removed", self.kind, server_id, vm.ip)
        except Exception:
            log.exception("%s %s: teardown failed", self.kind, server_id)
        finally:
            # Only now, with the VM gone, may another VM get the address.
            for address in {_ipv4(server), vm.ip if vm is not None else None}:
                if address:
                    self.ip_pool.release(address)

    def stop_all(self) -> None:
        """Stop every VM and remove what it leaves behind; later created servers get
        no VM. Idempotent."""
        with self._lock:
            self._closed = True
            vms = list(self._vms.values())
        for vm in vms:
            try:
                vm.stop(self._term_seconds, self._kill_seconds)
            except Exception:
                log.exception("%s %s: teardown failed", self.kind, vm.server_id)
        with self._lock:
            for vm in vms:
                if self._vms.get(vm.server_id) is vm:
                    del self._vms[vm.server_id]
                if vm.ip:
                    self.ip_pool.release(vm.ip)


def _ipv4(server: dict[str, Any]) -> str | None:
    return ((server.get("public_net") or {}).get("ipv4") or {}).get("ip")
