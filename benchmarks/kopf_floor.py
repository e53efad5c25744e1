"""What Kopf itself costs per Workspace: memory and CPU of an operator with the
agentspaces operator's handler shape and no work (benchmarks/kopf_floor_handlers.py),
against the real control plane. The floor under scale_bench.py's per-workspace figures:
what no change inside the handlers can remove.

For each shape (`changes`: resume/create/update handlers; `timer`: + the 30 s poll
timer; `daemon`: + one daemon per Workspace), a fresh operator process starts with no
Workspace, then the Workspaces grow to each of --counts; at each count, once every
Workspace is handled and a poll has passed, RSS and CPU are read from /proc over
--window seconds. It prints a table; it asserts nothing.

    flock /tmp/agentspaces-integration.lock .venv/bin/python benchmarks/kopf_floor.py \\
        [--counts 500,1000] [--shapes changes,timer,daemon] [--window 60] \\
        [--status running-workspace.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support: the same stack the benchmarks use

import yaml  # noqa: E402
from kubernetes import client, config  # noqa: E402
from scale_bench import child_env, cpu_seconds, rss_mb, running  # noqa: E402
from tests.conftest import Kubectl  # noqa: E402
from tests.support.stack import benchmark_cluster  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

NAMESPACE = "floor"
POLL = 30.0
HANDLERS = REPO / "benchmarks" / "kopf_floor_handlers.py"
HANDLED = "kopf.agentspaces.dev/last-handled-configuration"


def floor_operator(kubeconfig: Path, shape: str, log: Path
                   ) -> AbstractContextManager[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
            str(HANDLERS)]
    return running(argv, child_env(kubeconfig, FLOOR_SHAPE=shape), log, stop_timeout=60)


def manifest(names: list[str]) -> str:
    return yaml.safe_dump_all([
        {"apiVersion": "agentspaces.dev/v1alpha1", "kind": "Workspace",
         "metadata": {"name": name, "namespace": NAMESPACE},
         "spec": {"className": "floor", "repository": {"url": "https://github.com/example/app"},
                  "idle": {"timeout": "24h"}}}
        for name in names])


def give_status(kubeconfig: Path, names: list[str], status: dict[str, object]) -> None:
    """Every Workspace gets `status` (through the status subresource), so the bodies
    Kopf keeps are the size of a running workspace's."""
    api = client.CustomObjectsApi(config.new_client_from_config(str(kubeconfig)))
    for name in names:
        api.patch_namespaced_custom_object_status(
            "agentspaces.dev", "v1alpha1", NAMESPACE, "workspaces", name, {"status": status})


def handled(kubectl: Kubectl) -> int:
    items = (kubectl.get_json("workspaces", "-n", NAMESPACE) or {}).get("items") or []
    return sum(1 for ws in items if HANDLED in (ws["metadata"].get("annotations") or {}))


def measure(pid: int, window: float) -> tuple[float, float]:
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    return rss_mb(pid), (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)


def run_shape(kubectl: Kubectl, kubeconfig: Path, shape: str, counts: list[int],
              window: float, log: Path, status: dict[str, object] | None
              ) -> list[tuple[int, float, float]]:
    rows = []
    with floor_operator(kubeconfig, shape, log) as proc:
        time.sleep(10)  # started, its first watch open, the trim task begun
        rows.append((0, *measure(proc.pid, window)))
        made = 0
        for n in counts:
            names = [f"floor-{i}" for i in range(made, n)]
            for start in range(0, len(names), 100):
                kubectl.apply(manifest(names[start:start + 100]))
            if status is not None:
                give_status(kubeconfig, names, status)
            made = n
            wait_for(lambda n=n: handled(kubectl) >= n, 600, f"{n} handled", interval=2)
            time.sleep(POLL + 5)  # every timer has fired once
            rows.append((n, *measure(proc.pid, window)))
            print(f"{shape} at {n}: {rows[-1]}", file=sys.stderr)
        kubectl("delete", "workspaces", "-n", NAMESPACE, "--all", "--wait=false")
        wait_for(lambda: not kubectl("get", "workspaces", "-n", NAMESPACE, "-o",
                                     "name").strip(), 600, "every Workspace gone", interval=2)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="500,1000", help="Workspaces, ascending")
    parser.add_argument("--shapes", default="changes,timer,daemon")
    parser.add_argument("--window", type=float, default=60.0,
                        help="seconds over which CPU is measured at each count")
    parser.add_argument("--status", type=Path,
                        help="a Workspace's JSON (`kubectl get ws NAME -o json`) whose status "
                             "every Workspace gets, for bodies the size of real ones")
    args = parser.parse_args()
    status = json.loads(args.status.read_text())["status"] if args.status else None
    counts = sorted(int(c) for c in args.counts.split(",") if c)
    shapes = [s for s in args.shapes.split(",") if s]

    results = {}
    with tempfile.TemporaryDirectory(prefix="kopf-floor-") as tmp, \
            benchmark_cluster(Path(tmp) / "plane", NAMESPACE) as (plane, kubectl):
        for shape in shapes:
            results[shape] = run_shape(kubectl, plane.admin_kubeconfig, shape, counts,
                                       args.window, Path(tmp) / f"{shape}.log", status)

    print(f"\nKopf with no work, per Workspace ({os.cpu_count()} cores; poll {POLL:g} s)")
    print(f"{'shape':<8} {'count':>6} {'RSS MB':>8} {'MB each':>8} {'CPU core':>9} "
          f"{'ms/s each':>10}")
    for shape, rows in results.items():
        base_rss, base_cpu = rows[0][1], rows[0][2]
        for n, rss, cpu in rows:
            each_mb = f"{(rss - base_rss) / n:.3f}" if n else "-"
            each_ms = f"{(cpu - base_cpu) * 1000 / n:.3f}" if n else "-"
            print(f"{shape:<8} {n:>6} {rss:>8.1f} {each_mb:>8} {cpu:>9.3f} {each_ms:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
