"""The real-VM tier: one Workspace, all through `kubectl apply` against the real
kube-apiserver and the real operator, on a real Debian 13 VM under QEMU (TCG) booted
from the operator's own user-data by the guest's own cloud-init.

Host-side, on loopback only (the guest reaches them at 10.0.2.2): the Hetzner and
Cloudflare emulators, moto's S3 (the class's `storage.vmEndpoint`), a git repository
over HTTPS with a token, a container registry over HTTPS with basic auth serving a
Debian 13 devcontainer image (scripts/build-container-image.sh), both certified by a
test CA the class trusts (`trust.caBundle`), a stand-in for the metadata service at
169.254.169.254 and the scripted Messages API.

Apply -> the VM boots -> the bootstrap finishes -> the agent is delivered and verified
-> the clone (token) -> `devcontainer up` (private registry) -> AgentReady=True (not
Simulated) -> Caddy answers the workspace host (401 without the password, 200 and the
CloudCLI page with it), a dev server in the container answers on its port host, a port
nobody listens on gets no certificate -> the metadata address is unreachable from the
VM and the container -> no secret in cloud-init's logs or the journal -> the real
`claude -p` in the container moves the agent state -> idle stop backs up to S3 and
removes the VM -> wake boots a new VM with the file back and `claude --continue` sends
the earlier conversation -> delete leaves no QEMU process, overlay, server, DNS record
or object.

Then a WorkspaceImage baked on a real builder (the bake user-data, the guest's own
power-off, the builder's disk kept as the snapshot) -> a warm-pool server booted from it
-> a workspace that claims that server and becomes usable on it -> nothing left.

Never skipped: without a working QEMU it fails, saying so. `pytest -s` prints the
timelines (apply -> agent -> devcontainer -> usable; stop -> backup; wake -> usable;
bake -> pool server -> claim -> usable) and the bootstrap's own step record;
benchmarks/realvm_starts.py tabulates them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hcloud import Client as HcloudClient

from agentspaces.controlplane import ControlPlane
from agentspaces.lifeline import process_alive
from agentspaces.reconcile import pool_policy
from agentspaces.sandbox.vmqemu import (
    BaseImage,
    QemuError,
    QemuVms,
    build_image,
    kernel_crashes,
    serial_text,
)
from agentspaces.sandbox.vmsim_ips import LoopbackPool
from agentspaces.vmconfig.bake import BAKED_MARKER
from agentspaces.vmconfig.userdata import dump_yaml, read_write_files
from tests.conftest import Kubectl
from tests.realvm.harness import (
    SSH_USER,
    Front,
    Guest,
    Timeline,
    bootstrap_steps,
    make_ssh_key,
)
from tests.support.container_image import workspace_image
from tests.support.git_server import GitServer, make_repository
from tests.support.messages_api import MessagesAPI, Text, bash
from tests.support.metadata_service import MetadataService
from tests.support.oci_registry import OciRegistry
from tests.support.operator import OperatorProcess
from tests.support.stack import (
    S3,
    ZONE,
    Clouds,
    condition,
    install_class,
    running_clouds,
    running_s3,
    secret,
    start_operator,
)
from tests.support.tls_servers import GUEST_HOST, ServerPki, make_pki
from tests.support.waiting import wait_for

# Three boots under TCG, from the workspace image (scripts/build-vm-image.sh
# --workspace: the software the bootstrap installs is in place at its pinned versions,
# so its steps skip it). From the stock image, the npm step alone takes over 16 minutes
# here: CloudCLI's native modules compile from source when GitHub, where their prebuilt
# binaries are, is out of reach.
pytestmark = [pytest.mark.realvm, pytest.mark.timeout(60 * 60)]

CLASS = "realvm"
NAME = "demo"
BROKEN = "broken"  # a workspace whose bootstrap is broken on purpose (_break_npm_step)
MISSING_PACKAGE = "@agentspaces-realvm/no-such-package@1"
IP_FIRST, IP_LAST = "127.0.7.10", "127.0.7.40"  # no other tier uses 127.0.7.x
HTTP_PORT, HTTPS_PORT, AGENT_PORT, SSH_PORT = 18080, 18443, 9443, 2222
DEV_PORT, DEAD_PORT = 8000, 8999
READY_TIMEOUT = 25 * 60   # apply (or wake) -> AgentReady=True, TCG
MAX_KERNEL_CRASHES = 3     # per server, each followed by a reboot
STOP_TIMEOUT = 6 * 60     # idle timeout 1m -> backup -> server deleted
DELETE_TIMEOUT = 5 * 60
REPO_TOKEN = "ghp_realvm" + secrets.token_hex(12)
REGISTRY_USER, REGISTRY_PASSWORD = "puller", "reg-" + secrets.token_hex(12)
API_KEY = "sk-ant-" + secrets.token_hex(6)  # short: Claude remembers keys by 20 chars
CODEWORD = "heliotrope-" + secrets.token_hex(3)
PROMPT = "Run the scripted check, then tell me the codeword."
PROMPT_AFTER_WAKE = "What was the codeword again?"
LONG_IDLE = {"timeout": "60m", "grace": "0s"}
SHORT_IDLE = {"timeout": "1m", "grace": "0s"}


# --- the rig ------------------------------------------------------------------------------

@dataclass
class Rig:
    plane: ControlPlane
    kubectl: Kubectl
    namespace: str
    state: Path
    clouds: Clouds
    vms: QemuVms
    s3: S3
    pki: ServerPki
    git: GitServer
    registry: OciRegistry
    metadata: MetadataService
    api: MessagesAPI
    operator: OperatorProcess
    ssh_key: Path
    ssh_public: str

    def ws(self, name: str = NAME) -> dict[str, Any] | None:
        return self.kubectl.get_json("workspace", name, "-n", self.namespace)

    def password(self, name: str = NAME) -> str:
        data = self.kubectl("get", "secret", f"{name}-access", "-n", self.namespace, "-o",
                            "jsonpath={.data.password}")
        return base64.b64decode(data).decode()

    def hetzner(self) -> HcloudClient:
        return HcloudClient(token=self.clouds.hetzner_token,
                            api_endpoint=self.clouds.hetzner.url, poll_interval=0.5)

    def dns_records(self) -> list[dict[str, Any]]:
        with httpx.Client(base_url=self.clouds.cloudflare.url, trust_env=False, timeout=10,
                          headers={"Authorization": f"Bearer {self.clouds.cloudflare_token}"}
                          ) as cf:
            zones = cf.get("/zones", params={"name": ZONE}).json()["result"]
            records = cf.get(f"/zones/{zones[0]['id']}/dns_records",
                             params={"per_page": 1000}).json()
            return list(records["result"])

    def guest(self, ws: dict[str, Any], user: str = SSH_USER) -> Guest:
        return Guest(ws["status"]["server"]["ipv4"], SSH_PORT, self.ssh_key, user)

    def front(self, ws: dict[str, Any]) -> Front:
        return Front(ws["status"]["server"]["ipv4"], HTTPS_PORT,
                     f"{ws['status']['hostname']}.{ZONE}")


def _image() -> BaseImage:
    try:
        return build_image(workspace=True)
    except QemuError as exc:
        pytest.fail(f"the real-VM tier needs QEMU on this machine: {exc}", pytrace=False)


def _class_spec(rig_s3: S3, pki: ServerPki) -> dict[str, Any]:
    port = rig_s3.url.rsplit(":", 1)[1]
    return {
        "server": {"type": "cx23", "location": "fsn1", "image": "debian-13"},
        "tls": {"mode": "internal", "httpPort": HTTP_PORT, "httpsPort": HTTPS_PORT},
        "trust": {"caBundle": pki.ca_pem},
        "storage": {"endpoint": rig_s3.url, "vmEndpoint": f"http://{GUEST_HOST}:{port}",
                    "bucket": rig_s3.bucket, "keep": 3,
                    "credentialsSecretRef": {"name": f"{CLASS}-r2"}},
        "devcontainer": {"claudeCode": "npm"},
        "idle": {"timeout": "60m", "grace": "0s", "agentBusyCap": "6h"},
    }


def _break_npm_step(server_name: str, user_data: str) -> str:
    """The user-data of a server named BROKEN*, with a bootstrap whose npm step installs
    a package that does not exist; every other server's, as the operator sent it."""
    if not server_name.startswith(BROKEN):
        return user_data
    doc = yaml.safe_load(user_data)
    for entry in doc["write_files"]:
        if entry["path"].endswith("/bootstrap.sh"):
            script = read_write_files(user_data)[entry["path"]].content.decode()
            assert "NPM_PACKAGES=(" in script
            entry["content"] = script.replace("NPM_PACKAGES=(",
                                              f'NPM_PACKAGES=("{MISSING_PACKAGE}" ', 1)
            entry.pop("encoding", None)
    return "#cloud-config\n" + dump_yaml(doc)


@pytest.fixture(scope="module")
def rig(control_plane: ControlPlane, kubectl: Kubectl,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp_path = tmp_path_factory.mktemp("realvm")
    namespace = f"t-{secrets.token_hex(4)}"
    kubectl("create", "namespace", namespace)
    image = _image()
    container_image = workspace_image()
    pki = make_pki(tmp_path / "pki")
    repos = tmp_path / "repos"
    repos.mkdir()
    make_repository(repos, NAME, {"README.md": "# demo\n", "index.html": "<h1>demo</h1>\n"})
    ssh_key, ssh_public = make_ssh_key(tmp_path)
    with ExitStack() as stack:
        git = stack.enter_context(GitServer(repos, pki,
                                            credentials=("x-access-token", REPO_TOKEN)))
        registry = stack.enter_context(OciRegistry(pki, REGISTRY_USER, REGISTRY_PASSWORD,
                                                   [container_image]))
        metadata = stack.enter_context(MetadataService("canary-" + secrets.token_hex(8)))
        api = stack.enter_context(MessagesAPI([bash("sleep 20", "the scripted check"),
                                               Text(f"The codeword is {CODEWORD}."),
                                               Text(f"It was {CODEWORD}.")]))
        s3 = stack.enter_context(running_s3())
        clouds = stack.enter_context(running_clouds())
        vms = QemuVms(tmp_path / "state", image, ip_pool=LoopbackPool(IP_FIRST, IP_LAST),
                      ports=(HTTP_PORT, HTTPS_PORT, AGENT_PORT), ssh_port=SSH_PORT,
                      metadata=("127.0.0.1", metadata.port), edit_user_data=_break_npm_step)
        stack.callback(vms.stop_all)
        vms.attach(clouds.hetzner)
        install_class(kubectl, clouds, CLASS, storage=s3.storage(),
                      extra=_class_spec(s3, pki))
        operator = start_operator(control_plane.admin_kubeconfig, tmp_path, extra_env={
            # Each poll is a TLS request the emulated guest pays for: the default 5 s
            # boot poll is closer than the other tiers' 0.5 s.
            "AGENTSPACES_BOOT_POLL": "3s",
            "AGENTSPACES_POLL_INTERVAL": "2s", "AGENTSPACES_AGENT_TIMEOUT": "15s",
            "AGENTSPACES_BACKUP_PART_MIB": "5"})
        stack.callback(operator.stop)
        yield Rig(control_plane, kubectl, namespace, tmp_path, clouds, vms, s3, pki, git,
                  registry, metadata, api, operator, ssh_key, ssh_public)


def _apply_workspace(rig: Rig, name: str = NAME, class_name: str = CLASS) -> None:
    ns = rig.namespace
    docker_config = json.dumps(rig.registry.docker_config())
    docs: list[dict[str, Any]] = [
        secret("repo-token", ns, {"token": REPO_TOKEN}),
        secret("anthropic", ns, {"apiKey": API_KEY}),
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
         "metadata": {"name": "registry", "namespace": ns},
         "stringData": {".dockerconfigjson": docker_config}},
        {"apiVersion": "agentspaces.dev/v1alpha1", "kind": "Workspace",
         "metadata": {"name": name, "namespace": ns},
         "spec": {
             "className": class_name,
             "repository": {"url": rig.git.repository_url(NAME),
                            "credentialsSecretRef": {"name": "repo-token"}},
             "devcontainer": {
                 "image": rig.registry.images["agentspaces/devcontainer"].reference(
                     rig.registry.guest_address),
                 "registryCredentialsSecretRef": {"name": "registry"}},
             "agent": {"apiKeySecretRef": {"name": "anthropic"}},
             "sshKeys": [rig.ssh_public],
             "idle": LONG_IDLE,
             # Retain (the default) would keep the backups after the delete, by design.
             "persistence": {"onDelete": "Delete"},
         }},
    ]
    rig.kubectl.apply(yaml.safe_dump_all(docs))


def _wait_ready(rig: Rig, timeline: Timeline, what: str, name: str = NAME
                ) -> dict[str, Any]:
    """Until AgentReady=True, marking when the agent first answered (the loader, then the
    agent itself), when devcontainer up began, and when it was done."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        ws = rig.ws(name)
        timeline.observe(ws)
        status = (ws or {}).get("status") or {}
        if server_id := status.get("server", {}).get("id"):
            timeline.mark(f"{what}: server created")
            _check_guest_kernel(rig, int(server_id), timeline, what)
        ready = condition(ws, "AgentReady")
        message = ready.get("message") or ""
        if ready.get("reason") == "Booting":
            timeline.mark(f"{what}: agent answering")
            if "awaiting-agent" not in message:
                timeline.mark(f"{what}: agent delivered and running")
            if "starting-devcontainer" in message:
                timeline.mark(f"{what}: devcontainer up started")
        if ready.get("status") == "True":
            timeline.mark(f"{what}: AgentReady")
            return ws  # type: ignore[return-value]
        if ready.get("reason") in ("BootFailed", "DevcontainerRefused"):
            # For a person debugging: the VMs stay up this long to ssh into.
            time.sleep(float(os.environ.get("AGENTSPACES_REALVM_HOLD_ON_FAILURE", "0")))
            raise AssertionError(f"{what}: {ready}\n{_post_mortem(rig)}")
        time.sleep(2)
    raise AssertionError(f"{what}: no AgentReady=True in {READY_TIMEOUT}s: "
                         f"{condition(rig.ws(name), 'AgentReady')}\n{_post_mortem(rig)}")


def _check_guest_kernel(rig: Rig, server_id: int, timeline: Timeline, what: str) -> None:
    """A guest whose kernel crashed reboots by itself (vmqemu's CRASH_REBOOTS); once is
    TCG's rare boot-time oops, again and again is a broken guest: fail now, not at the
    ready timeout."""
    info = rig.vms.vm(server_id)
    crashes = kernel_crashes(serial_text(info)) if info else 0
    if crashes:
        timeline.mark(f"{what}: guest kernel crashed and rebooted")
    if crashes >= MAX_KERNEL_CRASHES:
        raise AssertionError(f"{what}: the guest's kernel crashed {crashes} times\n"
                             f"{_post_mortem(rig)}")


def _post_mortem(rig: Rig) -> str:
    """The guest's console, its agent's and Docker's journal (over ssh, when it answers)
    and the operator's log tails, for a failure message."""
    parts = []
    for info in rig.vms.vms.values():
        try:
            console = info.serial_log.read_text(errors="replace")[-6000:]
        except OSError:
            console = ""
        parts.append(f"--- console of server {info.server_id} ---\n{console}")
        if info.ip:
            try:
                journal = Guest(info.ip, SSH_PORT, rig.ssh_key).run(
                    "sudo journalctl -b --no-pager -o short-monotonic -u agentspaces-agent "
                    "-u docker -u agentspaces-caddy -u agentspaces-cloudcli "
                    "| grep -v 'agentspaces_vm.server: .* /v1/' | tail -n 150",
                    timeout=60, check=False).stdout
            except subprocess.TimeoutExpired:
                journal = "(ssh timed out)"
            parts.append(f"--- journal of server {info.server_id} ---\n{journal}")
    parts.append(f"--- operator log ---\n{rig.operator.log()[-4000:]}")
    return "\n".join(parts)


def _usable(rig: Rig, ws: dict[str, Any], password: str, timeline: Timeline,
            what: str) -> httpx.Response:
    front = rig.front(ws)

    def page() -> httpx.Response | None:
        try:
            response = front.get(password=password)
        except httpx.TransportError:
            return None
        return response if response.status_code == 200 else None

    response = wait_for(page, 120, "the workspace page through Caddy", interval=2)
    timeline.mark(f"{what}: usable (Caddy 200 with the password)")
    return response


def _agent_state(rig: Rig) -> str | None:
    activity = ((rig.ws() or {}).get("status") or {}).get("activity") or {}
    return activity.get("agentState")


def _claude(guest: Guest, container: str, rig: Rig, args: str,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    api_port = rig.api.url.rsplit(":", 1)[1]
    env = {"ANTHROPIC_BASE_URL": f"http://{GUEST_HOST}:{api_port}", "DISABLE_TELEMETRY": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}
    return guest.in_container(container, f"claude {args}", env=env,
                              workdir=f"/workspaces/{NAME}", timeout=timeout, check=False)


# --- the scenario ------------------------------------------------------------------------

def test_a_failed_bootstrap_step_is_named_in_the_condition(rig: Rig) -> None:
    """A bootstrap step that fails on the real VM (npm, asked for a package that does not
    exist) becomes AgentReady=False BootFailed naming that step; delete then cleans up."""
    _apply_workspace(rig, BROKEN)
    started = time.monotonic()

    def failed() -> dict[str, Any] | None:
        ready = condition(rig.kubectl.get_json("workspace", BROKEN, "-n", rig.namespace),
                          "AgentReady")
        return ready if ready.get("reason") == "BootFailed" else None

    try:
        ready = wait_for(failed, READY_TIMEOUT, "AgentReady=False BootFailed", interval=3)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_post_mortem(rig)}") from None
    print(f"\nbroken bootstrap: BootFailed {time.monotonic() - started:.0f}s after apply: "
          f"{ready['message']}", flush=True)
    assert ready["status"] == "False"
    assert "VM bootstrap failed at npm" in ready["message"], ready
    ws = rig.kubectl.get_json("workspace", BROKEN, "-n", rig.namespace)
    assert ws is not None
    guest = rig.guest(ws)
    wait_for(guest.reachable, 120, "ssh to the broken guest", interval=3)
    record = guest.run("sudo cat /var/lib/agentspaces/bootstrap").stdout.strip()
    assert record == "failed npm", record
    output = guest.run("sudo cat /var/log/cloud-init-output.log").stdout
    assert MISSING_PACKAGE.rsplit("@", 1)[0] in output  # npm's own error names it
    server_id = int(ws["status"]["server"]["id"])
    rig.kubectl("delete", "workspace", BROKEN, "-n", rig.namespace,
                f"--timeout={DELETE_TIMEOUT}s")
    wait_for(lambda: rig.vms.vm(server_id) is None, 60, "the broken VM torn down")
    assert rig.hetzner().servers.get_all() == []


def test_a_workspace_on_a_real_vm(rig: Rig) -> None:
    timeline, wake = Timeline(), Timeline()
    figures: list[str] = []
    try:
        _scenario(rig, timeline, wake, figures)
    finally:
        print("\n" + timeline.report("real VM, first boot") + "\n" + wake.report("wake")
              + "\n" + "\n".join(figures), flush=True)


def _scenario(rig: Rig, timeline: Timeline, wake: Timeline, figures: list[str]) -> None:
    _apply_workspace(rig)
    timeline.mark("applied")
    ws = _wait_ready(rig, timeline, "first boot")
    status = ws["status"]
    ready = condition(ws, "AgentReady")
    assert ready["reason"] == "AgentReady", ready  # not Simulated: a real devcontainer
    server_id = int(status["server"]["id"])
    info = rig.vms.vm(server_id)
    assert info is not None and info.running, info
    guest = rig.guest(ws)
    wait_for(guest.reachable, 120, "ssh to the guest with the workspace's key", interval=3)
    boot_record = bootstrap_steps(guest)
    figures.append(f"bootstrap record (first boot):\n{boot_record}")
    assert "agentspaces-bootstrap: done" in boot_record, boot_record

    # The clone used the token; the image came from the private registry.
    assert any(r.user == "x-access-token" for r in rig.git.requests), rig.git.requests
    assert rig.registry.pulled(rig.registry.images["agentspaces/devcontainer"])
    container = guest.container()
    readme = guest.in_container(container, f"cat /workspaces/{NAME}/README.md").stdout
    assert readme == "# demo\n"

    # Caddy: the workspace host behind the login, CloudCLI behind it.
    password = rig.password()
    front = rig.front(ws)
    page = _usable(rig, ws, password, timeline, "first boot")
    assert front.get().status_code == 401
    assert front.get(password="not-" + password).status_code == 401
    assert "<html" in page.text.lower() and "cloudcli" in page.text.lower(), page.text[:500]

    # A dev server in the container answers on its port host; a dead port gets nothing.
    guest.in_container(container, f"python3 -m http.server {DEV_PORT} >/tmp/dev.log 2>&1",
                       workdir=f"/workspaces/{NAME}", detach=True)
    dev_host = front.port_host(DEV_PORT)

    def dev_page() -> httpx.Response | None:
        try:
            response = front.get(dev_host, "/index.html", password=password)
        except httpx.TransportError:
            return None
        return response if response.status_code == 200 else None

    served = wait_for(dev_page, 90, f"the dev server at {dev_host}", interval=2)
    assert served.text == "<h1>demo</h1>\n"
    assert front.get(dev_host, "/index.html").status_code == 401
    with pytest.raises(httpx.TransportError):  # no certificate for a port nobody serves
        front.get(front.port_host(DEAD_PORT), password=password)

    # The metadata address: routed to the stand-in (eth1), but blocked after boot, for
    # the VM's own processes and for the container.
    route = guest.run("ip -4 route get 169.254.169.254").stdout
    assert "dev eth1" in route, route
    before = len(rig.metadata.requests)
    from_vm = guest.run("curl -sS -m 10 http://169.254.169.254/hetzner/v1/userdata",
                        check=False)
    assert from_vm.returncode != 0 and rig.metadata.canary not in from_vm.stdout, from_vm
    from_container = guest.in_container(
        container, "curl -sS -m 10 http://169.254.169.254/hetzner/v1/userdata", check=False)
    assert from_container.returncode != 0, from_container
    assert len(rig.metadata.requests) == before, rig.metadata.requests
    rules = guest.run("sudo iptables -w -S OUTPUT").stdout
    assert "-d 169.254.169.254/32 -j REJECT" in rules, rules

    # The real Claude Code in the container: the hooks move the agent state.
    notes = f"written before the stop {secrets.token_hex(8)}\n"
    guest.in_container(container, f"printf %s {shlex.quote(notes)} > /workspaces/{NAME}/notes.txt")
    states: list[str] = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            state = _agent_state(rig)
            if state and (not states or states[-1] != state):
                states.append(state)
            time.sleep(1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        started = time.monotonic()
        run = _claude(guest, container, rig, f"-p {shlex.quote(PROMPT)} --allowedTools Bash")
        figures.append(f"claude -p in the container: {time.monotonic() - started:.1f}s")
        time.sleep(6)
    finally:
        watching.set()
        watcher.join(timeout=10)
    assert run.returncode == 0 and CODEWORD in run.stdout, run.stdout + run.stderr
    assert "working" in states, states
    turns = [r for r in rig.api.requests if r.is_turn]
    assert turns and PROMPT in turns[0].text(), [r.path for r in rig.api.requests]

    # No secret value in cloud-init's logs, the journal or the agent's logs.
    logs = guest.run("sudo sh -c 'cat /var/log/cloud-init*.log; journalctl -b --no-pager "
                     "-o cat; journalctl -b --no-pager -o cat -u agentspaces-agent'",
                     timeout=300).stdout
    assert len(logs) > 10_000 and "agentspaces-bootstrap: done" in logs
    secret_values = {"repository token": REPO_TOKEN, "registry password": REGISTRY_PASSWORD,
                     "API key": API_KEY, "access password": password,
                     "S3 secret key": rig.s3.secret_key,
                     "Hetzner token": rig.clouds.hetzner_token,
                     "Cloudflare token": rig.clouds.cloudflare_token}
    leaked = [what for what, value in secret_values.items() if value in logs]
    assert leaked == [], f"in the VM's logs: {leaked}"

    # Idle stop: a real backup to S3, the VM gone.
    rig.kubectl("patch", "workspace", NAME, "-n", rig.namespace, "--type", "merge", "-p",
                json.dumps({"spec": {"idle": SHORT_IDLE}}))
    stop_asked = time.monotonic()
    stopped = wait_for(lambda: (lambda w: w if ((w or {}).get("status") or {}).get("phase")
                                == "Stopped" else None)(rig.ws()),
                       STOP_TIMEOUT, "the idle stop", interval=2)
    timeline.marks["idle timeout patched -> Stopped (timeout 1m)"] = \
        time.monotonic() - stop_asked
    status = stopped["status"]
    assert status.get("stoppedBy") == "inactivity", status
    assert condition(stopped, "BackupSucceeded")["status"] == "True", status
    backup_object = status["backup"]["object"]
    uid = stopped["metadata"]["uid"]
    assert uid in backup_object and backup_object in rig.s3.object_keys()
    assert rig.hetzner().servers.get_all() == []
    wait_for(lambda: rig.vms.vm(server_id) is None, 60, "the first VM torn down")
    assert info.pid is not None and not process_alive(info.pid)
    assert not info.overlay.exists() and not info.seed.exists()

    # Wake: a new VM, the file back, the conversation continues.
    rig.kubectl("patch", "workspace", NAME, "-n", rig.namespace, "--type", "merge", "-p",
                json.dumps({"spec": {"idle": LONG_IDLE}}))
    wake.start = time.monotonic()
    rig.kubectl("annotate", "workspace", NAME, "-n", rig.namespace,
                f"agentspaces.dev/wake={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
                "--overwrite")
    ws = _wait_ready(rig, wake, "wake")
    new_id = int(ws["status"]["server"]["id"])
    assert new_id != server_id
    assert condition(ws, "BackupRestored")["reason"] == "Restored", ws["status"]
    _usable(rig, ws, rig.password(), wake, "wake")
    guest = rig.guest(ws)
    wait_for(guest.reachable, 120, "ssh to the woken guest", interval=3)
    figures.append(f"bootstrap record (wake):\n{bootstrap_steps(guest)}")
    container = guest.container()
    assert guest.in_container(container, f"cat /workspaces/{NAME}/notes.txt").stdout == notes
    before_continue = len(rig.api.requests)
    resumed = _claude(guest, container, rig, f"--continue -p {shlex.quote(PROMPT_AFTER_WAKE)}")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    later = [r for r in rig.api.requests[before_continue:] if r.is_turn]
    assert later, "claude --continue sent no turn"
    assert PROMPT in later[0].text() and PROMPT_AFTER_WAKE in later[0].text(), \
        later[0].text()[-2000:]
    assert CODEWORD in later[0].text()  # the earlier answer, from the restored transcript
    new_info = rig.vms.vm(new_id)
    assert new_info is not None

    # Delete: nothing left anywhere.
    started = time.monotonic()
    rig.kubectl("delete", "workspace", NAME, "-n", rig.namespace,
                f"--timeout={DELETE_TIMEOUT}s")
    timeline.marks["delete"] = time.monotonic() - started
    assert rig.hetzner().servers.get_all() == []
    host = f"{ws['status']['hostname']}.{ZONE}"
    assert [r for r in rig.dns_records() if host in r["name"]] == []
    assert [k for k in rig.s3.object_keys() if uid in k] == []
    wait_for(lambda: rig.vms.vm(new_id) is None, 60, "the second VM torn down")
    assert new_info.pid is not None and not process_alive(new_info.pid)
    assert not new_info.overlay.exists() and not new_info.seed.exists()
    assert not _qemu_processes(rig.state)


def _qemu_processes(state: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and str(state).encode() in cmdline:
            found.append(int(entry.name))
    return [pid for pid in found if process_alive(pid)]



# --- a baked image and a warm pool on real VMs --------------------------------------------

IMAGE = "realvm-image"
POOL_CLASS = "realvm-pool"
POOLED = "pooled"
BAKE_TIMEOUT = 30 * 60  # apply -> WorkspaceImage Ready, TCG


def test_a_baked_image_and_a_warm_pool_server_on_real_vms(rig: Rig) -> None:
    """The operator bakes a WorkspaceImage on a real builder VM (the bake user-data's own
    power-off, the snapshot as the builder's disk), a class's warm-pool server boots that
    snapshot to `awaiting-claim`, and a workspace claims it: the claim's config, seeds
    and SSH key land on the real guest, and the workspace becomes usable on that very
    server. Shrinking the pool, deleting the class and the image leave nothing."""
    timeline, claim = Timeline(), Timeline()
    try:
        _image_and_pool_scenario(rig, timeline, claim)
    finally:
        print("\n" + timeline.report("bake and warm pool") + "\n"
              + claim.report("claim"), flush=True)


def _image_and_pool_scenario(rig: Rig, timeline: Timeline, claim: Timeline) -> None:
    hetzner = rig.hetzner()
    rig.kubectl.apply(json.dumps({
        "apiVersion": "agentspaces.dev/v1alpha1", "kind": "WorkspaceImage",
        "metadata": {"name": IMAGE},
        "spec": {"hetzner": {"tokenSecretRef": {"name": f"{CLASS}-hetzner"},
                             "endpoint": rig.clouds.hetzner.url},
                 "bakeTimeout": "30m"}}))
    timeline.mark("image applied")
    image, builder_id = _wait_baked(rig, timeline)
    image_id = int(image["status"]["imageId"])
    snapshot = hetzner.images.get_by_id(image_id)
    assert snapshot.type == "snapshot" and snapshot.status == "available", snapshot
    assert snapshot.labels.get("agentspaces.dev/managed-by") == "agentspaces", snapshot.labels
    assert rig.vms.image_disk(image_id).is_file()
    assert builder_id not in {s.id for s in hetzner.servers.get_all()}  # the builder is gone
    wait_for(lambda: rig.vms.vm(builder_id) is None, 60, "the builder VM torn down")

    # A class with a warm pool of one, booting from the image.
    spec = _class_spec(rig.s3, rig.pki)
    spec["server"] = {**spec["server"], "workspaceImage": IMAGE}
    install_class(rig.kubectl, rig.clouds, POOL_CLASS, storage=rig.s3.storage(),
                  extra={**spec, "warmPool": {"size": 1}})
    pool_started = time.monotonic()
    pool = _wait_pool_ready(rig, timeline)
    timeline.marks["pool: class applied -> server awaiting claim"] = \
        time.monotonic() - pool_started
    pool_server = pool["servers"][0]
    pool_id = int(pool_server["id"])
    assert hetzner.servers.get_by_id(pool_id).image.id == image_id
    pool_vm = rig.vms.vm(pool_id)
    assert pool_vm is not None and pool_vm.backing == rig.vms.image_disk(image_id), pool_vm
    # Offered as soon as its loader answers; a server that has waited a while has also
    # finished the bootstrap (Caddy and CloudCLI started), as most claims will find it.
    wait_for(lambda: "agentspaces-bootstrap: done" in serial_text(pool_vm), READY_TIMEOUT,
             "the pool server's bootstrap done (console)", interval=3)
    timeline.marks["pool: class applied -> bootstrap done (console)"] = \
        time.monotonic() - pool_started

    # A workspace claims it: no new server, the claim completes the real guest.
    claim.start = time.monotonic()
    _apply_workspace(rig, POOLED, POOL_CLASS)
    claimed = wait_for(lambda: (lambda w: w if (((w or {}).get("status") or {})
                                                .get("server") or {}).get("id") else None)(
        rig.ws(POOLED)), 120, "the workspace's server")
    assert int(claimed["status"]["server"]["id"]) == pool_id, claimed["status"]
    # Keep the 2-core host to one guest: the refill the claim starts is not needed here.
    rig.kubectl("patch", "workspaceclass", POOL_CLASS, "--type", "merge", "-p",
                json.dumps({"spec": {"warmPool": {"size": 0}}}))
    ws = _wait_ready(rig, claim, "claim", POOLED)
    assert condition(ws, "AgentReady")["reason"] == "AgentReady", ws["status"]
    server = hetzner.servers.get_by_id(pool_id)
    assert server.name == ws["status"]["server"]["name"] != pool_server["name"], server.name
    assert server.labels.get("agentspaces.dev/pool") is None, server.labels
    _usable(rig, ws, rig.password(POOLED), claim, "claim")
    # The claim writes the workspace's keys for root, as Hetzner's images have them (the
    # base image's cloud-init gave a cold boot's to its default user).
    guest = rig.guest(ws, "root")
    wait_for(guest.reachable, 120, "ssh to the claimed guest with the workspace's key",
             interval=3)
    # The bake's marker (the workspace base image has none): this guest runs the snapshot.
    marker = guest.run(f"sudo cat {BAKED_MARKER}").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{12}", marker), marker
    container = guest.container()
    assert guest.in_container(container, f"cat /workspaces/{NAME}/README.md").stdout \
        == "# demo\n"
    print(f"\nbootstrap record (pool server):\n{bootstrap_steps(guest)}", flush=True)

    # Shrunk to 0, the pool has no server (and no status); deleting the workspace, the
    # class and the image leaves no server, snapshot, image disk or QEMU process.
    wait_for(lambda: not _pool_status(rig) and not hetzner.servers.get_all(
        label_selector=pool_policy.selector(POOL_CLASS)), 120, "the pool shrunk to none")
    rig.kubectl("delete", "workspace", POOLED, "-n", rig.namespace,
                f"--timeout={DELETE_TIMEOUT}s")
    rig.kubectl("delete", "workspaceclass", POOL_CLASS, f"--timeout={DELETE_TIMEOUT}s")
    rig.kubectl("delete", "workspaceimage", IMAGE, f"--timeout={DELETE_TIMEOUT}s")
    assert hetzner.servers.get_all() == []
    assert hetzner.images.get_all(type="snapshot") == []
    wait_for(lambda: rig.vms.vm(pool_id) is None, 60, "the claimed VM torn down")
    wait_for(lambda: not rig.vms.image_disk(image_id).exists(), 60, "the image disk removed")
    assert not _qemu_processes(rig.state)


def _wait_baked(rig: Rig, timeline: Timeline) -> tuple[dict[str, Any], int]:
    """(the Ready WorkspaceImage, its builder's server id): the status names the builder
    only while the bake runs."""
    deadline = time.monotonic() + BAKE_TIMEOUT
    builder_id = 0
    while time.monotonic() < deadline:
        image = rig.kubectl.get_json("workspaceimage", IMAGE) or {}
        status = image.get("status") or {}
        phase = status.get("phase")
        if builder := status.get("builder"):
            timeline.mark("bake: builder created")
            builder_id = int(builder["id"])
            _check_guest_kernel(rig, builder_id, timeline, "bake")
        if phase:
            timeline.mark(f"bake: {phase}")
        if phase == "Ready":
            assert builder_id, f"the bake's builder was never seen: {status}"
            return image, builder_id
        if phase == "Failed" or status.get("failure"):
            raise AssertionError(f"the bake failed: {status}\n{_post_mortem(rig)}")
        time.sleep(3)
    raise AssertionError(f"no Ready image in {BAKE_TIMEOUT}s: "
                         f"{(rig.kubectl.get_json('workspaceimage', IMAGE) or {}).get('status')}"
                         f"\n{_post_mortem(rig)}")


def _pool_status(rig: Rig) -> dict[str, Any]:
    wsc = rig.kubectl.get_json("workspaceclass", POOL_CLASS) or {}
    return dict((wsc.get("status") or {}).get("warmPool") or {})


def _wait_pool_ready(rig: Rig, timeline: Timeline) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        pool = _pool_status(rig)
        for server in pool.get("servers") or []:
            timeline.mark("pool: server created")
            _check_guest_kernel(rig, int(server["id"]), timeline, "pool")
        if pool.get("ready") == 1:
            return pool
        time.sleep(3)
    raise AssertionError(f"no ready pool server in {READY_TIMEOUT}s: {_pool_status(rig)}\n"
                         f"{_post_mortem(rig)}")
