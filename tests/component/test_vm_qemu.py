"""Real VMs under QEMU: a server created through the Hetzner emulator boots the Debian 13
cloud image (scripts/build-vm-image.sh, cached outside the repo) under TCG, the guest's
own cloud-init runs exactly the user-data sent with the create call, the guest answers
on its forwarded port at the loopback address the emulator reports, its sshd answers on
the forwarded ssh port, Hetzner's metadata address reaches the host's stand-in, and
deleting the server leaves no QEMU process, overlay or seed.

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
