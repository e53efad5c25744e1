"""Real VMs under QEMU: a server created through the Hetzner emulator boots the Debian 13
cloud image (scripts/build-vm-image.sh, cached outside the repo) under TCG, the guest's
own cloud-init runs exactly the user-data sent with the create call, the guest answers
on its forwarded port at the loopback address the emulator reports, its sshd answers on
the forwarded ssh port, Hetzner's metadata address reaches the host's stand-in, and
deleting the server leaves no QEMU process, overlay or seed. A guest that powers itself
off shows "off" in the emulator, its snapshot keeps its disk, and a server created from
the snapshot boots it.

The first run builds the image (~1 min here); later runs boot in about a minute.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import hcloud
import pytest
from hcloud.images import Image
from hcloud.server_types import ServerType

from agentspaces.lifeline import process_alive
from agentspaces.sandbox.hetzner import HetznerEmulator
from agentspaces.sandbox.vmqemu import (
    BaseImage,
    QemuVms,
    build_image,
    kernel_crashes,
    mac_address,
    make_seed,
    network_config,
    serial_text,
)
from agentspaces.sandbox.vmsim_ips import LoopbackPool
from tests.support.metadata_service import MetadataService
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(900)  # includes a cold image build

TOKEN = "vmqemu-test-token"
PROBE_PORT = 9443  # the agent's port: forwarded like on a real workspace VM
SSH_PORT = 2222
BOOT_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def image() -> BaseImage:
    started = time.monotonic()
    built = build_image()
    print(f"VM image ready in {time.monotonic() - started:.1f}s: {built.directory}")
    return built


def user_data(token: str) -> str:
    """Crashes the guest's kernel once early in the first boot (the guest must come back
    by itself, as after TCG's rare boot-time oops), then writes a file of ours, records
    what meta-data said, and serves both on the agent's port with the guest's own Python
    (cloud-init's interpreter)."""
    return f"""#cloud-config
bootcmd:
  - [sh, -c, "[ -e /var/lib/crashed-once ] || {{ touch /var/lib/crashed-once; sync;
     echo c > /proc/sysrq-trigger; }}"]
write_files:
  - path: /srv/probe/token
    content: "{token}"
    permissions: "0644"
runcmd:
  - [sh, -c, "cp /var/lib/cloud/data/instance-id /srv/probe/instance-id"]
  - [sh, -c, "hostname > /srv/probe/hostname"]
  - [sh, -c, "curl -sS -m 20 http://169.254.169.254/hetzner/v1/userdata > /srv/probe/metadata"]
  - [ln, -s, /run/cloud-init/result.json, /srv/probe/result.json]
  - [systemd-run, --unit=probe-http, /usr/bin/python3, -m, http.server, "{PROBE_PORT}",
     --directory, /srv/probe]
"""


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def test_seed_holds_exactly_the_user_data(tmp_path: Path, image: BaseImage) -> None:
    text = "#cloud-config\n# ünïcode and trailing spaces   \nruncmd: []\n"
    seed = tmp_path / "seed.img"
    make_seed(seed, text, {"instance-id": "42", "local-hostname": "alpha"},
              network_config(mac_address(0x0A0B0C)))

    def member(name: str) -> bytes:
        return subprocess.run(["mtype", "-i", str(seed), f"::{name}"], check=True,
                              capture_output=True, timeout=30).stdout

    assert member("user-data") == text.encode()
    assert json.loads(member("meta-data")) == {"instance-id": "42", "local-hostname": "alpha"}
    assert json.loads(member("network-config"))["config"][0]["mac_address"] == \
        "52:54:00:0a:0b:0c"
    label = subprocess.run(["mlabel", "-s", "-i", str(seed), "::"], check=True,
                           capture_output=True, text=True, timeout=30).stdout
    assert "CIDATA" in label.upper()


@pytest.fixture
def metadata() -> Iterator[MetadataService]:
    with MetadataService("canary-" + secrets.token_hex(8)) as service:
        yield service


@pytest.fixture
def cloud(tmp_path: Path, image: BaseImage, metadata: MetadataService
          ) -> Iterator[tuple[hcloud.Client, QemuVms]]:
    vms = QemuVms(tmp_path / "state", image, ip_pool=LoopbackPool("127.0.0.200", "127.0.0.209"),
                  ports=(PROBE_PORT,), ssh_port=SSH_PORT,
                  metadata=("127.0.0.1", metadata.port))
    emulator = HetznerEmulator(TOKEN, boot_seconds=0.1, delete_seconds=0.1,
                               action_seconds=0.05)
    vms.attach(emulator)
    emulator.start()
    try:
        yield hcloud.Client(token=TOKEN, api_endpoint=emulator.url, poll_interval=0.2), vms
    finally:
        vms.stop_all()
        emulator.stop()


def test_a_server_boots_our_user_data_survives_a_kernel_crash_and_leaves_nothing(
        cloud: tuple[hcloud.Client, QemuVms], metadata: MetadataService) -> None:
    client, vms = cloud
    token = secrets.token_hex(12)
    started = time.monotonic()
    server = client.servers.create(name="qemu-probe", server_type=ServerType(name="cx23"),
                                   image=Image(name="debian-13"),
                                   user_data=user_data(token)).server
    server_id = server.id
    assert server_id is not None
    ip = server.public_net.ipv4.ip
    assert ip.startswith("127.0.0.2")  # from our loopback pool, as Hetzner would report it
    info = wait_for(lambda: vms.vm(server_id), 15, "the QEMU VM of the server")
    assert info.ip == ip and info.ports == (PROBE_PORT,) and info.ssh_port == SSH_PORT
    assert info.overlay.is_file() and info.seed.is_file()
    assert info.ok, info.errors
    pid = info.pid
    assert pid is not None

    def answered() -> str | None:
        vm = vms.vm(server_id)
        assert vm is not None and vm.running, (
            f"QEMU exited: {vm.qemu_log.read_text(errors='replace') if vm else ''}")
        return fetch(f"http://{ip}:{PROBE_PORT}/token")

    try:
        body = wait_for(answered, BOOT_TIMEOUT, "the guest's HTTP responder", interval=1.0)
    except AssertionError:
        print(serial_text(info)[-4000:])
        raise
    answered_after = time.monotonic() - started
    assert body == token  # our write_files, through the guest's cloud-init
    # What the seed's meta-data said, as the guest's cloud-init applied it.
    assert (fetch(f"http://{ip}:{PROBE_PORT}/instance-id") or "").strip() == str(server_id)
    assert (fetch(f"http://{ip}:{PROBE_PORT}/hostname") or "").strip() == "qemu-probe"
    console = wait_for(lambda: (lambda t: t if "finished at" in t else None)(serial_text(info)),
                       60, "cloud-init's final message on the serial console")
    assert "Cloud-init v." in console and "Datasource DataSourceNoCloud" in console
    # The crash on the first boot, then a second boot that got through.
    assert kernel_crashes(console) == 1, console[-4000:]
    assert console.count("Linux version") == 2
    # Written when the final stage ends: every stage ran without an error.
    result = json.loads(wait_for(lambda: fetch(f"http://{ip}:{PROBE_PORT}/result.json"), 30,
                                 "cloud-init's result.json"))
    assert result["v1"]["errors"] == [], result
    assert "NoCloud" in result["v1"]["datasource"]
    # 169.254.169.254:80 in the guest reaches the host's stand-in (nothing blocks it here:
    # this user-data has no firewall), as Hetzner's metadata service on a real VM.
    assert fetch(f"http://{ip}:{PROBE_PORT}/metadata") == metadata.canary
    assert [r.path for r in metadata.requests] == ["/hetzner/v1/userdata"]
    assert _ssh_banner(ip, SSH_PORT).startswith(b"SSH-2.0-OpenSSH")
    print(f"server {server_id}: answered {answered_after:.1f}s after create")

    client.servers.delete(server)
    wait_for(lambda: vms.vm(server_id) is None, 60, "the VM torn down", interval=0.2)
    assert not process_alive(pid)
    assert not info.overlay.exists() and not info.seed.exists()
    assert info.serial_log.is_file()  # the console stays for the post-mortem
    assert ip not in vms.ip_pool.in_use()
    assert fetch(f"http://{ip}:{PROBE_PORT}/token") is None
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit()
                and _cmdline(p).count(str(info.overlay))]


def _ssh_banner(ip: str, port: int) -> bytes:
    """The guest's sshd greeting through the forwarded port (sshd may still be starting
    when runcmd is done: it gets a few seconds)."""
    def banner() -> bytes | None:
        try:
            with socket.create_connection((ip, port), timeout=5) as conn:
                return conn.recv(64)
        except OSError:
            return None
    return wait_for(banner, 30, "the guest's sshd", interval=1.0)


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_stop_all_powers_off_every_vm(cloud: tuple[hcloud.Client, QemuVms]) -> None:
    client, vms = cloud
    server = client.servers.create(name="qemu-stop", server_type=ServerType(name="cx23"),
                                   image=Image(name="debian-13"), user_data=None).server
    server_id = server.id
    assert server_id is not None
    info = wait_for(lambda: vms.vm(server_id), 15, "the QEMU VM of the server")
    assert info.running and info.pid is not None
    vms.stop_all()
    assert not process_alive(info.pid)
    assert not info.overlay.exists() and not info.seed.exists()
    assert vms.vms == {} and vms.ip_pool.in_use() == frozenset()
    assert os.path.isfile(info.qemu_log)


@pytest.mark.usefixtures("image")  # for qemu-img and qemu-io
def test_an_image_disk_holds_every_layer_but_the_base(tmp_path: Path) -> None:
    """A VM booted from an image is snapshotted again: the new image's disk has the
    first image's clusters too, so it outlives that image (no boot: tiny disks)."""
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    for name in ("vmlinuz", "initrd"):
        (base_dir / name).write_bytes(b"")
    base = BaseImage(base_dir)

    def qemu(*argv: str) -> str:
        return subprocess.run(["qemu-img", *argv], check=True, capture_output=True,
                              text=True, timeout=60).stdout

    def write(disk: Path, fmt: str, pattern: int, mib: int) -> None:
        subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P {pattern} {mib}M 1M",
                        str(disk)], check=True, capture_output=True, timeout=60)

    qemu("create", "-q", "-f", "raw", str(base.disk), "16M")
    write(base.disk, "raw", 0x11, 0)
    vms = QemuVms(tmp_path / "state", base)
    first_overlay = tmp_path / "first.qcow2"
    qemu("create", "-q", "-f", "qcow2", "-b", str(base.disk), "-F", "raw",
         str(first_overlay), "16M")
    write(first_overlay, "qcow2", 0x22, 1)
    first = vms.image_disk(1)
    vms._copy_disk(first_overlay, base.disk, first)
    second_overlay = tmp_path / "second.qcow2"
    qemu("create", "-q", "-f", "qcow2", "-b", str(first), "-F", "qcow2",
         str(second_overlay), "16M")
    write(second_overlay, "qcow2", 0x33, 2)
    second = vms.image_disk(2)
    vms._copy_disk(second_overlay, first, second)
    assert "Images are identical" in qemu("compare", str(second_overlay), str(second))
    first.unlink()
    assert json.loads(qemu("info", "--output=json", str(second)))["backing-filename"] == \
        str(base.disk)
    for offset, pattern in ((0, 0x11), (1, 0x22), (2, 0x33)):
        subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                        f"read -P {pattern} {offset}M 1M", str(second)],
                       check=True, capture_output=True, timeout=60)
    assert not list(vms.images_dir.glob("*.part"))


def builder_user_data(marker: str) -> str:
    """Writes the marker, then the guest powers itself off (cloud-init's power_state,
    as a workspace image's builder does once its install succeeded)."""
    return f"""#cloud-config
write_files:
  - path: /var/lib/marker
    content: "{marker}"
    permissions: "0644"
power_state:
  mode: poweroff
  delay: now
  condition: true
"""


# On the console, so the test reads it from the serial log.
REPORT_MARKER = """#cloud-config
runcmd:
  - [sh, -c, "echo \\"marker=$(cat /var/lib/marker 2>&1)\\" > /dev/ttyS0"]
"""


def test_a_guest_powers_off_is_snapshotted_and_a_server_boots_the_snapshot(
        cloud: tuple[hcloud.Client, QemuVms]) -> None:
    client, vms = cloud
    marker = secrets.token_hex(12)
    phases: dict[str, float] = {}
    clock = time.monotonic()

    def phase(name: str) -> None:
        nonlocal clock
        phases[name] = time.monotonic() - clock
        clock = time.monotonic()
        print(f"phase {name}: {phases[name]:.1f}s", flush=True)

    builder = client.servers.create(name="qemu-builder", server_type=ServerType(name="cx23"),
                                    image=Image(name="debian-13"),
                                    user_data=builder_user_data(marker)).server
    builder_id = builder.id
    assert builder_id is not None
    first = wait_for(lambda: vms.vm(builder_id), 15, "the builder's QEMU VM")

    def off() -> bool:
        return client.servers.get_by_id(builder_id).status == "off"

    try:
        wait_for(off, BOOT_TIMEOUT, "the builder's guest powering itself off", interval=1.0)
    except AssertionError:
        print(serial_text(first)[-4000:])
        raise
    phase("boot, write the marker, guest poweroff -> off")
    first = vms.vm(builder_id)
    assert first is not None and first.exit_code == 0 and not first.errors, first
    assert "the guest powered itself off" in first.own_log.read_text()

    made = client.servers.create_image(builder, description="marker", type="snapshot")
    image_id = made.image.id
    assert image_id is not None
    wait_for(lambda: client.images.get_by_id(image_id).status == "available", 30,
             "the snapshot available", interval=0.2)
    disk = vms.image_disk(image_id)
    wait_for(disk.is_file, 120, "the snapshot's disk saved", interval=0.2)
    phase("create_image -> available, disk saved")
    client.servers.delete(builder)
    wait_for(lambda: vms.vm(builder_id) is None, 60, "the builder torn down", interval=0.2)
    assert not first.overlay.exists() and disk.is_file()  # a copy, not the overlay
    phase("delete the builder")

    second = client.servers.create(name="qemu-from-image", server_type=ServerType(name="cx23"),
                                   image=Image(id=image_id), user_data=REPORT_MARKER).server
    second_id = second.id
    assert second_id is not None
    info = wait_for(lambda: vms.vm(second_id), 15, "the QEMU VM from the snapshot")
    assert info.backing == disk and info.ok, info

    def reported() -> str | None:
        text = serial_text(info)
        return text if "marker=" in text else None

    try:
        console = wait_for(reported, BOOT_TIMEOUT, "the marker on the console", interval=1.0)
    except AssertionError:
        print(serial_text(info)[-4000:])
        raise
    assert f"marker={marker}" in console, console[-2000:]
    phase("boot from the snapshot, marker on the console")

    client.images.delete(client.images.get_by_id(image_id))  # the server still reads it
    client.servers.delete(second)
    wait_for(lambda: vms.vm(second_id) is None, 60, "the VM torn down", interval=0.2)
    wait_for(lambda: not disk.exists(), 10, "the image's disk removed", interval=0.2)
    assert info.pid is not None and not process_alive(info.pid)
    assert not info.overlay.exists() and not info.seed.exists()
    assert not list(vms.images_dir.glob("*"))
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit()
                and "qemu-system" in _cmdline(p) and str(vms.state_dir) in _cmdline(p)]
    phase("delete the image and the server")
    print("phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in phases.items()))
