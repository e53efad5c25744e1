"""`kubectl ws` through the real kubectl (it finds the `kubectl-ws` entry point on PATH)
against the real apiserver: what each command prints and what it writes to the
Workspace, a wrong name, and users without the rights. No operator runs: the status
the commands read is patched in through the status subresource."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from agentspaces.controlplane import ControlPlane
from agentspaces_vm import share_links
from tests.conftest import Kubectl
from tests.support.stack import workspace

pytestmark = pytest.mark.integration
HOST = "demo-ws-abcdefghijklm.example.com"
KEY = share_links.new_key()
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMkTYQqNZTcOr3bFhWJ0uFQNcEMHmKP0AQbXA6wYcDVN me"
STATUS = {"phase": "Running", "server": {"id": 42, "ipv4": "203.0.113.7"},
          "urls": {"workspace": f"https://{HOST}", "ports": f"https://{{port}}.{HOST}",
                   "state": "live"},
          "conditions": [{"type": "Ready", "status": "True", "reason": "Running",
                          "message": "the workspace is ready",
                          "lastTransitionTime": "2026-12-03T10:00:00Z"}]}


class Plugin:
    """`kubectl ws ...` as a user would run it: kubectl from the envtest build, the venv's
    bin (with kubectl-ws) and a stand-in ssh that prints its arguments on PATH."""

    def __init__(self, plane: ControlPlane, bin_dir: Path) -> None:
        self.kubectl = str(plane.kubectl)
        self.env = {**os.environ, "KUBECONFIG": str(plane.admin_kubeconfig),
                    "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent),
                                             os.environ.get("PATH", "")])}

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.kubectl, "ws", *args], env=self.env, capture_output=True,
                              text=True, timeout=60, check=False)

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture
def plugin(control_plane: ControlPlane, tmp_path: Path) -> Plugin:
    entry = Path(sys.executable).parent / "kubectl-ws"
    assert entry.exists(), "no kubectl-ws entry point: pip install -e . (scripts/bootstrap.sh)"
    ssh = tmp_path / "ssh"
    ssh.write_text('#!/bin/sh\necho "ssh $*"\n')
    ssh.chmod(0o755)
    return Plugin(control_plane, tmp_path)


def _setup(kubectl: Kubectl, ns: str) -> None:
    kubectl.apply(workspace("demo", ns, "standard", sshKeys=[SSH_KEY], access={
        "ports": [{"port": 3000, "visibility": "link"}]}))
    kubectl.apply(workspace("other", ns, "standard"))
    kubectl("patch", "workspace", "demo", "-n", ns, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": STATUS}))
    kubectl.apply(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo-access",
                                                           "namespace": ns},
        "stringData": {"username": "agent", "password": "pw-integration",
                       "shareLinkKey": KEY}}))


def _ws(kubectl: Kubectl, ns: str) -> dict[str, Any]:
    doc = kubectl.get_json("workspace", "demo", "-n", ns)
    assert doc is not None
    return doc


def test_commands_against_the_apiserver(plugin: Plugin, kubectl: Kubectl,
                                        namespace: str) -> None:
    ns = namespace
    _setup(kubectl, ns)

    rows = [line.split() for line in plugin.ok("list", "-n", ns).splitlines()]
    assert rows[0] == ["NAME", "PHASE", "URL", "IDLE", "AGENT", "AGE"]
    assert rows[1][:3] == ["demo", "Running", f"https://{HOST}"] and rows[2][0] == "other"
    assert [r[:2] for r in (line.split() for line in plugin.ok("list", "-A").splitlines())
            if r[0] == ns] == [[ns, "demo"], [ns, "other"]]

    assert plugin.ok("url", "demo", "-n", ns) == f"https://{HOST}\n"
    assert plugin.ok("-n", ns, "url", "demo", "--port", "3000") == f"https://3000.{HOST}\n"
    assert plugin.ok("open", "demo", "--print", "-n", ns) == f"https://{HOST}\n"
    assert plugin.ok("password", "demo", "-n", ns) == "pw-integration\n"
    missing = plugin("password", "other", "-n", ns)
    assert missing.returncode == 1 and "other has no password Secret other-access" in \
        missing.stderr

    assert "stop requested" in plugin.ok("stop", "demo", "-n", ns)
    assert _ws(kubectl, ns)["spec"]["running"] is False
    woken = plugin("wake", "demo", "-n", ns)
    assert woken.returncode == 1 and "kubectl ws start demo" in woken.stderr
    assert "start requested" in plugin.ok("start", "demo", "-n", ns)
    assert _ws(kubectl, ns)["spec"]["running"] is True

    kubectl("patch", "workspace", "demo", "-n", ns, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"stoppedBy": "inactivity", "phase": "Stopped"}}))
    before = int(time.time())
    assert "wake requested" in plugin.ok("wake", "demo", "-n", ns)
    notes = _ws(kubectl, ns)["metadata"]["annotations"]
    assert before <= int(notes["agentspaces.dev/wake"]) <= time.time()
    assert notes["agentspaces.dev/woken-by"] == "kubectl ws"

    link = plugin.ok("share-link", "create", "demo", "--port", "3000", "--for", "2h",
                     "-n", ns).strip()
    parts = urlsplit(link)
    assert parts.hostname == f"3000.{HOST}"
    token = parse_qs(parts.query)[share_links.QUERY_PARAM][0]
    grant = share_links.verify(share_links.decode_key(KEY) or b"", token, HOST, 3000,
                               time.time())
    assert grant is not None and not grant.may_wake
    assert 7100 < grant.expires - time.time() <= 7200
    plugin.ok("share-link", "revoke", "demo", "-n", ns)
    revoked = _ws(kubectl, ns)["metadata"]["annotations"]["agentspaces.dev/revoke-share-links"]
    assert before <= int(revoked) <= time.time()

    assert plugin.ok("ssh", "demo", "-n", ns, "--", "-p", "2222") == \
        "ssh root@203.0.113.7 -p 2222\n"
    logs = plugin.ok("logs", "demo", "-n", ns)
    assert f"Workspace {ns}/demo: phase Stopped" in logs
    assert "Ready=True Running 2026-12-03T10:00:00Z: the workspace is ready" in logs


def test_errors_say_what_is_wrong(plugin: Plugin, kubectl: Kubectl, namespace: str,
                                  control_plane: ControlPlane) -> None:
    ns = namespace
    _setup(kubectl, ns)
    wrong = plugin("stop", "dmeo", "-n", ns)
    assert wrong.returncode == 1
    assert wrong.stderr == f"kubectl ws: workspace dmeo not found in namespace {ns}; did you " \
        "mean demo?\n"
    assert _ws(kubectl, ns)["spec"].get("running", True) is True

    # A user who may read workspaces but not change them, and one who may do nothing.
    kubectl("create", "role", "ws-viewer", "-n", ns, "--verb=get,list",
            "--resource=workspaces.agentspaces.dev")
    kubectl("create", "rolebinding", "ws-viewer", "-n", ns, "--role=ws-viewer", "--user=viv")
    viewer = control_plane.write_kubeconfig(
        f"viv-{ns}", control_plane.kubeconfig_for_user("viv"))
    nobody = control_plane.write_kubeconfig(
        f"nobody-{ns}", control_plane.kubeconfig_for_user("nobody"))

    assert plugin("url", "demo", "-n", ns, "--kubeconfig", str(viewer)).returncode == 0
    refused = plugin("stop", "demo", "-n", ns, "--kubeconfig", str(viewer))
    assert refused.returncode == 1
    assert f"permission denied: you may not patch workspaces.agentspaces.dev in namespace " \
        f"{ns}" in refused.stderr and 'User "viv" cannot patch resource "workspaces"' in \
        refused.stderr
    assert _ws(kubectl, ns)["spec"].get("running", True) is True
    secret = plugin("password", "demo", "-n", ns, "--kubeconfig", str(viewer))
    assert secret.returncode == 1 and f"you may not get secrets in namespace {ns}" in \
        secret.stderr

    listing = plugin("--kubeconfig", str(nobody), "list", "-n", ns)
    assert listing.returncode == 1
    assert f"you may not list workspaces.agentspaces.dev in namespace {ns}" in \
        listing.stderr and 'User "nobody" cannot list' in listing.stderr
