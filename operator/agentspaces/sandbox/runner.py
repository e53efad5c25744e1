"""The whole system on one machine: a real kube-apiserver + etcd, the Hetzner and
Cloudflare emulators, a real S3 endpoint (moto), simulated VMs (or, with
`vm_backend="qemu"`, real Debian 13 VMs under QEMU: sandbox/vmqemu.py), the operator,
the dashboard and the wake gateway (its own Caddy on the first address of the sandbox's
address range, which the class names as its wakeGateway).

`Sandbox.start()` brings everything up under one state directory and installs the
CRDs, a `sandbox` WorkspaceClass and its Secrets; `Sandbox.stop()` stops all of it.
The CLI runs this in a background process (`agentspaces sandbox up` / `down`).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import yaml

from agentspaces.controlplane import ControlPlane, free_port
from agentspaces.lifeline import OwnerWatch, die_with_parent, owner_from_env
from agentspaces.sandbox.cloudflare import CloudflareEmulator
from agentspaces.sandbox.hetzner import HetznerEmulator
from agentspaces.sandbox.vmqemu import QemuVms, build_image
from agentspaces.sandbox.vmsim import VmSimulator, find_caddy
from agentspaces.sandbox.vmsim_ips import LoopbackPool

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
OPERATOR_NAMESPACE = "agentspaces-system"
CLASS_NAME = "sandbox"
ZONE = "sandbox.test"
BUCKET = "agentspaces-sandbox"
HTTP_PORT = 8080
EXAMPLE_API_KEY = "sk-ant-sandbox-not-a-real-key"
VM_BACKENDS = ("simulator", "qemu")
AGENT_PORT = 9443  # the WorkspaceClass default (api.model)

# Faster than production so the walkthrough takes minutes, not hours.
OPERATOR_ENV = {
    "AGENTSPACES_POLL_INTERVAL": "3s",
    "AGENTSPACES_BOOT_POLL": "1s",
    "AGENTSPACES_INVENTORY_INTERVAL": "30s",
    "AGENTSPACES_AGENT_TIMEOUT": "5s",
    "AGENTSPACES_BACKUP_PART_MIB": "5",
    # /metrics on a free port (its log names it): 9090 may be a local Prometheus's own.
    "AGENTSPACES_METRICS_PORT": "0",
}

Progress = Callable[[str], None]


@dataclass
class SandboxInfo:
    """What `sandbox up` prints and what `sandbox down` needs; saved as sandbox.json."""

    state_dir: str
    kubeconfig: str
    hetzner_url: str
    cloudflare_url: str
    s3_url: str
    operator_pid: int
    serve_pid: int
    kubectl: str = "kubectl"
    zone: str = ZONE
    http_port: int = HTTP_PORT
    pids: list[int] = field(default_factory=list)
    vm: str = "simulator"
    dashboard_url: str = ""
    gateway_ip: str = ""

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> SandboxInfo:
        return cls(**json.loads(path.read_text()))


def _secret(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace}, "type": "Opaque",
            "stringData": data}


class Sandbox:
    def __init__(self, state_dir: Path, progress: Progress = print,
                 vm_backend: str = "simulator") -> None:
        if vm_backend not in VM_BACKENDS:
            raise ValueError(f"unknown VM backend {vm_backend!r} (one of {VM_BACKENDS})")
        self.state_dir = state_dir.resolve()
        self.progress = progress
        self.vm_backend = vm_backend
        self.plane: ControlPlane | None = None
        self.hetzner: HetznerEmulator | None = None
        self.cloudflare: CloudflareEmulator | None = None
        self.s3: Any = None
        self.vms: VmSimulator | QemuVms | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self.dashboard: subprocess.Popen[bytes] | None = None
        self.gateway: list[subprocess.Popen[bytes]] = []
        self.gateway_ip = ""
        self.info: SandboxInfo | None = None

    # lifecycle ------------------------------------------------------------------------

    def start(self) -> SandboxInfo:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> SandboxInfo:
        step = self.progress
        hetzner_token = "sandbox-hetzner-" + secrets.token_hex(8)
        cloudflare_token = "sandbox-cloudflare-" + secrets.token_hex(8)
        s3_key, s3_secret = "sandbox", secrets.token_hex(16)

        step("starting etcd and kube-apiserver (the first run builds them: ~5-20 min)")
        plane_dir = self.state_dir / "controlplane"
        shutil.rmtree(plane_dir, ignore_errors=True)
        self.plane = ControlPlane(workdir=plane_dir).start()

        gateway_ip, _, last = os.environ.get("AGENTSPACES_SANDBOX_IPS",
                                             "127.0.0.10-127.0.0.250").partition("-")
        # The first address answers for stopped workspaces (the wake gateway); VMs get
        # the rest.
        self.gateway_ip = gateway_ip
        first = _next_address(gateway_ip)
        if self.vm_backend == "qemu":
            # The workspace flavor: the software installed at build time at this
            # machine's speed, so a boot under TCG takes minutes, not half an hour.
            step("building or checking the Debian 13 workspace VM image "
                 "(the first build: ~10 min)")
            self.vms = QemuVms(self.state_dir, build_image(step, workspace=True),
                               ip_pool=LoopbackPool(first, last),
                               ports=(80, 443, HTTP_PORT, AGENT_PORT))
        else:
            self.vms = VmSimulator(self.state_dir, ip_pool=LoopbackPool(first, last))
        step("starting the Hetzner Cloud and Cloudflare emulators and the S3 endpoint")
        self.hetzner = HetznerEmulator(hetzner_token, boot_seconds=1.0).start()
        self.vms.attach(self.hetzner)
        self.cloudflare = CloudflareEmulator(zones=(ZONE,),
                                             tokens={cloudflare_token: None}).start()
        self.s3 = _start_s3()
        s3_url = f"http://127.0.0.1:{self.s3._port}"
        _create_bucket(s3_url, s3_key, s3_secret)

        step("installing the CRDs, the sandbox WorkspaceClass and its Secrets")
        kubectl = self.plane.kubectl_run
        kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds" / "agentspaces.dev.yaml"))
        kubectl("wait", "--for=condition=Established", "--timeout=60s",
                "crd/workspaces.agentspaces.dev", "crd/workspaceclasses.agentspaces.dev")
        docs = self._class_documents(hetzner_token, cloudflare_token, s3_url, s3_key, s3_secret)
        kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        kubeconfig = self.state_dir / "kubeconfig"
        shutil.copy(self.plane.admin_kubeconfig, kubeconfig)
        kubeconfig.chmod(0o600)

        step("starting the operator")
        self.operator = _start_operator(kubeconfig, self.state_dir / "operator.log")
        step(f"starting the wake gateway on {self.gateway_ip}:{HTTP_PORT}")
        self.gateway = _start_gateway(kubeconfig, self.state_dir / "gateway", self.gateway_ip)
        step("starting the dashboard")
        self.dashboard, dashboard_url = _start_dashboard(kubeconfig,
                                                         self.state_dir / "dashboard.log")
        self.info = SandboxInfo(
            state_dir=str(self.state_dir), kubeconfig=str(kubeconfig),
            hetzner_url=self.hetzner.url, cloudflare_url=self.cloudflare.url, s3_url=s3_url,
            operator_pid=self.operator.pid, serve_pid=os.getpid(),
            kubectl=str(self.plane.kubectl),
            pids=[*self.plane.pids, self.dashboard.pid, *(p.pid for p in self.gateway)],
            vm=self.vm_backend, dashboard_url=dashboard_url, gateway_ip=self.gateway_ip)
        self.info.save(self.state_dir / "sandbox.json")
        return self.info

    def stop(self) -> None:
        """Stop everything this sandbox started; safe to call more than once."""
        if self.operator is not None and self.operator.poll() is None:
            _terminate(self.operator)
        if self.dashboard is not None and self.dashboard.poll() is None:
            _terminate(self.dashboard)
        for proc in self.gateway:
            if proc.poll() is None:
                _terminate(proc)
        if self.vms is not None:
            self.vms.stop_all()
        for emulator in (self.hetzner, self.cloudflare):
            if emulator is not None:
                emulator.stop()
        if self.s3 is not None:
            self.s3.stop()
            self.s3 = None
        if self.plane is not None:
            self.plane.stop()
            self.plane = None

    # the class ------------------------------------------------------------------------

    def _class_documents(self, hetzner_token: str, cloudflare_token: str, s3_url: str,
                         s3_key: str, s3_secret: str) -> list[dict[str, Any]]:
        assert self.hetzner is not None and self.cloudflare is not None
        ns = OPERATOR_NAMESPACE
        return [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            _secret("sandbox-hetzner", ns, {"token": hetzner_token}),
            _secret("sandbox-cloudflare", ns, {"token": cloudflare_token}),
            _secret("sandbox-r2", ns, {"accessKeyId": s3_key, "secretAccessKey": s3_secret}),
            _secret("sandbox-backup-key", ns,
                    {"key": base64.b64encode(os.urandom(32)).decode()}),
            # The example Workspace's API key (a placeholder: nothing calls Anthropic here).
            _secret("anthropic", "default", {"apiKey": EXAMPLE_API_KEY}),
            {"apiVersion": "agentspaces.dev/v1alpha1", "kind": "WorkspaceClass",
             "metadata": {"name": CLASS_NAME},
             "spec": {
                 "hetzner": {"tokenSecretRef": {"name": "sandbox-hetzner"},
                             "endpoint": self.hetzner.url},
                 "server": {"type": "cx23", "location": "fsn1", "image": self._image()},
                 "dns": {"zoneName": ZONE, "tokenSecretRef": {"name": "sandbox-cloudflare"},
                         "endpoint": self.cloudflare.url},
                 # Plain HTTP on a high port: no ACME and no root needed on a laptop.
                 "tls": {"mode": "none", "httpPort": HTTP_PORT},
                 "storage": {"endpoint": s3_url, "bucket": BUCKET, "keep": 3,
                             "credentialsSecretRef": {"name": "sandbox-r2"}},
                 "encryption": {"keySecretRef": {"name": "sandbox-backup-key"}},
                 "idle": {"timeout": "2m", "grace": "30s", "agentBusyCap": "6h"},
                 # Stopped workspaces' names point here; opening one wakes it.
                 "wakeGateway": {"ipv4": self.gateway_ip},
             }},
        ]


    def _image(self) -> str:
        # QEMU boots the Debian 13 image (scripts/build-vm-image.sh), so the class asks for
        # the OS profile whose user-data fits it; the simulator runs no OS of its own.
        return "debian-13" if self.vm_backend == "qemu" else "ubuntu-24.04"


# --- helpers -----------------------------------------------------------------------------

def _start_s3() -> Any:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    return server


def _create_bucket(url: str, key: str, secret: str) -> None:
    client = boto3.client("s3", endpoint_url=url, aws_access_key_id=key,
                          aws_secret_access_key=secret, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)


def _start_operator(kubeconfig: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **OPERATOR_ENV, "KUBECONFIG": str(kubeconfig),
           "AGENTSPACES_NAMESPACE": OPERATOR_NAMESPACE}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    with open(log_path, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "agentspaces.cli", "run", "--verbose"],
                                stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                preexec_fn=die_with_parent)


DASHBOARD_PORT = 8090


def _start_dashboard(kubeconfig: Path, log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`agentspaces dashboard` on loopback with the sandbox's kubeconfig (port 8090 when
    free). Without its front-end files (scripts/fetch-dashboard-assets.sh) it exits at
    once and says so in dashboard.log; the sandbox runs on without it."""
    try:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", DASHBOARD_PORT))
        port = DASHBOARD_PORT
    except OSError:
        port = free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agentspaces.cli", "dashboard",
                                 "--port", str(port), "--kubeconfig", str(kubeconfig)],
                                stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                preexec_fn=die_with_parent)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.2)
    log.warning("the dashboard did not start; see %s", log_path)
    return proc, ""


def _next_address(address: str) -> str:
    return str(ipaddress.ip_address(address) + 1)


def _start_gateway(kubeconfig: Path, state: Path, bind: str) -> list[subprocess.Popen[bytes]]:
    """The wake gateway as in manifests/gateway.yaml: a Caddy whose admin API is on
    loopback, and `agentspaces gateway`, which configures it and answers behind it."""
    state.mkdir(parents=True, exist_ok=True)
    admin = f"127.0.0.1:{free_port()}"
    initial = state / "caddy-initial.json"
    initial.write_text(json.dumps({"admin": {"listen": admin}}) + "\n")
    caddy_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(state),
                 "XDG_DATA_HOME": str(state / "data"), "XDG_CONFIG_HOME": str(state / "config")}
    procs: list[subprocess.Popen[bytes]] = []
    with open(state / "caddy.log", "ab") as out:
        procs.append(subprocess.Popen(
            [find_caddy(), "run", "--config", str(initial)], stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=caddy_env,
            start_new_session=True, preexec_fn=die_with_parent))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    with open(state / "gateway.log", "ab") as out:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "agentspaces.cli", "gateway", "--caddy-admin", admin,
             "--listen", f"127.0.0.1:{free_port()}", "--bind", bind,
             "--kubeconfig", str(kubeconfig)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, preexec_fn=die_with_parent))
    return procs


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


def serve(state_dir: Path, vm_backend: str = "simulator") -> int:
    """Run the sandbox in the foreground until SIGTERM/SIGINT (used by `sandbox up`)."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    ready = state_dir / "ready"
    ready.unlink(missing_ok=True)

    def progress(message: str) -> None:
        print(f"[sandbox {time.strftime('%H:%M:%S')}] {message}", flush=True)

    sandbox = Sandbox(state_dir, progress, vm_backend)
    # Started for a test run: go down with it, even when it is killed outright.
    owner = OwnerWatch(owner_from_env())
    try:
        sandbox.start()
        ready.write_text("ok\n")
        progress("ready")
        while not done.wait(1.0):
            if owner.gone():
                progress(f"process {owner.owner} that owns this sandbox is gone")
                break
            if sandbox.operator is not None and sandbox.operator.poll() is not None:
                progress("the operator exited; restarting it (see operator.log)")
                sandbox.operator = _start_operator(Path(sandbox.info.kubeconfig),  # type: ignore[union-attr]
                                                   state_dir / "operator.log")
    except Exception as exc:  # reported to `sandbox up`, which shows the log
        (state_dir / "failed").write_text(f"{type(exc).__name__}: {exc}\n")
        progress(f"failed: {type(exc).__name__}: {exc}")
        return 1
    finally:
        progress("stopping")
        sandbox.stop()
        ready.unlink(missing_ok=True)
        progress("stopped")
    return 0
