"""Waking by request and share links at the wake gateway, end to end: the real
apiserver, operator, Cloudflare and Hetzner emulators and S3, simulated VMs (real agent
and Caddy), and the gateway itself (a real Caddy on 127.0.59.2, which the class names
as its wakeGateway, configured by the gateway watching the cluster). Two workspaces stop
for inactivity with their names at the gateway. Then, at the gateway:

- a share link made by annotation while stopped, without wake: the waiting page, no
  wake; its token on another port or the IDE, and an expired link: 403;
- a revoke while stopped: the earlier link and its cookie are refused within seconds;
- deleting a stopped workspace: its names answer 404, its records are gone;
- a share link with wake: opens its port without the password and wakes it (woken-by
  names the link); once Ready its cookie opens the same URL through the gateway and on
  the new VM, which serves the file written before the stop.

(The password, the 401s and the signed-in wake are in tests/e2e/test_sandbox_walkthrough.)
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from agentspaces.sandbox.cloudflare import CloudflareEmulator
from agentspaces_vm import share_links
from tests.conftest import Kubectl
from tests.support.live_gateway import LiveGateway, open_at, running_gateway
from tests.support.stack import ZONE, VmStack, condition, vm_stack, workspace
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "wakereq"
IP_BLOCK = 59  # VMs on 127.0.59.10 and up; the gateway below them
GATEWAY_IP = f"127.0.{IP_BLOCK}.2"
HTTP_PORT = 18121
LINKED, REVOKED = "linked", "revoked"
PORTS = [{"port": 3000, "visibility": "link"}, {"port": 5173, "visibility": "link"}]
IDLE = {"timeout": "1m", "grace": "0s"}
SHARE = "agentspaces.dev/share-link.3000"
FORBIDDEN = (403, "forbidden\n")


@dataclass
class Setup:
    stack: VmStack
    gateway: LiveGateway
    ns: str
    hosts: dict[str, str]
    servers: dict[str, int]  # the server each had before the stop
    notes: str  # written into LINKED's /workspaces/notes.txt before the stop


@pytest.fixture(scope="module")
def setup(control_plane, kubectl: Kubectl,  # type: ignore[no-untyped-def]
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    with vm_stack(control_plane, kubectl, tmp_path_factory.mktemp("vms"), CLASS, IP_BLOCK,
                  HTTP_PORT, storage=True) as stack, \
            running_gateway(control_plane.admin_kubeconfig, tmp_path_factory.mktemp("gw"),
                            GATEWAY_IP, HTTP_PORT) as gateway:
        kubectl("patch", "workspaceclass", CLASS, "--type", "merge",
                "-p", json.dumps({"spec": {"wakeGateway": {"ipv4": GATEWAY_IP}}}))
        ns = f"t-{uuid.uuid4().hex[:8]}"
        kubectl("create", "namespace", ns)
        for name in (LINKED, REVOKED):
            kubectl.apply(workspace(name, ns, CLASS, idle=IDLE, access={"ports": PORTS}))
        ready = {name: _until(kubectl, name, ns, f"{name} Ready",
                              lambda w: condition(w, "Ready").get("status") == "True")
                 for name in (LINKED, REVOKED)}
        servers = {n: int(w["status"]["server"]["id"]) for n, w in ready.items()}
        notes = f"written before the idle stop {uuid.uuid4()}\n"
        (stack.vms.workspace_dir(servers[LINKED]) / "notes.txt").write_text(notes)
        hosts = {}
        for name in (LINKED, REVOKED):
            stopped = _until(kubectl, name, ns, f"{name} stopped at the gateway",
                             lambda w: w["status"].get("urls", {}).get("state") == "gateway",
                             150)
            assert stopped["status"]["stoppedBy"] == "inactivity"
            hosts[name] = urlsplit(stopped["status"]["urls"]["workspace"]).hostname or ""
            assert _contents(stack.clouds.cloudflare, hosts[name]) == {("A", GATEWAY_IP)}
            # The gateway answers for it: the sign-in, as for any signed-out request.
            url = gateway.url(hosts[name])
            wait_for(lambda u=url: gateway.open(u).status_code == 401, 15,  # type: ignore[misc]
                     f"the gateway's route for {name}")
        yield Setup(stack, gateway, ns, hosts, servers, notes)


def _ws(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any] | None:
    return kubectl.get_json("workspace", name, "-n", ns)


def _until(kubectl: Kubectl, name: str, ns: str, what: str, test: Any,
           timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: (w := _ws(kubectl, name, ns)) and test(w) and w, timeout, what)


def _access(kubectl: Kubectl, name: str, ns: str) -> dict[str, str]:
    doc = kubectl.get_json("secret", f"{name}-access", "-n", ns)
    assert doc is not None
    return {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}


def _new_link(kubectl: Kubectl, name: str, ns: str, value: str) -> str:
    """Annotate for a link to port 3000; the URL the operator writes into the Secret."""
    before = _access(kubectl, name, ns).get("shareLink.3000")
    kubectl("annotate", "--overwrite", "workspace", name, "-n", ns, f"{SHARE}={value}")

    def written() -> str | None:
        url = _access(kubectl, name, ns).get("shareLink.3000")
        return url if url and url != before else None

    return wait_for(written, 30, f"the link for {value} in the Secret")


def _token(link: str) -> str:
    return parse_qs(urlsplit(link).query)[share_links.QUERY_PARAM][0]


def _redeem(gateway: LiveGateway, link: str) -> str:
    """Open a link at the gateway: a 303 to the same URL without the token, setting the
    cookie the VM would set; that cookie."""
    resp = gateway.open(link, navigate=True)
    assert resp.status_code == 303, (resp.status_code, resp.text)
    assert share_links.QUERY_PARAM not in resp.headers["location"]
    cookie = resp.headers["set-cookie"].split(";")[0]
    assert cookie == f"{share_links.COOKIE}={_token(link)}"
    return cookie


def _answer(resp: Any) -> tuple[int, str]:
    return resp.status_code, resp.text


def _contents(cf: CloudflareEmulator, host: str) -> set[tuple[str, str]]:
    return {(r["type"], r["content"]) for r in cf.records(ZONE)
            if r["name"] in (host, f"*.{host}")}


def _annotations(kubectl: Kubectl, name: str, ns: str) -> dict[str, str]:
    return dict(((_ws(kubectl, name, ns) or {}).get("metadata") or {}).get("annotations")
                or {})


def test_a_link_without_wake_shows_the_page_and_bad_links_get_403(
        setup: Setup, kubectl: Kubectl) -> None:
    gw, ns, host = setup.gateway, setup.ns, setup.hosts[LINKED]
    link = _new_link(kubectl, LINKED, ns, "1h")
    assert urlsplit(link).netloc == f"3000.{host}:{HTTP_PORT}"
    cookie = _redeem(gw, link)
    page = gw.open(gw.url(f"3000.{host}", "/notes.txt"), navigate=True, cookie=cookie)
    assert page.status_code == 200 and "This link does not wake it" in page.text
    assert "agentspaces.dev/wake" not in _annotations(kubectl, LINKED, ns)
    # The cookie opens its own port only: the IDE and the other link port ask for the
    # password; the token itself on either is refused.
    for other in (host, f"5173.{host}"):
        assert gw.open(gw.url(other), navigate=True, cookie=cookie).status_code == 401
        assert _answer(gw.open(gw.url(other, f"/?{urlsplit(link).query}"),
                               navigate=True)) == FORBIDDEN, other
    # An expired link (signed with the workspace's own key, a minute in the past).
    key = share_links.decode_key(_access(kubectl, LINKED, ns)["shareLinkKey"])
    assert key is not None
    expired = share_links.mint(key, host, 3000, int(time.time()) - 60, may_wake=True)
    assert _answer(gw.open(gw.url(f"3000.{host}", f"/?{share_links.QUERY_PARAM}={expired}"),
                           navigate=True)) == FORBIDDEN
    # Nothing of this woke it.
    time.sleep(2)
    ws = _ws(kubectl, LINKED, ns)
    assert ws is not None and ws["status"]["phase"] == "Stopped"
    assert "agentspaces.dev/wake" not in _annotations(kubectl, LINKED, ns)


def test_a_revoke_while_stopped_refuses_earlier_links_within_seconds(
        setup: Setup, kubectl: Kubectl) -> None:
    gw, ns, host = setup.gateway, setup.ns, setup.hosts[REVOKED]
    link = _new_link(kubectl, REVOKED, ns, "1h")
    cookie = _redeem(gw, link)
    port_url = gw.url(f"3000.{host}")
    assert gw.open(port_url, navigate=True, cookie=cookie).status_code == 200
    key = _access(kubectl, REVOKED, ns)["shareLinkKey"]

    started = time.monotonic()
    kubectl("annotate", "workspace", REVOKED, "-n", ns,
            "agentspaces.dev/revoke-share-links=now")
    wait_for(lambda: gw.open(link, navigate=True).status_code == 403, 15,
             "the gateway to refuse the revoked link")
    print(f"\nrevoke annotation -> 403 at the gateway: {time.monotonic() - started:.1f}s")
    assert _answer(gw.open(link, navigate=True)) == FORBIDDEN
    assert gw.open(port_url, navigate=True, cookie=cookie).status_code == 401
    access = _access(kubectl, REVOKED, ns)
    assert access["shareLinkKey"] != key and access["shareLink.3000"] == ""
    ws = _ws(kubectl, REVOKED, ns)
    assert ws is not None and ws["status"]["phase"] == "Stopped"


def test_deleting_a_stopped_workspace_removes_its_routes_and_records(
        setup: Setup, kubectl: Kubectl) -> None:
    gw, ns, host = setup.gateway, setup.ns, setup.hosts[REVOKED]
    cf = setup.stack.clouds.cloudflare
    assert _contents(cf, host) == {("A", GATEWAY_IP)}
    cf.reset_counts()
    kubectl("delete", "workspace", REVOKED, "-n", ns, "--wait=false")
    for name in (host, f"3000.{host}"):
        url = gw.url(name)
        wait_for(lambda u=url: _answer(gw.open(u, navigate=True))  # type: ignore[misc]
                 == (404, "unknown host\n"), 30, f"{name} gone from the gateway")
    wait_for(lambda: _ws(kubectl, REVOKED, ns) is None, 60, f"{REVOKED} deleted")
    assert _contents(cf, host) == set()
    writes = {k: v for k, v in cf.calls.items() if v and not k.startswith("GET")}
    assert writes == {"DELETE /zones/{id}/dns_records/{id}": 2}, writes
    # The other workspace's names are still served.
    assert gw.open(gw.url(setup.hosts[LINKED])).status_code == 401


def test_a_link_that_may_wake_wakes_it_and_keeps_working_on_the_new_vm(
        setup: Setup, kubectl: Kubectl) -> None:
    gw, ns, host = setup.gateway, setup.ns, setup.hosts[LINKED]
    link = _new_link(kubectl, LINKED, ns, "2h,wake")
    cookie = _redeem(gw, link)
    file_url = gw.url(f"3000.{host}", "/notes.txt")
    waking = gw.open(file_url, navigate=True, cookie=cookie)
    assert waking.status_code == 200 and f"Waking {LINKED}" in waking.text, waking.text
    annotations = _annotations(kubectl, LINKED, ns)
    assert annotations["agentspaces.dev/wake"].startswith("gateway-")
    woken_by = "gateway: share link for port 3000 from 127.0.0.1"
    assert annotations["agentspaces.dev/woken-by"] == woken_by

    woke = _until(kubectl, LINKED, ns, f"{LINKED} Ready again",
                  lambda w: condition(w, "Ready").get("status") == "True", 90)
    server = woke["status"]["server"]
    assert int(server["id"]) != setup.servers[LINKED]
    events = kubectl.get_json("events", "-n", ns, "--field-selector",
                              f"involvedObject.name={LINKED},reason=Woken") or {}
    assert [woken_by in e["message"] for e in events.get("items", [])] == [True]

    # Through the gateway (resolvers may still hold its address), with the same cookie
    # on the same URL: the new VM serves the file from before the stop.
    wait_for(lambda: _answer(gw.open(file_url, navigate=True, cookie=cookie))
             == (200, setup.notes), 30, "the file through the gateway")
    assert gw.open(file_url, navigate=True).status_code == 401  # the cookie opens it
    # And at the new VM itself, once its records point there.
    assert _contents(setup.stack.clouds.cloudflare, host) == {
        ("A", server["ipv4"]), ("AAAA", server["ipv6"])}
    wait_for(lambda: _answer(open_at(server["ipv4"], file_url, navigate=True, cookie=cookie))
             == (200, setup.notes), 30, "the link's cookie accepted by the new VM")
    assert open_at(server["ipv4"], file_url, navigate=True).status_code == 401

    kubectl("delete", "workspace", LINKED, "-n", ns, "--wait=false")
    wait_for(lambda: gw.open(file_url).status_code == 404, 30,
             "the proxy route gone with the workspace")
    wait_for(lambda: _ws(kubectl, LINKED, ns) is None, 60, f"{LINKED} deleted")
