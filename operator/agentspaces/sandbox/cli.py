"""`agentspaces sandbox up|down|status|hook`: the local sandbox from the command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from agentspaces.lifeline import process_alive
from agentspaces.sandbox.runner import VM_BACKENDS, SandboxInfo

DEFAULT_DIR = Path(os.environ.get("AGENTSPACES_SANDBOX_DIR", ".sandbox"))
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "sandbox-workspace.yaml"
START_TIMEOUT = 45 * 60  # the first run builds kube-apiserver from source


def _info(state: Path) -> SandboxInfo | None:
    path = state / "sandbox.json"
    return SandboxInfo.load(path) if path.exists() else None


def _running(state: Path) -> bool:
    info = _info(state)
    return info is not None and (state / "ready").exists() and process_alive(info.serve_pid)


def _kubectl(info: SandboxInfo, *args: str, input: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([info.kubectl, "--kubeconfig", info.kubeconfig, *args], input=input,
                          capture_output=True, text=True, check=False, timeout=60)


def up(state: Path, example: bool, vm: str = "simulator") -> int:
    state.mkdir(parents=True, exist_ok=True)
    if _running(state):
        print(f"sandbox already running (state in {state}); `agentspaces sandbox down` "
              "stops it")
    else:
        for stale in ("ready", "failed"):
            (state / stale).unlink(missing_ok=True)
        log_path = state / "sandbox.log"
        started = time.monotonic()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agentspaces.cli", "sandbox", "--dir",
                 str(state), "serve", "--vm", vm], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        shown = 0
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            lines = log_path.read_text(errors="replace").splitlines()
            for line in lines[shown:]:
                print(line, flush=True)
            shown = len(lines)
            if (state / "ready").exists():
                break
            if (state / "failed").exists() or proc.poll() is not None:
                print(f"sandbox failed to start; see {log_path}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        else:
            print("sandbox did not become ready in time", file=sys.stderr)
            os.killpg(proc.pid, signal.SIGTERM)
            return 1
        print(f"sandbox up in {time.monotonic() - started:.1f}s")
    info = _info(state)
    assert info is not None
    if example:
        rc = _apply_example(info)
        if rc:
            return rc
    _print_next_steps(info)
    return 0


def _apply_example(info: SandboxInfo) -> int:
    result = _kubectl(info, "apply", "-f", str(EXAMPLE))
    if result.returncode:
        print(result.stderr, file=sys.stderr)
        return 1
    print(result.stdout.strip())
    started = time.monotonic()
    print("waiting for the example workspace to become Ready ...", flush=True)
    result = _kubectl(info, "wait", "--for=condition=Ready", "--timeout=300s",
                      "workspace/demo", "-n", "default")
    if result.returncode:
        print(result.stderr, file=sys.stderr)
        print(_kubectl(info, "get", "ws", "-A", "-o", "wide").stdout)
        return 1
    print(f"workspace demo Ready {time.monotonic() - started:.1f}s after apply")
    print(_kubectl(info, "get", "ws", "-n", "default").stdout)
    return 0


def _print_next_steps(info: SandboxInfo) -> None:
    me = f"{Path(sys.executable).parent / 'agentspaces'} sandbox --dir {info.state_dir}"
    print(f"""
The sandbox is running; state, logs and the kubeconfig are in {info.state_dir}.

  dashboard: {info.dashboard_url or "not started (see dashboard.log)"}
  wake gateway: {info.gateway_ip}:{info.http_port} (stopped workspaces' names point here)

  export KUBECONFIG={info.kubeconfig}
  alias kubectl={info.kubectl}       # matches the sandbox's apiserver
  kubectl get ws -A
  {me} url demo            # the URL, password and curl commands
  {me} hook demo Stop      # what Claude Code posts when it finishes a turn
  {me} down                # stop everything

Walkthrough: README.md, "The local sandbox".
""")


def down(state: Path) -> int:
    info = _info(state)
    if info is None:
        print(f"no sandbox state in {state}")
        return 0
    if process_alive(info.serve_pid):
        os.kill(info.serve_pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while process_alive(info.serve_pid) and time.monotonic() < deadline:
            time.sleep(0.3)
        if process_alive(info.serve_pid):
            os.killpg(info.serve_pid, signal.SIGKILL)
    leftovers = [pid for pid in (info.operator_pid, *info.pids) if process_alive(pid)]
    for pid in leftovers:
        os.killpg(pid, signal.SIGKILL)
    (state / "sandbox.json").unlink(missing_ok=True)
    print("sandbox stopped; nothing left running")
    return 0


def status(state: Path) -> int:
    info = _info(state)
    if info is None or not _running(state):
        print("sandbox is not running")
        return 1
    print(json.dumps(info.__dict__, indent=2))
    print(_kubectl(info, "get", "ws", "-A").stdout)
    return 0


def _workspace(info: SandboxInfo, name: str, namespace: str) -> dict[str, Any]:
    result = _kubectl(info, "get", "workspace", name, "-n", namespace, "-o", "json")
    if result.returncode:
        raise SystemExit(result.stderr.strip())
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def url(state: Path, name: str, namespace: str) -> int:
    """Print how to reach a sandbox workspace (the hostnames resolve only via --resolve)."""
    info = _info(state)
    if info is None:
        raise SystemExit("sandbox is not running")
    ws = _workspace(info, name, namespace)
    status = ws.get("status") or {}
    ip = (status.get("server") or {}).get("ipv4")
    host = f"{status.get('hostname')}.{info.zone}"
    secret = _kubectl(info, "get", "secret", f"{name}-access", "-n", namespace, "-o",
                      "jsonpath={.data.password}").stdout
    import base64

    password = base64.b64decode(secret).decode() if secret else "<not created yet>"
    urls = status.get("urls") or {}
    print(f"URL:      {urls.get('workspace')}")
    print(f"server:   {ip}  (phase {status.get('phase')})")
    if ip is None and urls.get("state") == "gateway" and info.gateway_ip:
        # Stopped with its names at the wake gateway: a signed-in browser wakes it there.
        ip = info.gateway_ip
        print(f"stopped; its names point at the wake gateway ({ip}): opening the URL in a "
              "browser, signed in, wakes it")
    print("password: kubectl get secret "
          f"{name}-access -n {namespace} -o jsonpath='{{.data.password}}' | base64 -d")
    print(f"curl -u agent:{password} --resolve {host}:{info.http_port}:{ip} "
          f"http://{host}:{info.http_port}/")
    print(f"curl -u agent:{password} --resolve 3000.{host}:{info.http_port}:{ip} "
          f"http://3000.{host}:{info.http_port}/")
    return 0


def hook(state: Path, name: str, namespace: str, event: str, session: str) -> int:
    """Post a Claude Code hook event to a sandbox workspace's agent, as Claude would."""
    info = _info(state)
    if info is None:
        raise SystemExit("sandbox is not running")
    status = _workspace(info, name, namespace).get("status") or {}
    server_id = (status.get("server") or {}).get("id")
    if server_id is None:
        raise SystemExit(f"workspace {namespace}/{name} has no server (phase "
                         f"{status.get('phase')})")
    from agentspaces.sandbox.vmsim import hook_endpoint

    endpoint, token = hook_endpoint(Path(info.state_dir), int(server_id))
    body = json.dumps({"hook_event_name": event, "session_id": session,
                       "cwd": "/workspaces", "transcript_path": "/tmp/t.jsonl"}).encode()
    request = urllib.request.Request(endpoint, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        print(f"{event} -> {response.status}")
    return 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("sandbox", help="the local sandbox (no cloud account needed)")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state directory")
    actions = parser.add_subparsers(dest="action", required=True)
    up_p = actions.add_parser("up", help="start everything in the background")
    up_p.add_argument("--example", action="store_true",
                      help="also apply examples/sandbox-workspace.yaml and wait for Ready")
    vm_help = ("how servers become VMs: 'simulator' (default: the agent and Caddy as local "
               "processes) or 'qemu' (real Debian 13 VMs under QEMU booting the operator's "
               "user-data; docs/vm.md, \"Real VMs under QEMU\")")
    up_p.add_argument("--vm", choices=VM_BACKENDS, default="simulator", help=vm_help)
    actions.add_parser("down", help="stop everything")
    actions.add_parser("status", help="show what is running")
    serve_p = actions.add_parser("serve", help="run in the foreground (used by up)")
    serve_p.add_argument("--vm", choices=VM_BACKENDS, default="simulator", help=vm_help)
    url_p = actions.add_parser("url", help="how to reach a workspace")
    url_p.add_argument("name")
    url_p.add_argument("-n", "--namespace", default="default")
    hook_p = actions.add_parser("hook", help="post a Claude Code hook event to a workspace")
    hook_p.add_argument("name")
    hook_p.add_argument("event", help="e.g. UserPromptSubmit, PreToolUse, Stop, SessionEnd")
    hook_p.add_argument("-n", "--namespace", default="default")
    hook_p.add_argument("--session", default="sandbox-session")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    state: Path = args.dir
    if args.action == "up":
        return up(state, args.example, args.vm)
    if args.action == "down":
        return down(state)
    if args.action == "status":
        return status(state)
    if args.action == "serve":
        from agentspaces.sandbox.runner import serve

        return serve(state, args.vm)
    if args.action == "url":
        return url(state, args.name, args.namespace)
    if args.action == "hook":
        return hook(state, args.name, args.namespace, args.event, args.session)
    raise SystemExit(f"unknown action {args.action}")
