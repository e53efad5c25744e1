"""The local sandbox walkthrough, end to end, the way a newcomer does it: the real
`agentspaces sandbox` CLI and the real kubectl, with the clouds checked through their
emulators' own HTTP APIs (the `hcloud` client, Cloudflare's REST API, S3 via boto3).

up -> apply the example -> reach it (401 without, 200 with the password; a file in the
workspace served through port 3000) -> Claude Code hooks move the AGENT column ->
idle stop (backup, server gone, DNS names at the wake gateway, which asks for the
password and is not woken by unauthenticated requests) -> opening the URL signed in wakes
it (the same URL serves the same file, restored from the encrypted backup) -> delete
(nothing left in any cloud) -> down (nothing left running).

Needs KUBEBUILDER_ASSETS (kube-apiserver, etcd, kubectl). `pytest -s` shows the timings.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from hcloud import Client as HcloudClient

from agentspaces.lifeline import OWNER_ENV
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "sandbox-workspace.yaml"
NAME, NAMESPACE = "demo", "default"
SYSTEM_NAMESPACE = "agentspaces-system"
BUCKET = "agentspaces-sandbox"
# Our own loopback range: a sandbox a developer runs (127.0.0.x) never collides.
IP_RANGE = "127.0.4.10-127.0.4.250"
IP_PREFIX = "127.0.4."

UP_TIMEOUT = 180        # the binaries are prebuilt (KUBEBUILDER_ASSETS)
READY_TIMEOUT = 180
HOOK_TIMEOUT = 30       # the operator polls the agent every 3s in the sandbox
IDLE_TIMEOUT = 180      # idle timeout 1m + backup + teardown
DOWN_TIMEOUT = 120
# What a browser sends when the user opens a URL (what the wake gateway wakes on).
NAVIGATION = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document",
              "Accept": "text/html,application/xhtml+xml",
              "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/140.0 Safari/537.36"}


# --- processes -------------------------------------------------------------------------

def _proc_alive(pid: int) -> bool:
    """A process exists in /proc and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def _sandbox_processes(state: Path) -> dict[int, str]:
    """Live processes that belong to this sandbox: anything naming its state directory
    (etcd, kube-apiserver, Caddy, the agents, the dev servers, `serve`), the CloudCLI
    stand-ins bound to our loopback range and the operator (by its KUBECONFIG)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        ours = str(state) in cmdline or ("vmsim_standin.py" in cmdline
                                         and f"--bind {IP_PREFIX}" in cmdline)
        if not ours:  # the operator (also one `serve` restarted) names only its kubeconfig
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            ours = f"KUBECONFIG={state / 'kubeconfig'}".encode() in environ
        if ours and _proc_alive(int(entry.name)):
            found[int(entry.name)] = cmdline.strip()
    return found


# --- the newcomer's tools --------------------------------------------------------------

@dataclass
class Sandbox:
    state: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        # The sandbox goes down with this test run, even if the run is killed outright.
        env = {**os.environ, "AGENTSPACES_SANDBOX_IPS": IP_RANGE,
               OWNER_ENV: str(os.getpid())}
        if self.info:
            env["KUBECONFIG"] = self.info["kubeconfig"]  # `export KUBECONFIG=...`
        return env

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`agentspaces sandbox --dir STATE ...`"""
        return subprocess.run(
            [sys.executable, "-m", "agentspaces.cli", "sandbox", "--dir", str(self.state),
             *args], capture_output=True, text=True, env=self.env, timeout=timeout,
            check=False)

    def kubectl(self, *args: str, timeout: float = 60, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.info["kubectl"], *args], capture_output=True,
                                text=True, env=self.env, timeout=timeout, check=False)
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result

    def ws(self) -> dict[str, Any]:
        return json.loads(self.kubectl("get", "workspace", NAME, "-n", NAMESPACE,
                                       "-o", "json").stdout)

    def ws_row(self) -> dict[str, str]:
        """`kubectl get ws demo` as the newcomer reads it: column name -> value."""
        lines = self.kubectl("get", "ws", NAME, "-n", NAMESPACE).stdout.splitlines()
        assert len(lines) == 2, lines
        header, row = lines[0].split(), lines[1].split()
        assert len(header) == len(row), lines  # every column has a value
        return dict(zip(header, row, strict=True))

    def secret(self, name: str, key: str, namespace: str = SYSTEM_NAMESPACE) -> str:
        data = self.kubectl("get", "secret", name, "-n", namespace, "-o",
                            f"jsonpath={{.data.{key}}}").stdout
        assert data, f"secret {namespace}/{name} has no {key}"
        return base64.b64decode(data).decode()

    # the clouds, through the emulators' real APIs

    def hetzner_servers(self) -> list[Any]:
        client = HcloudClient(token=self.secret("sandbox-hetzner", "token"),
                              api_endpoint=self.info["hetzner_url"])
        return client.servers.get_all()

    def dns_records(self) -> list[dict[str, Any]]:
        token = self.secret("sandbox-cloudflare", "token")
        with httpx.Client(base_url=self.info["cloudflare_url"], trust_env=False, timeout=10,
                          headers={"Authorization": f"Bearer {token}"}) as cf:
            zones = cf.get("/zones", params={"name": self.info["zone"]}).json()
            assert zones["success"] and len(zones["result"]) == 1, zones
            zone_id = zones["result"][0]["id"]
            records = cf.get(f"/zones/{zone_id}/dns_records",
                             params={"per_page": 1000}).json()
            assert records["success"], records
            assert records["result_info"]["total_pages"] <= 1, records["result_info"]
            return list(records["result"])

    def s3(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.info["s3_url"], region_name="us-east-1",
            aws_access_key_id=self.secret("sandbox-r2", "accessKeyId"),
            aws_secret_access_key=self.secret("sandbox-r2", "secretAccessKey"))

    def s3_keys(self) -> list[str]:
        keys: list[str] = []
        for page in self.s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def get(self, ip: str, host: str, path: str = "/", password: str | None = None,
            headers: dict[str, str] | None = None) -> httpx.Response:
        """What `curl --resolve HOST:PORT:IP http://HOST:PORT/...` does."""
        port = self.info["http_port"]
        auth = ("agent", password) if password is not None else None
        return httpx.get(f"http://{ip}:{port}{path}",
                         headers={"Host": f"{host}:{port}", **(headers or {})},
                         auth=auth, timeout=5, trust_env=False)


@dataclass
class DownReport:
    returncode: int | None
    output: str
    seconds: float
    known_pids: list[int]
    vm_pids: dict[int, str]
    survivors: dict[int, str]
    json_left: bool
    vms_left: list[str]


def _down(sb: Sandbox, vm_pids: dict[int, str]) -> DownReport:
    """`sandbox down`, then a sweep: whatever survived is recorded (for the assertions)
    and killed by pid, so a failing run never leaves processes behind."""
    if not sb.info and (sb.state / "sandbox.json").exists():
        sb.info = json.loads((sb.state / "sandbox.json").read_text())
    started = time.monotonic()
    try:
        result = sb.cli("down", timeout=DOWN_TIMEOUT)
        returncode, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired:
        returncode, output = None, f"`sandbox down` took over {DOWN_TIMEOUT}s"
    seconds = time.monotonic() - started
    known = [int(p) for p in (sb.info.get("serve_pid"), sb.info.get("operator_pid"),
                              *sb.info.get("pids", [])) if p]

    def survivors() -> dict[int, str]:
        left = {pid: "(pid from sandbox.json)" for pid in known if _proc_alive(pid)}
        left.update({pid: cmd for pid, cmd in vm_pids.items() if _proc_alive(pid)})
        left.update(_sandbox_processes(sb.state))
        return left

    # `down` returns once the serve process is gone; allow reaping a moment.
    deadline = time.monotonic() + 5
    left = survivors()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = survivors()
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    vms = sb.state / "vms"
    return DownReport(returncode, output, seconds, known, dict(vm_pids), left,
                      (sb.state / "sandbox.json").exists(),
                      sorted(p.name for p in vms.iterdir()) if vms.is_dir() else [])


# --- the walkthrough -------------------------------------------------------------------

def _condition(ws: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (ws.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    raise AssertionError(f"no {type_} condition in {ws.get('status')}")


def _workspace_records(records: list[dict[str, Any]], fqdn: str) -> list[dict[str, Any]]:
    return [r for r in records if r["name"] in (fqdn, f"*.{fqdn}")]


def _url_is_dead(sb: Sandbox, ip: str, host: str) -> bool:
    try:
        sb.get(ip, host)
    except httpx.TransportError:
        return True
    return False


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[Sandbox, dict[int, str], list[DownReport]]]:
    """The sandbox state; `down` always runs (even when `up` or a step failed)."""
    sb = Sandbox(tmp_path / "sandbox")
    vm_pids: dict[int, str] = {}
    reports: list[DownReport] = []
    try:
        yield sb, vm_pids, reports
    finally:
        if not reports:  # the test body failed before its own `down`
            report = _down(sb, vm_pids)
            assert not report.survivors, f"left running after down: {report.survivors}"


def test_sandbox_walkthrough(
        sandbox: tuple[Sandbox, dict[int, str], list[DownReport]]) -> None:
    sb, vm_pids, reports = sandbox
    figures: dict[str, float] = {}

    def measured(what: str, since: float) -> None:
        figures[what] = time.monotonic() - since
        print(f"\nsandbox walkthrough: {what}: {figures[what]:.1f}s", flush=True)

    # 1. up, apply the example, wait for Ready --------------------------------------
    started = time.monotonic()
    up = sb.cli("up", timeout=UP_TIMEOUT)
    measured("sandbox up -> ready", started)
    assert up.returncode == 0, up.stdout + up.stderr
    assert (sb.state / "ready").exists()
    sb.info = json.loads((sb.state / "sandbox.json").read_text())
    assert sb.info["http_port"] == 8080 and sb.info["zone"] == "sandbox.test"
    assert sb.info["kubeconfig"] in up.stdout  # the "export KUBECONFIG=" next step
    assert _proc_alive(sb.info["serve_pid"]) and _proc_alive(sb.info["operator_pid"])
    assert sb.hetzner_servers() == [] and sb.dns_records() == []

    started = time.monotonic()
    applied = sb.kubectl("apply", "-f", str(EXAMPLE))
    assert f"workspace.agentspaces.dev/{NAME} created" in applied.stdout
    # Idle quickly, as the README suggests for watching the idle stop: 1m, no grace.
    sb.kubectl("patch", "workspace", NAME, "-n", NAMESPACE, "--type", "merge", "-p",
               json.dumps({"spec": {"idle": {"timeout": "1m", "grace": "0s"}}}))
    sb.kubectl("wait", "--for=condition=Ready", f"--timeout={READY_TIMEOUT}s",
               f"workspace/{NAME}", "-n", NAMESPACE, timeout=READY_TIMEOUT + 10)
    measured("apply -> Ready", started)

    ws = sb.ws()
    status = ws["status"]
    host = f"{status['hostname']}.{sb.info['zone']}"
    url = f"http://{host}:{sb.info['http_port']}"
    server_id, ip = int(status["server"]["id"]), status["server"]["ipv4"]
    assert ip.startswith(IP_PREFIX), ip
    assert status["urls"]["workspace"] == url
    row = sb.ws_row()
    assert row["NAME"] == NAME and row["PHASE"] == "Running" and row["URL"] == url, row
    assert [s.id for s in sb.hetzner_servers()] == [server_id]
    records = _workspace_records(sb.dns_records(), host)
    assert {(r["name"], r["type"]) for r in records if r["content"] == ip} == {
        (host, "A"), (f"*.{host}", "A")}, records

    # 2. the password, the UI, a file through port 3000 ------------------------------
    password = sb.secret(f"{NAME}-access", "password", namespace=NAMESPACE)
    shown = sb.cli("url", NAME)
    assert shown.returncode == 0, shown.stderr
    assert url in shown.stdout and ip in shown.stdout and password in shown.stdout

    assert sb.get(ip, host).status_code == 401
    assert sb.get(ip, host, password="not-" + password).status_code == 401
    page = sb.get(ip, host, password=password)
    assert page.status_code == 200 and "CloudCLI (simulated)" in page.text, page.text

    notes = f"notes from the walkthrough {uuid.uuid4()}\n"
    workspaces = sb.state / "vms" / str(server_id) / "workspaces"
    assert workspaces.is_dir(), f"no simulated /workspaces at {workspaces}"
    (workspaces / "notes.txt").write_text(notes)
    assert sb.get(ip, f"3000.{host}", "/notes.txt").status_code == 401
    served = sb.get(ip, f"3000.{host}", "/notes.txt", password=password)
    assert served.status_code == 200 and served.text == notes

    vm_pids.update({pid: cmd for pid, cmd in _sandbox_processes(sb.state).items()
                    if str(sb.state / "vms") in cmd or "vmsim_standin.py" in cmd})
    assert len(vm_pids) >= 4, vm_pids  # caddy, agent, CloudCLI and dev-server stand-ins

    # 3. Claude Code hooks move the AGENT column ---------------------------------------
    def agent_state_is(expected: str) -> bool:
        row = sb.ws_row()
        return (row["AGENT"] == expected
                and sb.ws()["status"]["activity"]["agentState"] == expected)

    posted = sb.cli("hook", NAME, "UserPromptSubmit")
    assert posted.returncode == 0 and "UserPromptSubmit -> 204" in posted.stdout, posted
    wait_for(lambda: agent_state_is("working"), HOOK_TIMEOUT, "AGENT working", 1.0)
    posted = sb.cli("hook", NAME, "Stop")
    assert posted.returncode == 0 and "Stop -> 204" in posted.stdout, posted
    stop_hook_at = time.monotonic()
    wait_for(lambda: agent_state_is("waiting"), HOOK_TIMEOUT, "AGENT waiting", 1.0)

    # 4. the workspace stops by itself -------------------------------------------------
    sb.kubectl("wait", "--for=jsonpath={.status.phase}=Stopped",
               f"--timeout={IDLE_TIMEOUT}s", f"workspace/{NAME}", "-n", NAMESPACE,
               timeout=IDLE_TIMEOUT + 10)
    measured("Stop hook -> Stopped (idle timeout 1m)", stop_hook_at)
    status = sb.ws()["status"]
    assert status["stoppedBy"] == "inactivity", status
    assert "server" not in status, status
    backup_ok = _condition({"status": status}, "BackupSucceeded")
    assert backup_ok["status"] == "True", backup_ok
    backup_object = status["backup"]["object"]
    assert backup_object, status["backup"]
    uid = sb.ws()["metadata"]["uid"]
    assert uid in backup_object, backup_object
    assert sb.s3().head_object(Bucket=BUCKET, Key=backup_object)["ContentLength"] > 0
    assert sb.hetzner_servers() == []
    # The names stay, pointing at the wake gateway (the sandbox's first address).
    gateway_ip = sb.info["gateway_ip"]
    assert gateway_ip == IP_RANGE.partition("-")[0], sb.info
    records = _workspace_records(sb.dns_records(), host)
    assert {(r["name"], r["type"], r["content"]) for r in records} == {
        (host, "A", gateway_ip), (f"*.{host}", "A", gateway_ip)}, records
    assert status["urls"]["state"] == "gateway", status["urls"]
    # The simulated VM's teardown runs in the emulator's hook thread: allow it a moment.
    wait_for(lambda: _url_is_dead(sb, ip, host), 15, f"{ip} to stop answering", 0.5)

    # 5. wake by opening the URL: the gateway asks for the password first ---------------
    wait_for(lambda: sb.get(gateway_ip, host).status_code == 401, 15,
             "the gateway to answer for the stopped workspace", 0.5)
    for _ in range(20):  # scripts, bots and a wrong password never wake it
        assert sb.get(gateway_ip, host, headers=NAVIGATION).status_code == 401
        assert sb.get(gateway_ip, f"3000.{host}", "/notes.txt").status_code == 401
    assert sb.get(gateway_ip, host, password="not-" + password,
                  headers=NAVIGATION).status_code == 401
    assert sb.ws()["status"]["phase"] == "Stopped"
    assert "agentspaces.dev/wake" not in (sb.ws()["metadata"].get("annotations") or {})

    started = time.monotonic()
    waking = sb.get(gateway_ip, host, password=password, headers=NAVIGATION)
    assert waking.status_code == 200 and "waking" in waking.text.lower(), waking.text
    assert NAME in waking.text
    sb.kubectl("wait", "--for=condition=Ready", f"--timeout={READY_TIMEOUT}s",
               f"workspace/{NAME}", "-n", NAMESPACE, timeout=READY_TIMEOUT + 10)
    measured("request -> Ready (woken through the gateway)", started)
    ws = sb.ws()
    woken_by = ws["metadata"]["annotations"]["agentspaces.dev/woken-by"]
    assert woken_by.startswith("gateway: agent"), woken_by
    # Resolvers that still hold the gateway's address reach the new server through it.
    wait_for(lambda: sb.get(gateway_ip, f"3000.{host}", "/notes.txt",
                            password=password).text == notes, 30,
             "the gateway to proxy to the new server", 0.5)
    measured("request -> the same URL serves the file", started)
    status = ws["status"]
    new_id, new_ip = int(status["server"]["id"]), status["server"]["ipv4"]
    assert new_id != server_id
    assert [s.id for s in sb.hetzner_servers()] == [new_id]
    assert sb.ws_row()["PHASE"] == "Running"
    restored = _condition(ws, "BackupRestored")
    assert restored["status"] == "True" and restored["reason"] == "Restored", restored
    assert status["restore"]["object"] == backup_object, status.get("restore")
    records = _workspace_records(sb.dns_records(), host)
    assert {(r["name"], r["content"]) for r in records if r["type"] == "A"} == {
        (host, new_ip), (f"*.{host}", new_ip)}, records
    served = sb.get(new_ip, f"3000.{host}", "/notes.txt", password=password)
    assert served.status_code == 200 and served.text == notes
    vm_pids.update({pid: cmd for pid, cmd in _sandbox_processes(sb.state).items()
                    if str(sb.state / "vms") in cmd or "vmsim_standin.py" in cmd})
    assert any(k for k in sb.s3_keys() if uid in k)

    # 6. delete: nothing left in any cloud ---------------------------------------------
    deleted = sb.kubectl("delete", "workspace", NAME, "-n", NAMESPACE, "--timeout=120s",
                         timeout=130)
    assert "deleted" in deleted.stdout, deleted.stdout
    gone = sb.kubectl("get", "workspace", NAME, "-n", NAMESPACE, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stderr
    assert sb.hetzner_servers() == []
    assert sb.dns_records() == []
    assert [k for k in sb.s3_keys() if uid in k] == []
    uploads = sb.s3().list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert [u["Key"] for u in uploads if uid in u["Key"]] == []
    key_secret = sb.kubectl("get", "secret", f"{NAME}-backup-key", "-n", NAMESPACE,
                            check=False)
    assert key_secret.returncode != 0 and "NotFound" in key_secret.stderr

    # 7. down: nothing left running ----------------------------------------------------
    started = time.monotonic()
    report = _down(sb, vm_pids)
    reports.append(report)
    measured("sandbox down", started)
    print("sandbox walkthrough figures: " + json.dumps(
        {k: round(v, 1) for k, v in figures.items()}), flush=True)
    assert report.returncode == 0, report.output
    assert "nothing left running" in report.output
    assert not report.survivors, f"left running after down: {report.survivors}"
    assert report.known_pids and not any(_proc_alive(p) for p in report.known_pids)
    assert not report.json_left
    assert report.vms_left == [], report.vms_left
