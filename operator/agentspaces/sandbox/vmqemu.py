"""Real workspace VMs for the local sandbox: QEMU guests booted from a Debian 13 cloud
image with the user-data the operator sent, through the guest's own cloud-init.

The counterpart of the VM simulator (vmsim.py), with the same wiring: attached to the
Hetzner emulator, it boots a VM for every created server and powers it off when the
server is deleted:

    image = build_image()          # scripts/build-vm-image.sh: cached outside the repo
    vms = QemuVms(state_dir, image)
    vms.attach(emulator)           # hooks + loopback ip_allocator
    ...
    vms.stop_all()                 # on sandbox shutdown

Each VM is a copy-on-write qcow2 overlay over the cached raw image, a NoCloud seed (a
small FAT drive labelled "cidata") holding exactly the server's user-data and a
meta-data with instance-id = the server id and local-hostname = its name, and one QEMU
process under TCG (KVM guests hang on these nested machines) with the kernel and
initramfs passed directly. QEMU's user networking forwards a fixed set of TCP ports
from the server's loopback address 127.0.0.N (what the emulator reports as its public
IPv4) to the same ports in the guest, so the operator reaches the agent and Caddy as it
would on Hetzner. From the guest, the host's loopback services are at 10.0.2.2.

Two optional extras for tests that inspect a guest: `ssh_port` forwards that port of the
server's address to the guest's sshd (22), and `metadata=(host, port)` gives the guest
Hetzner's metadata address, 169.254.169.254:80, served by an HTTP server of the host's.
QEMU forwards only addresses inside a user network (`guestfwd`), so that address lives
on a second, isolated user network (`restrict=on`: nothing else is reachable through
it) as the guest's eth1, 169.254.169.15/24; each connection runs vmqemu_relay.py, which
passes it on to the host's server. The guest then reaches the address as a Hetzner VM
does (until its own firewall blocks it).

Images: a guest that powers itself off ends its QEMU process; a waiter thread per VM
sees QEMU exit while we did not stop it and reports the power-off to the emulator
(`guest_shutdown`), which then shows the server "off". When the emulator makes a snapshot
of a server ("image_created" hook), its VM's disk is saved as the image's disk,
`<state_dir>/qemu/images/<image-id>.qcow2`: the VM's own layers, backed by the base
image only (not by its overlay, nor by another image's disk). A server created from that
image gets an overlay backed by that disk. The copy runs inside the hook, so it may end
after the emulator already shows the image available; the hooks run in order on one
thread, so a server created from the image, or the source's delete, reaches the backend
only after the copy.

Files live under `<state_dir>/qemu/<server-id>/`: `overlay.qcow2` and `seed.img`
(removed when the VM goes), `serial.log` (the guest's console), `qemu.log` (QEMU's own
output) and `vmqemu.log` (this backend's notes), which stay for the post-mortem. A VM
that cannot be booted is reported in its `QemuVmInfo.errors` and log, never raised into
the emulator's hook thread. QEMU runs in its own session with `die_with_parent`, so it
never outlives the process (thread) that started it.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .vm_backend import VmBackend
from .vmsim_ips import LoopbackPool
from .vmsim_procs import VmProcess, spawn, stop_processes

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
IMAGE_SCRIPT = REPO_ROOT / "scripts" / "build-vm-image.sh"
# The agent (9443) and Caddy (80, 443); the sandbox adds its plain-HTTP Caddy port.
DEFAULT_PORTS = (80, 443, 9443)
GUEST_HOST = "10.0.2.2"  # the host, seen from a guest on QEMU user networking
GUEST_SSH_PORT = 22
METADATA_ADDRESS = "169.254.169.254"  # Hetzner's metadata service
METADATA_PORT = 80
# Kernel arguments: any oops panics, and a panic reboots after a second.
CRASH_REBOOTS = "oops=panic panic=1"
KERNEL_PANIC = "Kernel panic - not syncing"
# The second user network that carries the metadata address (see the module docstring).
METADATA_NET = "169.254.169.0/24"
METADATA_NET_HOST = "169.254.169.2"
METADATA_NET_DNS = "169.254.169.3"
METADATA_GUEST_ADDRESS = "169.254.169.15/24"
RELAY = Path(__file__).resolve().with_name("vmqemu_relay.py")
SBIN = ("/usr/sbin", "/sbin")
DISK_COPY_SECONDS = 600.0  # qemu-img on a baked image: ~2 GB of the VM's own layers
WAITER_JOIN_SECONDS = 5.0
Progress = Callable[[str], None]


class QemuError(RuntimeError):
    """The image cannot be built, or a VM's files cannot be made."""


@dataclass(frozen=True)
class BaseImage:
    """A directory made by scripts/build-vm-image.sh."""

    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "root.img"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd"

    def check(self) -> BaseImage:
        missing = [p.name for p in (self.disk, self.kernel, self.initrd) if not p.is_file()]
        if missing:
            raise QemuError(f"{self.directory} is not a VM image (no {', '.join(missing)}); "
                            f"build one with {IMAGE_SCRIPT}")
        return self


def build_image(progress: Progress | None = None, *, workspace: bool = False,
                timeout: float = 45 * 60) -> BaseImage:
    """Run scripts/build-vm-image.sh (a no-op but for a QEMU check when cached) and return
    the image; its progress lines go to `progress` (default: this process's stderr).
    `workspace`: the flavor with the workspace software installed at build time (boots
    in minutes under TCG) instead of the stock one (the bootstrap installs everything)."""
    emit = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    argv = ["bash", str(IMAGE_SCRIPT), *(["--workspace"] if workspace else [])]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    err_lines: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_lines.append(line.rstrip("\n"))
            if line.startswith("[vm-image"):
                emit(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise QemuError(f"{IMAGE_SCRIPT.name} did not finish in {timeout:.0f}s") from None
    reader.join(timeout=5)
    if proc.returncode:
        tail = "\n".join(err_lines[-15:])
        raise QemuError(f"{IMAGE_SCRIPT.name} failed (exit {proc.returncode}):\n{tail}")
    lines = out.strip().splitlines()
    if not lines:
        raise QemuError(f"{IMAGE_SCRIPT.name} printed no image directory")
    return BaseImage(Path(lines[-1])).check()


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))
    if found is None:
        raise QemuError(f"{name} not found (scripts/build-vm-image.sh installs it)")
    return found


def mac_address(server_id: int, prefix: str = "52:54:00") -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix by default) for one
    server."""
    low = server_id & 0xFFFFFF
    return f"{prefix}:{low >> 16:02x}:{(low >> 8) & 0xFF:02x}:{low & 0xFF:02x}"


def metadata_mac_address(server_id: int) -> str:
    """The MAC of the NIC that carries the metadata address (a9 = 169)."""
    return mac_address(server_id, "52:54:a9")


def network_config(mac: str, metadata_mac: str | None = None) -> dict[str, Any]:
    """What Hetzner's metadata service tells cloud-init about the network, reduced to
    what QEMU's user networking offers: DHCPv4 on eth0. Without it cloud-init's fallback
    also asks for DHCPv6, which nothing answers here, and ifupdown waits 5 min on it.
    With `metadata_mac`, eth1 gets the static address on the metadata network (no
    gateway: only 169.254.169.0/24 is routed there)."""
    config: list[dict[str, Any]] = [
        {"type": "physical", "name": "eth0", "mac_address": mac,
         "subnets": [{"type": "dhcp4"}]}]
    if metadata_mac is not None:
        config.append({"type": "physical", "name": "eth1", "mac_address": metadata_mac,
                       "subnets": [{"type": "static", "address": METADATA_GUEST_ADDRESS}]})
    return {"version": 1, "config": config}


def _netdev_value(text: str) -> str:
    """`text` inside a -netdev option string: QEMU reads ',' as a separator, ',,' as a
    comma."""
    return text.replace(",", ",,")


def relay_command(host: str, port: int) -> str:
    """The command line QEMU runs for each guest connection to the metadata address
    (parsed like a shell word list)."""
    return " ".join(shlex.quote(part) for part in (sys.executable, str(RELAY), host,
                                                    str(port)))


def make_seed(path: Path, user_data: str, meta_data: Mapping[str, str],
              network: Mapping[str, Any] | None = None) -> None:
    """A NoCloud seed: a FAT image labelled "cidata" holding `user-data` byte for byte,
    `meta-data` and, when given, `network-config` (both JSON, which cloud-init reads as
    the YAML it is)."""
    staging = path.parent / (path.name + ".d")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        (staging / "user-data").write_bytes(user_data.encode("utf-8"))
        (staging / "meta-data").write_text(json.dumps(dict(meta_data), indent=1) + "\n",
                                           encoding="utf-8")
        names = ["user-data", "meta-data"]
        if network is not None:
            (staging / "network-config").write_text(
                json.dumps(dict(network), indent=1) + "\n", encoding="utf-8")
            names.append("network-config")
        path.unlink(missing_ok=True)
        size_kib = 1024 + 2 * (len(user_data.encode("utf-8")) // 1024)
        _run([_tool("mkfs.vfat"), "-n", "CIDATA", "-C", str(path), str(size_kib)])
        _run([_tool("mcopy"), "-o", "-i", str(path), *(str(staging / n) for n in names),
              "::"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _run(argv: Sequence[str], timeout: float = 60) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False,
                            timeout=timeout, stdin=subprocess.DEVNULL)
    if result.returncode:
        raise QemuError(f"{Path(argv[0]).name} exited {result.returncode}: "
                        f"{(result.stderr or result.stdout).strip()[-500:]}")


def bindable_ports(ports: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ports this process may bind, privileged ports it may not) for host forwarding."""
    if os.geteuid() == 0:
        return tuple(ports), ()
    try:
        start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        start = 1024
    return (tuple(p for p in ports if p >= start), tuple(p for p in ports if p < start))


@dataclass(frozen=True)
class QemuVmInfo:
    """A snapshot of one QEMU VM."""

    server_id: int
    name: str
    ip: str | None
    root: Path
    pid: int | None                  # QEMU's pid (= its process group id)
    exit_code: int | None            # None while QEMU runs (or never started)
    errors: tuple[str, ...]
    ports: tuple[int, ...]           # forwarded from ip:port to the guest's port
    ssh_port: int | None             # forwarded from ip:ssh_port to the guest's 22
    metadata: tuple[str, int] | None  # the host's server behind 169.254.169.254:80
    overlay: Path
    seed: Path
    serial_log: Path
    qemu_log: Path
    own_log: Path
    backing: Path | None = None      # what the overlay is backed by: base or image disk

    @property
    def running(self) -> bool:
        return self.pid is not None and self.exit_code is None

    @property
    def ok(self) -> bool:
        return not self.errors and self.running


@dataclass
class _Vm:
    server_id: int
    name: str
    ip: str | None
    root: Path
    process: VmProcess | None = None
    errors: list[str] = field(default_factory=list)
    ports: tuple[int, ...] = ()
    ssh_port: int | None = None
    metadata: tuple[str, int] | None = None
    image: dict[str, Any] | None = None  # the server's image, as the emulator has it
    backing: Path | None = None
    waiter: threading.Thread | None = None
    stopped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def overlay(self) -> Path:
        return self.root / "overlay.qcow2"

    @property
    def seed(self) -> Path:
        return self.root / "seed.img"

    @property
    def serial_log(self) -> Path:
        return self.root / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.root / "qemu.log"

    @property
    def own_log(self) -> Path:
        return self.root / "vmqemu.log"


    def note(self, message: str, error: bool = False) -> None:
        if error:
            self.errors.append(message)
            log.warning("QEMU VM %s (%s): %s", self.server_id, self.ip, message)
        else:
            log.info("QEMU VM %s (%s): %s", self.server_id, self.ip, message)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self.own_log.open("a", encoding="utf-8") as fh:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
                fh.write(f"{stamp} {'ERROR ' if error else ''}{message}\n")
        except OSError:
            pass

    def info(self) -> QemuVmInfo:
        proc = self.process
        return QemuVmInfo(
            server_id=self.server_id, name=self.name, ip=self.ip, root=self.root,
            pid=proc.pid if proc else None, exit_code=proc.exit_code() if proc else None,
            errors=tuple(self.errors), ports=self.ports, ssh_port=self.ssh_port,
            metadata=self.metadata, overlay=self.overlay,
            seed=self.seed, serial_log=self.serial_log, qemu_log=self.qemu_log,
            own_log=self.own_log, backing=self.backing)

    def stop(self, term_seconds: float, kill_seconds: float) -> None:
        """Power off (SIGTERM, then SIGKILL), then remove the overlay and the seed; the
        logs stay. Safe to call twice."""
        with self.lock:
            if self.stopped:
                return
            self.stopped = True
            if self.process is not None:
                if stop_processes([self.process], term_seconds, kill_seconds):
                    log.error("QEMU VM %s: QEMU survived SIGKILL", self.server_id)
                else:
                    self.note(f"powered off (QEMU exit {self.process.exit_code()})")
            for path in (self.overlay, self.seed):
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    log.error("QEMU VM %s: could not remove %s: %s", self.server_id, path, exc)
        # Outside the lock: the waiter takes it once QEMU is gone.
        if self.waiter is not None and self.waiter is not threading.current_thread():
            self.waiter.join(WAITER_JOIN_SECONDS)
            if self.waiter.is_alive():
                log.error("QEMU VM %s: its waiter thread did not end", self.server_id)


class QemuVms(VmBackend[_Vm, QemuVmInfo]):
    kind = "QEMU VM"
    subdir = "qemu"

    def __init__(self, state_dir: Path, image: BaseImage, *,
                 ip_pool: LoopbackPool | None = None, ports: Sequence[int] = DEFAULT_PORTS,
                 ssh_port: int | None = None, metadata: tuple[str, int] | None = None,
                 memory_mib: int = 2048, cpus: int = 2, disk_size: str = "10G",
                 qemu: str = "qemu-system-x86_64", qemu_img: str = "qemu-img",
                 term_seconds: float = 10.0, kill_seconds: float = 5.0,
                 edit_user_data: Callable[[str, str], str] | None = None) -> None:
        """`edit_user_data(server name, user-data)`: what that guest's seed holds instead
        of the user-data the operator sent (a test breaking a step on purpose)."""
        super().__init__(state_dir, ip_pool, term_seconds, kill_seconds)
        self.edit_user_data = edit_user_data
        self.image = image.check()
        self.ports = tuple(dict.fromkeys(int(p) for p in ports))
        self.ssh_port = ssh_port
        self.metadata = metadata
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.disk_size = disk_size
        self._qemu = qemu
        self._qemu_img = qemu_img
        self._deleted_disks: set[Path] = set()  # of deleted images a VM still reads

    def _new_vm(self, server_id: int, name: str, ip: str | None, root: Path) -> _Vm:
        return _Vm(server_id, name, ip, root)

    def _info(self, vm: _Vm) -> QemuVmInfo:
        return vm.info()

    @property
    def images_dir(self) -> Path:
        return self.state_dir / self.subdir / "images"

    def image_disk(self, image_id: int) -> Path:
        """Where the disk of the emulator's image `image_id` is kept."""
        return self.images_dir / f"{image_id}.qcow2"

    def _boot_server(self, vm: _Vm, server: dict[str, Any]) -> None:
        vm.image = server.get("image")
        self._boot(vm, server.get("user_data"))

    def _backing(self, vm: _Vm) -> tuple[Path, str]:
        """(disk, format) the VM's overlay is backed by: its image's saved disk when the
        server was created from a snapshot (or backup), else the base image."""
        image = vm.image or {}
        if image.get("type") not in ("snapshot", "backup"):
            return self.image.disk, "raw"
        disk = self.image_disk(int(image["id"]))
        if disk.is_file():
            vm.note(f"booting image {image['id']} ({disk})")
            return disk, "qcow2"
        vm.note(f"image {image['id']} has no saved disk (made while its server had no "
                "QEMU VM): booting the base image instead", error=True)
        return self.image.disk, "raw"

    def _boot(self, vm: _Vm, user_data: object) -> None:
        if vm.root.exists():  # left over from an earlier sandbox with the same ids
            shutil.rmtree(vm.root, ignore_errors=True)
        vm.root.mkdir(parents=True, exist_ok=True)
        vm.note(f"server {vm.server_id} ({vm.name}) on {vm.ip}")
        if not vm.ip or not vm.ip.startswith("127."):
            vm.note(f"IPv4 {vm.ip!r} is not a loopback address: attach the backend so it "
                    "allocates the servers' addresses", error=True)
            return
        # Hetzner boots a server without user-data too; cloud-init then has nothing to do.
        text = user_data if isinstance(user_data, str) else ""
        if self.edit_user_data is not None:
            text = self.edit_user_data(vm.name, text)
        ports, refused = bindable_ports(self.ports)
        if refused:
            vm.note(f"not forwarding ports {', '.join(map(str, refused))}: binding them "
                    "needs root (net.ipv4.ip_unprivileged_port_start)")
        vm.ports = ports
        if self.ssh_port is not None:
            _, refused_ssh = bindable_ports((self.ssh_port,))
            if refused_ssh:
                vm.note(f"not forwarding ssh port {self.ssh_port}: binding it needs root")
            else:
                vm.ssh_port = self.ssh_port
        vm.metadata = self.metadata
        backing, backing_format = self._backing(vm)
        _run([self._qemu_img, "create", "-q", "-f", "qcow2", "-b", str(backing),
              "-F", backing_format, str(vm.overlay), self.disk_size])
        vm.backing = backing
        mac = mac_address(vm.server_id)
        metadata_mac = metadata_mac_address(vm.server_id) if vm.metadata else None
        make_seed(vm.seed, text, {"instance-id": str(vm.server_id),
                                  "local-hostname": vm.name or f"server-{vm.server_id}"},
                  network_config(mac, metadata_mac))
        vm.serial_log.unlink(missing_ok=True)
        argv = self.qemu_argv(vm.ip, vm.overlay, vm.seed, vm.serial_log, ports, mac,
                              ssh_port=vm.ssh_port, metadata=vm.metadata,
                              metadata_mac=metadata_mac)
        vm.process = spawn("qemu", argv, cwd=vm.root,
                           env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                "LANG": "C.UTF-8"},
                           log=vm.qemu_log)
        vm.waiter = threading.Thread(target=self._watch, args=(vm, vm.process),
                                     name=f"qemu-waiter-{vm.server_id}", daemon=True)
        vm.waiter.start()
        vm.note(f"started QEMU (pid {vm.process.pid}); console {vm.serial_log}; "
                f"forwarding {vm.ip} ports {', '.join(map(str, ports)) or 'none'}"
                + (f", ssh {vm.ssh_port}" if vm.ssh_port else "")
                + (f"; metadata from {vm.metadata[0]}:{vm.metadata[1]}"
                   if vm.metadata else ""))

    # -- what the guest does on its own ---------------------------------------------

    def _watch(self, vm: _Vm, process: VmProcess) -> None:
        """On the VM's waiter thread: QEMU exiting while we did not stop it is the guest
        powering itself off (exit 0), or QEMU failing; either way the server is off."""
        try:
            code = process.popen.wait()
            with vm.lock:  # stop() sets `stopped` before it signals QEMU
                if vm.stopped:
                    return
            if code == 0:
                vm.note("the guest powered itself off (QEMU exit 0)")
            else:
                vm.note(f"QEMU exited {code} by itself", error=True)
            self._report_power_off(vm)
        except Exception:  # nothing above this thread catches it
            log.exception("QEMU VM %s: waiter failed", vm.server_id)

    def _report_power_off(self, vm: _Vm) -> None:
        emulator = self.emulator
        if emulator is None:
            vm.note("no emulator attached to report the power-off to", error=True)
        elif emulator.guest_shutdown(vm.server_id):
            vm.note("reported the power-off: the server is off")
        else:
            vm.note("the emulator did not have the server running: status unchanged")

    # -- images ----------------------------------------------------------------------

    def on_image_created(self, image: dict[str, Any]) -> None:
        try:
            self._save_disk(int(image["id"]), int((image.get("created_from") or {})["id"]))
        except Exception:  # the emulator's hook thread must live on
            log.exception("QEMU: saving the disk of image %s failed", image.get("id"))

    def _save_disk(self, image_id: int, server_id: int) -> None:
        with self._lock:
            vm = self._vms.get(server_id)
        if vm is None:
            log.warning("QEMU: image %s of server %s: no VM, so no disk", image_id, server_id)
            return
        disk = self.image_disk(image_id)
        started = time.monotonic()
        with vm.lock:  # the overlay stays while we copy it
            if vm.stopped or vm.backing is None:
                vm.note(f"image {image_id}: the VM has no disk to save", error=True)
                return
            try:
                self._copy_disk(vm.overlay, vm.backing, disk)
            except (QemuError, OSError, subprocess.TimeoutExpired) as exc:
                vm.note(f"image {image_id}: could not save the disk: {exc}", error=True)
                return
        vm.note(f"image {image_id}: disk saved as {disk} "
                f"({time.monotonic() - started:.1f}s)")

    def _copy_disk(self, overlay: Path, backing: Path, target: Path) -> None:
        """`target`: the overlay's content as a qcow2 backed by the base image. Convert
        copies the overlay's own clusters; a VM booted from an image then has that
        image's clusters rebased in, so deleting that image later breaks nothing. -U: a
        running QEMU holds the overlay's lock (the copy is then crash-consistent)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        part.unlink(missing_ok=True)
        try:
            base = self.image.disk
            _run([self._qemu_img, "convert", "-U", "-O", "qcow2", "-B", str(backing),
                  "-F", "raw" if backing == base else "qcow2", str(overlay), str(part)],
                 timeout=DISK_COPY_SECONDS)
            if backing != base:
                _run([self._qemu_img, "rebase", "-U", "-f", "qcow2", "-b", str(base),
                      "-F", "raw", str(part)], timeout=DISK_COPY_SECONDS)
            part.replace(target)
        finally:
            part.unlink(missing_ok=True)

    def on_image_deleted(self, image: dict[str, Any]) -> None:
        try:
            with self._lock:
                self._deleted_disks.add(self.image_disk(int(image["id"])))
            self._remove_unused_disks()
        except Exception:  # the emulator's hook thread must live on
            log.exception("QEMU: removing the disk of image %s failed", image.get("id"))

    def on_server_deleted(self, server: dict[str, Any]) -> None:
        super().on_server_deleted(server)
        try:
            self._remove_unused_disks()
        except Exception:  # the emulator's hook thread must live on
            log.exception("QEMU: removing the disks of deleted images failed")

    def _remove_unused_disks(self) -> None:
        """Remove the disks of deleted images once no VM's overlay is backed by them (as
        at Hetzner, a server outlives the image it was made from)."""
        with self._lock:
            in_use = {vm.backing for vm in self._vms.values()}
            unused = self._deleted_disks - in_use
            self._deleted_disks -= unused
        for disk in unused:
            disk.unlink(missing_ok=True)

    def stop_all(self) -> None:
        """Stop every VM, then remove every image's disk."""
        super().stop_all()
        shutil.rmtree(self.images_dir, ignore_errors=True)
        with self._lock:
            self._deleted_disks.clear()

    def qemu_argv(self, ip: str, overlay: Path, seed: Path, serial_log: Path,
                  ports: Sequence[int], mac: str, *, ssh_port: int | None = None,
                  metadata: tuple[str, int] | None = None,
                  metadata_mac: str | None = None) -> list[str]:
        forwards = "".join(f",hostfwd=tcp:{ip}:{port}-:{port}" for port in ports)
        if ssh_port is not None:
            forwards += f",hostfwd=tcp:{ip}:{ssh_port}-:{GUEST_SSH_PORT}"
        metadata_nic: list[str] = []
        if metadata is not None and metadata_mac is not None:
            command = _netdev_value(relay_command(*metadata))
            metadata_nic = [
                "-netdev", f"user,id=n1,net={METADATA_NET},host={METADATA_NET_HOST},"
                           f"dns={METADATA_NET_DNS},restrict=on,"
                           f"guestfwd=tcp:{METADATA_ADDRESS}:{METADATA_PORT}-cmd:{command}",
                "-device", f"virtio-net-pci,netdev=n1,mac={metadata_mac}",
            ]
        return [
            self._qemu, "-accel", "tcg", "-cpu", "max",
            "-smp", str(self.cpus), "-m", str(self.memory_mib),
            "-nographic", "-monitor", "none", "-serial", f"file:{serial_log}",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            # eth0, as on Hetzner's images. TCG with several vCPUs now and then runs a
            # stale translation of kernel text the guest has just patched (an int3 oops at
            # boot); a crashed guest reboots within a second, as under a watchdog, instead
            # of sitting at the panic for good.
            "-append", f"console=ttyS0 root=/dev/vda rw net.ifnames=0 {CRASH_REBOOTS}",
            "-drive", f"file={overlay},if=virtio,format=qcow2",
            "-drive", f"file={seed},if=virtio,format=raw,readonly=on",
            "-netdev", f"user,id=n0{forwards}",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
            *metadata_nic,
            "-device", "virtio-rng-pci",
        ]


def kernel_crashes(console: str) -> int:
    """How many times the guest's kernel died (each time it rebooted: CRASH_REBOOTS)."""
    return console.count(KERNEL_PANIC)


def serial_text(info: QemuVmInfo) -> str:
    """The guest's console output so far ("" before QEMU opened it)."""
    try:
        return info.serial_log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""

