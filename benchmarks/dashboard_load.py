"""The dashboard's first page load with 50 workspaces on the real apiserver.

Starts etcd + kube-apiserver, installs the CRDs, creates N Workspaces (default 50) and
gives each a typical status through the status subresource (phase, URLs, conditions,
activity, usage and server cost, as the operator writes them), then starts the real
`agentspaces dashboard` process and loads the list page:

- server: GET /workspaces?namespace=bench with no session, as a first visit (the page
  is rendered from one LIST with the caller's kubeconfig), timed to the last byte;
- browser: a fresh chromium context per load (Debian's chromium, Playwright), timed
  from navigation start to the load event (HTML, CSS, htmx and its SSE extension).

    .venv/bin/python benchmarks/dashboard_load.py [--workspaces 50] [--loads 40]

Goal: p95 under 200 ms.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support: the same helpers the browser tier uses

from tests.conftest import CRDS, Kubectl  # noqa: E402
from tests.support.dashboard import DashboardProcess, chromium_path  # noqa: E402
from tests.support.hook_lag import percentile  # noqa: E402

from agentspaces.controlplane import running_control_plane  # noqa: E402

NAMESPACE = "bench"


def _status(i: int) -> dict[str, Any]:
    host = f"ws-{i:02d}-bench-abcdefghijklm.example.test"
    t = "2026-12-01T10:00:00Z"
    conditions = [{"type": c, "status": "True", "reason": "Ready", "message": f"{c} ok",
                   "lastTransitionTime": t}
                  for c in ("Ready", "Accepted", "CredentialsAvailable", "ServerReady",
                            "DNSReady", "AgentReady", "BackupSucceeded")]
    return {"phase": "Running" if i % 5 else "Stopped", "conditions": conditions,
            "hostname": host.split(".")[0],
            "urls": {"workspace": f"https://{host}", "ui": f"https://{host}/",
                     "ports": f"https://{{port}}.{host}", "state": "live"},
            "activity": {"idle": i % 3 == 0, "idleSince": t, "lastActivityTime": t,
                         "agentState": ("working", "waiting", "absent")[i % 3],
                         "agentStateSince": t},
            "backup": {"time": t, "size": 1234567, "object": f"b/{i}"},
            "usage": {"estimatedCost": "1.23", "currency": "USD", "totalTokens": 123456},
            "vmCost": {"summary": "0.42 EUR net"}}


def _populate(kubectl: Kubectl, count: int) -> None:
    kubectl("create", "namespace", NAMESPACE)
    docs = [{"apiVersion": "agentspaces.dev/v1alpha1", "kind": "Workspace",
             "metadata": {"name": f"ws-{i:02d}", "namespace": NAMESPACE},
             "spec": {"className": "bench",
                      "repository": {"url": f"https://github.com/example/app-{i}"},
                      "access": {"ports": [{"port": 3000}, {"port": 8080,
                                                            "visibility": "public"}]}}}
            for i in range(count)]
    kubectl.apply(yaml.safe_dump_all(docs))
    for i in range(count):
        kubectl("patch", "workspace", f"ws-{i:02d}", "-n", NAMESPACE, "--subresource=status",
                "--type=merge", "-p", yaml.safe_dump({"status": _status(i)}))


def _server_loads(port: int, loads: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(loads):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        start = time.perf_counter()
        conn.request("GET", f"/workspaces?namespace={NAMESPACE}")
        resp = conn.getresponse()
        body = resp.read()
        times.append((time.perf_counter() - start) * 1000)
        conn.close()
        assert resp.status == 200 and body.count(b"data-workspace=") > 0, resp.status
        size = len(body)
    return times, size


def _browser_loads(url: str, loads: int, count: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if not path:
        print("chromium not installed: browser loads skipped", file=sys.stderr)
        return {}
    times: dict[str, list[float]] = {"html": [], "fcp": [], "dcl": [], "load": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True,
                                     args=["--no-sandbox"])
        try:
            for _ in range(loads):
                context = browser.new_context()
                page = context.new_page()
                page.goto(f"{url}/workspaces?namespace={NAMESPACE}", wait_until="load")
                assert page.locator("tr[data-workspace]").count() == count
                marks = page.evaluate(
                    "() => { const n = performance.getEntriesByType('navigation')[0];"
                    " const p = performance.getEntriesByName('first-contentful-paint')[0];"
                    " return [n.responseEnd - n.startTime, p ? p.startTime : 0,"
                    " n.domContentLoadedEventEnd - n.startTime,"
                    " n.loadEventEnd - n.startTime]; }")
                for name, value in zip(("html", "fcp", "dcl", "load"), marks, strict=True):
                    times[name].append(value)
                context.close()
        finally:
            browser.close()
    return times


def _row(name: str, times: list[float]) -> str:
    if not times:
        return f"| {name} | - | - | - | - |"
    return (f"| {name} | {len(times)} | {statistics.median(times):.1f} | "
            f"{percentile(times, 95):.1f} | {max(times):.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=50)
    parser.add_argument("--loads", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dash-bench-") as tmp, \
            running_control_plane(Path(tmp) / "cp") as plane:
        kubectl = Kubectl(plane)
        kubectl("apply", "--server-side", "-f", str(CRDS))
        kubectl("wait", "--for=condition=Established", "--timeout=60s",
                "crd/workspaces.agentspaces.dev")
        _populate(kubectl, args.workspaces)
        dash = DashboardProcess(plane.admin_kubeconfig, Path(tmp) / "dashboard.log").start()
        try:
            _server_loads(dash.port, 3)  # the first connection to the apiserver
            server, size = _server_loads(dash.port, args.loads)
            browser = _browser_loads(dash.url, max(5, args.loads // 2), args.workspaces)
        finally:
            dash.stop()
    print(f"\nFirst page load, {args.workspaces} workspaces, list page {size / 1024:.0f} KiB "
          "(ms)\n")
    print("| load | n | p50 | p95 | max |")
    print("|---|---|---|---|---|")
    print(_row("server: GET /workspaces, new session, to the last byte", server))
    print(_row("browser: chromium, new context, navigation to the HTML's last byte",
               browser.get("html", [])))
    print(_row("browser: ... to the first contentful paint", browser.get("fcp", [])))
    print(_row("browser: ... to DOMContentLoaded (htmx and the SSE extension run)",
               browser.get("dcl", [])))
    print(_row("browser: ... to the load event", browser.get("load", [])))
    print(f"\nload average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    worst = percentile(browser.get("load") or server, 95)
    print(f"\ngoal p95 < 200 ms: {'met' if worst < 200 else 'NOT met'} ({worst:.1f} ms)")
    return 0 if worst < 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
