"""Workspace images and warm pools: what a bake costs, what booting from the image and
claiming a pool server change.

Runs the real thing on loopback: etcd + kube-apiserver, the operator process, the
Hetzner and Cloudflare emulators, and simulated VMs (real agent + Caddy per workspace;
a builder "bakes" for --bake seconds, then powers itself off). It measures:

- the bake: WorkspaceImage apply -> Ready, and its Hetzner calls by endpoint;
- apply -> Ready for --workspaces workspaces of a class without an image (cold), of
  a class naming the image, and of a class whose warm pool (as many servers, booted
  from the image) has them waiting, one at a time, with the Hetzner calls per start
  (for the pool: the claim's own calls, and the refill's apart).

A simulated VM installs nothing, so cold and image starts take the same time here:
what the sandbox shows is that booting from an image adds no operator time and no
cloud call. What an image saves on real machines is the guest's install work, which
the second table estimates from the real-VM tier's measurements (docs/vm.md) and the
inputs given on the command line. It prints tables; it asserts nothing.

    flock /tmp/agentspaces-integration.lock .venv/bin/python benchmarks/image_bench.py \\
        [--workspaces 3] [--bake 5] [--tcg-factor 19] [--hetzner-boot 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support: the same stack the integration tests use

from tests.support.stack import (  # noqa: E402
    benchmark_cluster,
    condition,
    install_class,
    vm_stack,
    workspace,
)
from tests.support.waiting import wait_for  # noqa: E402

COLD, IMAGED, POOLED, IMAGE = "cold", "imaged", "pooled", "bench-image"
NAMESPACE = "bench"
HTTP_PORT = 18093
IP_BLOCK = 44

# Guest work measured in the real-VM tier under TCG (docs/vm.md, "Measured in one run"),
# seconds: with the software in place, and what a stock image adds.
TIER_PRESENT = {"cloud-init + packages present": 106, "agent + firewall": 58,
                "node, caddy, npm, users: skipped": 16, "services": 66,
                "devcontainer up": 186}
# From Hetzner's stock debian-13 the bootstrap also installs (docs/vm.md, "What that
# means on Hetzner"): apt packages, Node, Caddy, the npm globals; estimated there at
# 2-4 minutes on real hardware, taken here as its middle.
STOCK_EXTRA_REAL = 180.0


def _ready(kubectl: Any, kind: str, name: str, ns: str | None, timeout: float) -> float:
    args = ("-n", ns) if ns else ()
    started = time.monotonic()

    def done() -> bool:
        body = kubectl.get_json(kind, name, *args) or {}
        if kind == "workspaceimage":
            return (body.get("status") or {}).get("phase") == "Ready"
        return condition(body, "Ready").get("status") == "True"

    wait_for(done, timeout, f"{kind} {name} Ready")
    return time.monotonic() - started


def _pool_ready(kubectl: Any) -> int:
    body = kubectl.get_json("workspaceclass", POOLED) or {}
    return int(((body.get("status") or {}).get("warmPool") or {}).get("ready") or 0)


def _writes_and_reads(calls: Counter[str]) -> str:
    writes = sum(n for k, n in calls.items() if not k.startswith("GET "))
    return f"{writes} writes, {sum(calls.values()) - writes} reads"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=3)
    parser.add_argument("--bake", type=float, default=5.0,
                        help="seconds a simulated builder takes before it powers off")
    parser.add_argument("--tcg-factor", type=float, default=19.0,
                        help="TCG slowdown over real hardware (docs/vm.md: 19x geometric "
                             "mean, 7-66x by workload)")
    parser.add_argument("--hetzner-boot", type=float, default=30.0,
                        help="Hetzner create -> guest running, seconds (an input: not "
                             "measured here)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="image-bench-") as tmp, \
            benchmark_cluster(Path(tmp) / "plane", NAMESPACE) as (plane, kubectl):
        (Path(tmp) / "vms").mkdir()
        with vm_stack(plane, kubectl, Path(tmp) / "vms", COLD, IP_BLOCK, HTTP_PORT) as stack:
            clouds = stack.clouds
            stack.vms.bake_seconds = args.bake
            install_class(kubectl, clouds, IMAGED, extra={
                "tls": {"mode": "none", "httpPort": HTTP_PORT},
                "server": {"type": "cx23", "location": "fsn1", "image": "debian-13",
                           "workspaceImage": IMAGE}})
            install_class(kubectl, clouds, POOLED, extra={
                "tls": {"mode": "none", "httpPort": HTTP_PORT},
                "server": {"type": "cx23", "location": "fsn1", "image": "debian-13",
                           "workspaceImage": IMAGE}})
            clouds.hetzner.reset_calls()
            kubectl.apply(yaml.safe_dump({
                "apiVersion": "agentspaces.dev/v1alpha1", "kind": "WorkspaceImage",
                "metadata": {"name": IMAGE},
                "spec": {"hetzner": {"tokenSecretRef": {"name": f"{COLD}-hetzner"},
                                     "endpoint": clouds.hetzner.url}}}))
            bake = _ready(kubectl, "workspaceimage", IMAGE, None, 300)
            bake_calls = clouds.hetzner.calls

            # The pool fills once the image is Ready (its servers boot the snapshot).
            clouds.hetzner.reset_calls()
            kubectl("patch", "workspaceclass", POOLED, "--type=merge", "-p",
                    json.dumps({"spec": {"warmPool": {"size": args.workspaces}}}))
            started = time.monotonic()
            wait_for(lambda: _pool_ready(kubectl) == args.workspaces, 180, "the pool ready")
            fill = time.monotonic() - started
            fill_calls = clouds.hetzner.calls

            starts: dict[str, list[float]] = {}
            per_create: dict[str, Counter[str]] = {}
            for klass in (COLD, IMAGED, POOLED):
                clouds.hetzner.reset_calls()
                times = []
                for n in range(args.workspaces):
                    name = f"{klass}-{n}"
                    kubectl.apply(workspace(name, NAMESPACE, klass, idle={"timeout": "6h"},
                                            persistence={"enabled": False}))
                    times.append(_ready(kubectl, "workspace", name, NAMESPACE, 180))
                starts[klass] = times
                per_create[klass] = clouds.hetzner.calls
            claimed = sum(1 for s in clouds.hetzner.servers.values()
                          if s["name"].startswith(f"{POOLED}-"))
            booted = Counter(s["image"]["type"] for s in clouds.hetzner.servers.values())

    print(f"\nsandbox (simulated VMs, builder bakes {args.bake:g} s)")
    print(f"{'':<44} {'value':>22}")
    print(f"{'bake: apply -> Ready':<44} {bake:>21.1f}s")
    print(f"{'bake: Hetzner calls':<44} {_writes_and_reads(bake_calls):>22}")
    for endpoint, n in sorted(bake_calls.items()):
        print(f"{'  ' + endpoint:<44} {n:>22}")
    print(f"{f'pool of {args.workspaces}: size set -> all ready':<44} {fill:>21.1f}s")
    print(f"{'pool fill: Hetzner calls':<44} {_writes_and_reads(fill_calls):>22}")
    for endpoint, n in sorted(fill_calls.items()):
        print(f"{'  ' + endpoint:<44} {n:>22}")
    labels = {COLD: "cold", IMAGED: "from the image", POOLED: "warm pool"}
    for klass in (COLD, IMAGED, POOLED):
        label = labels[klass]
        print(f"{f'{label}: apply -> Ready p50 (n={args.workspaces})':<44} "
              f"{statistics.median(starts[klass]):>21.1f}s")
        calls = per_create[klass]
        print(f"{f'{label}: Hetzner calls per start':<44} "
              f"{sum(calls.values()) / args.workspaces:>22.1f}")
        for endpoint, n in sorted(calls.items()):
            print(f"{'  ' + endpoint:<44} {n:>22}")
    print(f"{'workspaces on a claimed pool server':<44} {claimed:>17} of {args.workspaces}")
    print(f"{'servers booted from: snapshot / system':<44} "
          f"{booted.get('snapshot', 0):>10} / {booted.get('system', 0):<10}")

    present_tcg = sum(TIER_PRESENT.values())
    present_real = present_tcg / args.tcg_factor
    image = args.hetzner_boot + present_real
    cold = image + STOCK_EXTRA_REAL
    print(f"\nreal Hetzner, estimated (guest work from the real-VM tier / {args.tcg_factor:g}; "
          f"Hetzner boot {args.hetzner_boot:g} s as given)")
    print(f"{'':<44} {'value':>22}")
    print(f"{'guest work, software present (TCG, measured)':<44} {present_tcg:>21.0f}s")
    print(f"{'guest work, software present (real, est.)':<44} {present_real:>21.0f}s")
    print(f"{'apply -> usable from the image (est.)':<44} {image:>21.0f}s")
    print(f"{'apply -> usable cold, stock debian-13 (est.)':<44} {cold:>21.0f}s")
    # A claimed server has booted and run everything but the devcontainer already.
    pooled = statistics.median(starts[POOLED]) + TIER_PRESENT["devcontainer up"] / \
        args.tcg_factor
    print(f"{'apply -> usable from the warm pool (est.)':<44} {pooled:>21.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
