"""A stopped workspace's names at the wake gateway, with the real apiserver, operator,
Cloudflare and Hetzner emulators and a simulated VM. A workspace of a class with a
wakeGateway stops by its lifetime: its records point at the gateway (updated in place),
status and `kubectl get ws` say `gateway`, polls cost no Cloudflare request, a new
gateway address is followed, woken-by alone wakes nothing, the wake annotation brings it
back with the records at the new server and an event naming who woke it, and deleting
it removes every record. The emulator counts each Cloudflare request."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agentspaces.sandbox.cloudflare import CloudflareEmulator
from tests.conftest import Kubectl
from tests.support.stack import ZONE, VmStack, condition, vm_stack, workspace
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "wakegw"
GATEWAY = {"ipv4": "198.51.100.7", "ipv6": "2001:db8::7"}
LIST = "GET /zones/{id}/dns_records"
PATCH = "PATCH /zones/{id}/dns_records/{id}"
POST = "POST /zones/{id}/dns_records"
DELETE = "DELETE /zones/{id}/dns_records/{id}"


@pytest.fixture(scope="module")
def stack(control_plane, kubectl: Kubectl,  # type: ignore[no-untyped-def]
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmStack]:
    with vm_stack(control_plane, kubectl, tmp_path_factory.mktemp("vms"), CLASS, 47,
                  18113) as stack:
        kubectl("patch", "workspaceclass", CLASS, "--type", "merge",
                "-p", json.dumps({"spec": {"wakeGateway": GATEWAY}}))
        yield stack


def _ws(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any] | None:
    return kubectl.get_json("workspace", name, "-n", ns)


def _until(kubectl: Kubectl, name: str, ns: str, what: str, test: Any,
           timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: (w := _ws(kubectl, name, ns)) and test(w) and w, timeout, what)


def _records(cf: CloudflareEmulator, host: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(type, name) -> (id, content) of the records at the workspace's names."""
    return {(r["type"], r["name"]): (r["id"], r["content"]) for r in cf.records(ZONE)
            if r["name"] in (host, f"*.{host}")}


def _contents(records: dict[tuple[str, str], tuple[str, str]]) -> set[tuple[str, str]]:
    return {(rtype, content) for (rtype, _), (_, content) in records.items()}


def _requests(cf: CloudflareEmulator) -> dict[str, int]:
    return {k: v for k, v in cf.calls.items() if v}


def _events(kubectl: Kubectl, name: str, ns: str) -> list[tuple[str, str]]:
    doc = kubectl.get_json("events", "-n", ns, "--field-selector",
                           f"involvedObject.name={name}") or {}
    return [(e["reason"], e.get("message", "")) for e in doc.get("items", [])]


def test_a_stopped_workspace_points_at_the_gateway_and_wakes_back(
        stack: VmStack, kubectl: Kubectl, namespace: str) -> None:
    cf = stack.clouds.cloudflare
    kubectl.apply(workspace("napper", namespace, CLASS, lifetime={"max": "1m"},
                            persistence={"enabled": False}))
    ready = _until(kubectl, "napper", namespace, "napper Ready",
                   lambda w: condition(w, "Ready").get("status") == "True")
    host = ready["status"]["urls"]["workspace"].split("://")[1].split(":")[0]
    first = ready["status"]["server"]
    running = _records(cf, host)
    assert _contents(running) == {("A", first["ipv4"]), ("AAAA", first["ipv6"])}
    assert ready["status"]["dns"]["target"] == "Server"

    # The lifetime stop: the same four records, updated in place, now at the gateway.
    cf.reset_counts()
    stopped = _until(kubectl, "napper", namespace, "napper stopped at the gateway",
                     lambda w: w["status"].get("phase") == "Stopped"
                     and w["status"].get("urls", {}).get("state") == "gateway", 120)
    stop_requests = _requests(cf)
    assert stop_requests == {LIST: 2, PATCH: 4}, stop_requests
    at_gateway = _records(cf, host)
    assert _contents(at_gateway) == {("A", GATEWAY["ipv4"]), ("AAAA", GATEWAY["ipv6"])}
    assert {k: v[0] for k, v in at_gateway.items()} == {k: v[0] for k, v in running.items()}
    status = stopped["status"]
    assert status["stoppedBy"] == "lifetime" and "server" not in status
    assert status["dns"]["target"] == "Gateway" and status["dns"]["changedAt"]
    dns_ready = condition(stopped, "DNSReady")
    assert dns_ready["reason"] == "PointsAtGateway" and GATEWAY["ipv4"] in dns_ready["message"]
    listing = kubectl("get", "ws", "napper", "-n", namespace, "-o", "wide")
    header, row = listing.splitlines()[0].split(), listing.splitlines()[1].split()
    assert header[:6] == ["NAME", "PHASE", "URL", "IDLE", "AGENT", "URL-STATE"], header
    assert row[header.index("URL-STATE")] == "gateway", listing

    # Polls while stopped (every second here) cost no Cloudflare request.
    cf.reset_counts()
    time.sleep(5)
    assert cf.total_calls == 0, _requests(cf)

    # The class's gateway moves and loses IPv6: A updated, AAAA deleted.
    kubectl("patch", "workspaceclass", CLASS, "--type", "merge", "-p", json.dumps(
        {"spec": {"wakeGateway": {"ipv4": "198.51.100.8", "ipv6": None}}}))
    wait_for(lambda: _contents(_records(cf, host)) == {("A", "198.51.100.8")}, 30,
             "records at the new gateway address")
    time.sleep(2)
    moved = _requests(cf)
    assert moved == {LIST: 2, PATCH: 2, DELETE: 2}, moved

    # Who woke it, alone, wakes nothing.
    cf.reset_counts()
    kubectl("annotate", "workspace", "napper", "-n", namespace,
            "agentspaces.dev/woken-by=gateway: nobody")
    time.sleep(3)
    assert _ws(kubectl, "napper", namespace)["status"]["phase"] == "Stopped"  # type: ignore[index]
    assert cf.total_calls == 0, _requests(cf)

    # The wake, as the gateway sends it: back at a new server, records in place again.
    kubectl("patch", "workspace", "napper", "-n", namespace, "--type", "merge",
            "-p", '{"spec":{"lifetime":{"max":"30m"}}}')
    kubectl("annotate", "--overwrite", "workspace", "napper", "-n", namespace,
            f"agentspaces.dev/wake=gateway-{int(time.time())}",
            "agentspaces.dev/woken-by=gateway: alice from 192.0.2.44")
    woke = _until(kubectl, "napper", namespace, "napper Ready again",
                  lambda w: condition(w, "Ready").get("status") == "True", 90)
    wake_requests = _requests(cf)
    assert wake_requests == {LIST: 2, PATCH: 2, POST: 2}, wake_requests
    second = woke["status"]["server"]
    assert second["id"] != first["id"]
    assert _contents(_records(cf, host)) == {("A", second["ipv4"]), ("AAAA", second["ipv6"])}
    assert woke["status"]["dns"]["target"] == "Server"
    assert woke["status"]["dns"]["changedAt"] > status["dns"]["changedAt"]
    assert woke["status"]["urls"]["state"] == "live"
    woken = [m for r, m in _events(kubectl, "napper", namespace) if r == "Woken"]
    assert woken == ["woken by the agentspaces.dev/wake annotation "
                     "(gateway: alice from 192.0.2.44)"], woken

    # Delete removes every record.
    cf.reset_counts()
    kubectl("delete", "workspace", "napper", "-n", namespace, "--wait=false")
    wait_for(lambda: _ws(kubectl, "napper", namespace) is None, 60, "napper deleted")
    assert _records(cf, host) == {}
    assert _requests(cf).get(DELETE) == 4
