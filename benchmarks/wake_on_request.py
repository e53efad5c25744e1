"""Wake on request, measured: from a signed-in browser navigation at the wake gateway to
the workspace Ready, and to the same URL serving a file written before the stop; and the
Cloudflare writes per idle stop and per wake.

Runs the real thing on loopback, as tests/integration/test_wake_on_request.py does:
etcd + kube-apiserver, the operator, the Hetzner and Cloudflare emulators, S3 (moto) for
the backups, one simulated VM (real agent + Caddy) per server, and the wake gateway (a
real Caddy on 127.0.61.2, the class's wakeGateway, configured by the gateway watching
the cluster). N workspaces (idle timeout 1m, no grace) start together, each gets a
file in /workspaces, and all stop for inactivity, their records pointed at the gateway.
Then, one at a time, each is woken: a navigation with the password to
http://3000.<host>:<port>/notes.txt at the gateway's address (what a browser whose
resolver still has the gateway's address does), then the same URL is polled (no
navigation, so no second wake) until it serves the file from the new VM. Ready is
polled with kubectl (about 0.3 s granularity). Cloudflare writes are counted from the
emulator's request log: a stop's by the record ids of its workspace, a wake's as every
write while it alone changes. With --gateway-ipv6 the class names an IPv6 address for
the gateway too (a documentation address: clients here use IPv4), so the AAAA records
are updated in place instead of deleted and made again.

    flock /tmp/agentspaces-integration.lock .venv/bin/python benchmarks/wake_on_request.py \\
        [--workspaces 3] [--gateway-ipv6]

N is at most 5: the gateway allows five wakes per client per 10 minutes.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support: the same stack the integration tests use

from tests.conftest import Kubectl  # noqa: E402
from tests.support.live_gateway import LiveGateway, running_gateway  # noqa: E402
from tests.support.stack import (  # noqa: E402
    ZONE,
    benchmark_cluster,
    condition,
    vm_stack,
    workspace,
)
from tests.support.waiting import wait_for  # noqa: E402

from agentspaces.sandbox.cloudflare import CloudflareEmulator  # noqa: E402

CLASS = "wakebench"
NAMESPACE = "bench"
IP_BLOCK = 61
GATEWAY_IP = f"127.0.{IP_BLOCK}.2"
GATEWAY_IPV6 = "2001:db8::61"
HTTP_PORT = 18123
MAX_WORKSPACES = 5
WRITES = ("POST", "PATCH", "DELETE")


def _ws(kubectl: Kubectl, name: str) -> dict[str, Any] | None:
    return kubectl.get_json("workspace", name, "-n", NAMESPACE)


def _ready(kubectl: Kubectl, name: str) -> dict[str, Any] | None:
    w = _ws(kubectl, name)
    return w if w and condition(w, "Ready").get("status") == "True" else None


def _record_ids(cf: CloudflareEmulator, host: str) -> set[str]:
    return {str(r["id"]) for r in cf.records(ZONE) if r["name"] in (host, f"*.{host}")}


def _writes(cf: CloudflareEmulator) -> list[tuple[str, str]]:
    """(method, record id or "") of every write in the request log."""
    out = []
    for method, path, _ in cf.log:
        if method in WRITES:
            out.append((method, path.rstrip("/").rpartition("/")[2]
                        if method != "POST" else ""))
    return out


def _describe(counts: Counter[str]) -> str:
    return " + ".join(f"{n} {m}" for m, n in sorted(counts.items())) or "none"


def _wake(gw: LiveGateway, kubectl: Kubectl, cf: CloudflareEmulator, name: str, host: str,
          notes: str) -> tuple[float, float, Counter[str]]:
    """One wake by a navigation: seconds to Ready, to the file served, and its writes."""
    access = kubectl.get_json("secret", f"{name}-access", "-n", NAMESPACE) or {}
    creds = {k: base64.b64decode(v).decode() for k, v in access["data"].items()}
    auth = (creds["username"], creds["password"])
    url = gw.url(f"3000.{host}", "/notes.txt")
    wait_for(lambda: gw.open(url).status_code == 401, 15, f"the gateway's route for {name}")
    cf.reset_counts()
    started = time.monotonic()
    page = gw.open(url, navigate=True, auth=auth)
    if page.status_code != 200 or f"Waking {name}" not in page.text:
        raise AssertionError(f"no waking page for {name}: {page.status_code} {page.text!r}")
    wait_for(lambda: _ready(kubectl, name), 180, f"{name} Ready", interval=0.05)
    ready = time.monotonic() - started
    wait_for(lambda: (r := gw.open(url, auth=auth)).status_code == 200 and r.text == notes,
             60, f"{name}'s file through the gateway", interval=0.05)
    usable = time.monotonic() - started
    time.sleep(3)  # a write that lands after Ready still belongs to this wake
    counts = Counter(m for m, _ in _writes(cf))
    # Awake, it stays up: an idle stop would write during the next wake.
    kubectl("patch", "workspace", name, "-n", NAMESPACE, "--type", "merge",
            "-p", json.dumps({"spec": {"idle": {"timeout": "6h"}}}))
    return ready, usable, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=3)
    parser.add_argument("--gateway-ipv6", action="store_true",
                        help=f"the class's wakeGateway also names {GATEWAY_IPV6}")
    args = parser.parse_args()
    if not 1 <= args.workspaces <= MAX_WORKSPACES:
        parser.error(f"--workspaces must be 1..{MAX_WORKSPACES}")
    names = [f"w{n}" for n in range(args.workspaces)]

    with tempfile.TemporaryDirectory(prefix="wake-bench-") as tmp, \
            benchmark_cluster(Path(tmp) / "plane", NAMESPACE) as (plane, kubectl):
        (Path(tmp) / "vms").mkdir()
        with vm_stack(plane, kubectl, Path(tmp) / "vms", CLASS, IP_BLOCK, HTTP_PORT,
                      storage=True) as stack, \
                running_gateway(plane.admin_kubeconfig, Path(tmp) / "gateway", GATEWAY_IP,
                                HTTP_PORT) as gw:
            cf = stack.clouds.cloudflare
            address = {"ipv4": GATEWAY_IP,
                       **({"ipv6": GATEWAY_IPV6} if args.gateway_ipv6 else {})}
            kubectl("patch", "workspaceclass", CLASS, "--type", "merge",
                    "-p", json.dumps({"spec": {"wakeGateway": address}}))
            for name in names:
                kubectl.apply(workspace(name, NAMESPACE, CLASS,
                                        idle={"timeout": "1m", "grace": "0s"}))
            hosts, notes, ids = {}, {}, {}
            for name in names:
                ws = wait_for(lambda n=name: _ready(kubectl, n), 180,  # type: ignore[misc]
                              f"{name} Ready")
                hosts[name] = ws["status"]["urls"]["workspace"].split("//")[1].split(":")[0]
                notes[name] = f"{name} before the stop {uuid.uuid4()}\n"
                server = int(ws["status"]["server"]["id"])
                (stack.vms.workspace_dir(server) / "notes.txt").write_text(notes[name])
            for name in names:
                wait_for(lambda n=name: _record_ids(cf, hosts[n]), 30,  # type: ignore[misc]
                         f"{name}'s records")
                ids[name] = _record_ids(cf, hosts[name])
            cf.reset_counts()
            for name in names:
                wait_for(lambda n=name: (w := _ws(kubectl, n))  # type: ignore[misc]
                         and w["status"].get("urls", {}).get("state") == "gateway", 240,
                         f"{name} stopped at the gateway")
            time.sleep(3)
            stop_writes = _writes(cf)
            per_stop = {n: Counter(m for m, rid in stop_writes if rid in ids[n])
                        for n in names}
            stray = [w for w in stop_writes if not any(w[1] in ids[n] for n in names)]

            cycles = {name: _wake(gw, kubectl, cf, name, hosts[name], notes[name])
                      for name in names}

    readys = [c[0] for c in cycles.values()]
    usables = [c[1] for c in cycles.values()]
    stops = [sum(c.values()) for c in per_stop.values()]
    wakes = [sum(c[2].values()) for c in cycles.values()]
    print(f"\nwake on request: {len(names)} workspaces, one idle stop and one wake each "
          f"(gateway {'dual stack' if args.gateway_ipv6 else 'IPv4 only'}, "
          "servers dual stack)")
    print(f"{'workspace':<10} {'request->Ready':>15} {'request->usable':>16} "
          f"{'CF writes stop':>22} {'CF writes wake':>22}")
    for name in names:
        ready, usable, wake = cycles[name]
        print(f"{name:<10} {ready:>14.2f}s {usable:>15.2f}s "
              f"{_describe(per_stop[name]):>22} {_describe(wake):>22}")
    print(f"{'p50':<10} {statistics.median(readys):>14.2f}s {statistics.median(usables):>15.2f}s "
          f"{statistics.median(stops):>22g} {statistics.median(wakes):>22g}")
    print(f"{'max':<10} {max(readys):>14.2f}s {max(usables):>15.2f}s "
          f"{max(stops):>22} {max(wakes):>22}")
    if stray:
        print(f"writes during the stops not on any workspace's records: {stray}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
