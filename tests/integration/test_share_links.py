"""Share links end to end: the real apiserver, operator and CLI, a simulated VM running
the real agent and Caddy. The annotation writes a link into the access Secret, the CLI
prints one, both open their port without the password; a revoke rotates the key, the
VM gets it and every earlier link and cookie stops working. No key or token leaks."""

from __future__ import annotations

import base64
import http.client
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from agentspaces_vm import share_links
from tests.component.agent_harness import TinyServer
from tests.conftest import Kubectl
from tests.support.stack import VmStack, condition, vm_stack, workspace
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "sharing"
HTTP_PORT = 18117
NAME = "sharer"


@pytest.fixture(scope="module")
def stack(control_plane, kubectl: Kubectl,  # type: ignore[no-untyped-def]
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmStack]:
    with vm_stack(control_plane, kubectl, tmp_path_factory.mktemp("vms"), CLASS, 53,
                  HTTP_PORT) as stack:
        yield stack


def _access(kubectl: Kubectl, ns: str) -> dict[str, str]:
    doc = kubectl.get_json("secret", f"{NAME}-access", "-n", ns)
    assert doc is not None
    return {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}


def _get(ip: str, url: str, cookie: str | None = None) -> tuple[int, dict[str, str]]:
    """GET `url` from the VM's Caddy (its Host from the URL, as a browser sends it)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(ip, HTTP_PORT, timeout=10)
    headers = {"Host": parts.netloc, "Accept": "text/html"}
    if cookie:
        headers["Cookie"] = cookie
    conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                 headers=headers)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}


def _cli(kubeconfig: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentspaces.cli", "share-link", *args,
                           "--kubeconfig", kubeconfig], capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ})


def _events(kubectl: Kubectl, ns: str, reason: str) -> list[dict[str, Any]]:
    doc = kubectl.get_json("events", "-n", ns, "--field-selector",
                           f"involvedObject.name={NAME},reason={reason}")
    return doc["items"] if doc else []


def test_share_links_by_annotation_and_cli_then_revoked(
        stack: VmStack, kubectl: Kubectl, namespace: str, control_plane: Any) -> None:
    kubeconfig = str(control_plane.admin_kubeconfig)
    kubectl.apply(workspace(NAME, namespace, CLASS, access={"ports": [
        {"port": 3000, "visibility": "link"}, {"port": 3002, "visibility": "private"}]}))
    ws = wait_for(lambda: (w := kubectl.get_json("workspace", NAME, "-n", namespace)) and
                  condition(w, "Ready").get("status") == "True" and w, 60, "Ready")
    vm = stack.vms.vm(int(ws["status"]["server"]["id"]))
    assert vm is not None
    secrets_dir = vm.root / "var" / "lib" / "agentspaces" / "secrets"
    first = _access(kubectl, namespace)
    key_1 = first["shareLinkKey"]
    assert share_links.decode_key(key_1) and share_links.decode_key(first["sessionKey"])
    assert (secrets_dir / "share-link-key").read_text().strip() == key_1
    assert (secrets_dir / "session-key").read_text().strip() == first["sessionKey"]

    # The simulated VM's dev server listens on 3000; 3002 is ours.
    with TinyServer(vm.ip, 3002, "private-app"):
        host = urlsplit(ws["status"]["urls"]["workspace"]).netloc
        wait_for(lambda: _get(vm.ip, f"http://3000.{host}/")[0] == 401, 30,
                 "the link port's route")

        # kubectl way: the annotation puts a link into the access Secret.
        kubectl("annotate", "workspace", NAME, "-n", namespace,
                "agentspaces.dev/share-link.3000=1h,wake", "agentspaces.dev/share-link.3002=1h")
        annotated = wait_for(lambda: _access(kubectl, namespace).get("shareLink.3000"), 30,
                             "the link in the Secret")
        status, headers = _get(vm.ip, annotated)
        assert status == 303 and headers["location"] == "/"
        cookie = headers["set-cookie"].split(";")[0]
        assert _get(vm.ip, f"http://3000.{host}/", cookie)[0] == 200
        assert wait_for(lambda: _events(kubectl, namespace, "ShareLinkCreated"), 15, "event")
        refused = wait_for(lambda: _events(kubectl, namespace, "ShareLinkRefused"), 15,
                           "the refusal for the private port")
        assert refused[0]["type"] == "Warning" and "port 3002 is private" in \
            refused[0]["message"]
        assert "shareLink.3002" not in _access(kubectl, namespace)

        # The CLI way, as the user: it prints a link; a private port is refused.
        made = _cli(kubeconfig, "create", NAME, "-n", namespace, "--port", "3000",
                    "--for", "2h")
        assert made.returncode == 0, made.stderr
        cli_link = made.stdout.strip()
        assert _get(vm.ip, cli_link)[0] == 303
        private = _cli(kubeconfig, "create", NAME, "-n", namespace, "--port", "3002")
        assert private.returncode == 1 and "port 3002 of sharer is private" in private.stderr
        assert _get(vm.ip, cli_link.replace("//3000.", "//3002."))[0] == 403

        # Revoke: the key rotates once, reaches the VM, and every earlier link dies.
        revoked = _cli(kubeconfig, "revoke", NAME, "-n", namespace)
        assert revoked.returncode == 0, revoked.stderr
        key_2 = wait_for(lambda: (k := _access(kubectl, namespace)["shareLinkKey"]) != key_1
                         and k, 30, "a new link key")
        wait_for(lambda: (secrets_dir / "share-link-key").read_text().strip() == key_2, 30,
                 "the new key on the VM")
        assert _access(kubectl, namespace)["shareLink.3000"] == ""
        assert _get(vm.ip, f"http://3000.{host}/", cookie)[0] == 401
        for dead in (annotated, cli_link):
            assert _get(vm.ip, dead)[0] == 403
        ws = kubectl.get_json("workspace", NAME, "-n", namespace)
        assert ws is not None and ws["status"]["shareLinks"]["revokeHandled"]
        assert len(_events(kubectl, namespace, "ShareLinksRevoked")) == 1
        fresh = _cli(kubeconfig, "create", NAME, "-n", namespace, "--port", "3000")
        assert fresh.returncode == 0 and _get(vm.ip, fresh.stdout.strip())[0] == 303

    # Neither key nor any token in status, events or the operator's log.
    tokens = [urlsplit(u).query.partition("=")[2] for u in (annotated, cli_link)]
    values = {"link key 1": key_1, "link key 2": key_2, "session key": first["sessionKey"],
              **{f"token {i}": t for i, t in enumerate(tokens)}}
    places = {
        "status": yaml.safe_dump(kubectl.get_json("workspace", NAME, "-n", namespace)),
        "events": kubectl("get", "events", "-n", namespace, "-o", "yaml"),
        "operator log": stack.operator.log(),
        "user-data": stack.clouds.hetzner.servers[vm.server_id]["user_data"],
    }
    for log in sorted(vm.root.rglob("*.log")):
        places[f"VM log {log.name}"] = log.read_text(errors="replace")
    for place, text in places.items():
        for what, value in values.items():
            assert value and value not in text, f"{what} found in {place}"

    kubectl("delete", "workspace", NAME, "-n", namespace, "--wait=false")
    wait_for(lambda: kubectl.get_json("workspace", NAME, "-n", namespace) is None, 60,
             "deleted")
