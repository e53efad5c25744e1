"""The operator at scale: apply->Ready for a burst of workspaces, cloud calls per
lifecycle and per hour at steady state, apiserver requests per poll, and the
operator's memory and CPU with 100 to 1,000 workspaces running.

Runs the real control plane (etcd + kube-apiserver), the real operator (as deployed:
production settings, a 30 s poll, no --verbose), the Hetzner and Cloudflare emulators
at zero latency, and the fleet simulator (agentspaces.sandbox.fleet): one process
answering the agent protocol for every server, so a thousand workspaces fit on two
cores. It prints a table; it asserts nothing.

- lifecycle: --lifecycles workspaces go create -> Ready -> stop (spec.running false,
  Stopped) -> wake (Ready) -> delete (gone); Hetzner and Cloudflare requests from the
  emulators' counters, divided by the number of workspaces.
- burst: --burst workspaces applied at once (one kubectl apply), apply->Ready from a
  watch (the ADDED event to the first event with Ready True); at zero cloud latency
  all of it is added by the operator. Run twice: without a rate limit and with
  Hetzner's (3,600 requests per hour per project, refilled at 1 per second).
- steady: for each of --counts, the fleet grows to that many Ready workspaces, settles
  and is watched for --window seconds: the operator's RSS and CPU (from /proc), the
  apiserver's requests (apiserver_request_total) per workspace per poll, and cloud
  calls per hour. The server inventory lists every 10 minutes, which a short window
  rarely sees: its GET /servers pages are counted as ceil(N/50) per listing, 6 per
  hour; every other call is measured.

    flock /tmp/agentspaces-integration.lock .venv/bin/python benchmarks/scale_bench.py \\
        [--counts 100] [--burst 200] [--lifecycles 5] [--window 120]

The full table: --counts 100,500,1000 (some 20 minutes on two cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support: the same stack the integration tests use

import yaml  # noqa: E402
from kubernetes import client, config, watch  # noqa: E402
from tests.conftest import Kubectl  # noqa: E402
from tests.support.stack import (  # noqa: E402
    OPERATOR_NAMESPACE,
    ZONE,
    Clouds,
    benchmark_cluster,
    condition,
    install_class,
)
from tests.support.waiting import wait_for  # noqa: E402

from agentspaces.lifeline import die_with_parent  # noqa: E402
from agentspaces.sandbox.cloudflare import CloudflareEmulator  # noqa: E402
from agentspaces.sandbox.fleet import FleetSimulator  # noqa: E402
from agentspaces.sandbox.hetzner import HetznerEmulator  # noqa: E402

CLASS = "scale"
NAMESPACE = "scale"
POLL = 30.0
INVENTORY_INTERVAL = 600.0  # the operator's default
PAGE = 50  # servers per page of a listing (hcloud's default)
HETZNER_LIMIT = 3600
UNLIMITED = 10**9
TARGETS = {"rss": 250.0, "cpu": 0.2, "hetzner_hour": 180.0, "p99": 3.0,
           "hetzner_lifecycle": 12.0}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the stack ------------------------------------------------------------------------

@contextmanager
def zero_latency_clouds() -> Iterator[Clouds]:
    hetzner_token, cloudflare_token = "hz-" + uuid.uuid4().hex, "cf-" + uuid.uuid4().hex
    hetzner = HetznerEmulator(hetzner_token, boot_seconds=0.0, delete_seconds=0.0,
                              action_seconds=0.0, rate_limit=UNLIMITED).start()
    # Cloudflare's own limit (1,200 per 5 minutes) is off: a burst of creates would
    # measure it, not the operator (the lifecycle's count says what it allows). So is
    # the free plan's 200 records per zone: each workspace has up to 4.
    cloudflare = CloudflareEmulator(zones=(ZONE,), tokens={cloudflare_token: None},
                                    rate_limit=UNLIMITED, record_quota=UNLIMITED).start()
    try:
        yield Clouds(hetzner, cloudflare, hetzner_token, cloudflare_token)
    finally:
        hetzner.stop()
        cloudflare.stop()


# The operator under pyinstrument: SIGUSR1 writes the report (Kopf's own shutdown,
# which waits for every daemon, may outlast the bench's patience).
PROFILED = """
import signal, sys
from pyinstrument import Profiler
profiler = Profiler(interval=0.005)
profiler.start()
def report(*_):
    profiler.stop()
    with open(sys.argv[1], "w") as out:
        out.write(profiler.output_text(unicode=False, color=False))
signal.signal(signal.SIGUSR1, report)
from agentspaces.cli import main
sys.exit(main(["run"]))
"""


def child_env(kubeconfig: Path, **extra: str) -> dict[str, str]:
    """The environment of a process the benchmark starts against its control plane."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "MALLOC_ARENA_MAX": "2", **extra}  # as the operator's image sets it
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return env


@contextmanager
def running(argv: list[str], env: dict[str, str], log: Path, stop_timeout: float = 20.0
            ) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` in a session of its own that dies with the benchmark, its output to `log`;
    terminated on exit (killed after `stop_timeout` seconds)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                preexec_fn=die_with_parent)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def operator(kubeconfig: Path, log: Path, profile: Path | None, source: Path | None,
             memray: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """The operator as the Deployment runs it: default settings, no --verbose; with
    `profile`, under pyinstrument (its text report written there before it stops);
    with `memray`, under memray's aggregating tracker (every allocation, Python's own
    included, by stack: what was held at the peak, written when the operator exits);
    with `source`, imported from that copy of operator/ and vm/."""
    env = child_env(kubeconfig, AGENTSPACES_NAMESPACE=OPERATOR_NAMESPACE,
                    AGENTSPACES_METRICS_PORT="0")
    if source is not None:
        env["PYTHONPATH"] = f"{source / 'operator'}:{source / 'vm'}"
    argv = [sys.executable, "-m", "agentspaces.cli", "run"]
    if profile is not None:
        profile.unlink(missing_ok=True)
        argv = [sys.executable, "-c", PROFILED, str(profile)]
    elif memray is not None:
        memray.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "memray", "run", "--aggregate",
                "--trace-python-allocators", "-o", str(memray), *argv[1:]]
    # memray writes its capture as the operator exits
    with running(argv, env, log, stop_timeout=120 if memray else 20) as proc:
        try:
            yield proc
        finally:
            if profile is not None and proc.poll() is None:
                proc.send_signal(signal.SIGUSR1)
                wait_for(lambda: profile.exists() and profile.stat().st_size, 60,
                         "the operator's profile", interval=0.5)


class Watcher:
    """Every workspace's first sighting and first Ready, from one watch."""

    def __init__(self, kubeconfig: Path) -> None:
        self.api = client.CustomObjectsApi(config.new_client_from_config(str(kubeconfig)))
        self.added: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.phase: dict[str, str] = {}
        self._stop = threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._watch.stop()
        self._thread.join(70)

    def _run(self) -> None:
        while not self._stop.is_set():  # each stream ends within timeout_seconds
            try:
                self._stream()
            except Exception:  # a stream cut short (also by stop): watch again
                time.sleep(0.2)

    def _stream(self) -> None:
        for event in self._watch.stream(
                self.api.list_namespaced_custom_object, "agentspaces.dev", "v1alpha1",
                NAMESPACE, "workspaces", timeout_seconds=60):
            now, ws = time.monotonic(), event["object"]
            name = ws["metadata"]["name"]
            if event["type"] == "DELETED":
                self.phase[name] = "Deleted"
                continue
            self.added.setdefault(name, now)
            self.phase[name] = (ws.get("status") or {}).get("phase", "")
            if condition(ws, "Ready").get("status") == "True":
                self.ready.setdefault(name, now)

    def forget(self, names: list[str]) -> None:
        for name in names:
            self.added.pop(name, None)
            self.ready.pop(name, None)


def manifest(names: list[str]) -> str:
    return yaml.safe_dump_all([
        {"apiVersion": "agentspaces.dev/v1alpha1", "kind": "Workspace",
         "metadata": {"name": name, "namespace": NAMESPACE},
         "spec": {"className": CLASS, "repository": {"url": "https://github.com/example/app"},
                  # Nobody uses a fleet VM: without this the idle policy stops them.
                  "idle": {"timeout": "24h"}}}
        for name in names])


def wait_ready(w: Watcher, names: list[str], timeout: float) -> None:
    wait_for(lambda: all(n in w.ready for n in names), timeout,
             f"{len(names)} workspaces Ready", interval=0.5)


def delete_all(kubectl: Kubectl, w: Watcher, fleet: FleetSimulator, names: list[str]) -> None:
    kubectl("delete", "workspaces", "-n", NAMESPACE, "--all", "--wait=false")
    # Listed, not watched: a watch restarted meanwhile never sees the DELETED event.
    wait_for(lambda: not fleet.vms and not kubectl("get", "workspaces", "-n", NAMESPACE,
                                                   "-o", "name").strip(),
             600, "every workspace and its VM gone", interval=1)
    w.forget(names)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


# --- measurements ---------------------------------------------------------------------

def lifecycle(kubectl: Kubectl, clouds: Clouds, w: Watcher, fleet: FleetSimulator,
              n: int) -> tuple[float, float, Counter[str]]:
    """Hetzner and Cloudflare calls per create -> ready -> stop -> wake -> delete."""
    names = [f"life-{i}" for i in range(n)]
    clouds.hetzner.reset_calls()
    clouds.cloudflare.reset_calls()
    kubectl.apply(manifest(names))
    wait_ready(w, names, 300)
    for name in names:
        kubectl("patch", "workspace", name, "-n", NAMESPACE, "--type", "merge",
                "-p", json.dumps({"spec": {"running": False}}))
    wait_for(lambda: all(w.phase.get(n) == "Stopped" for n in names) and not fleet.vms,
             300, "stopped", interval=0.5)
    w.forget(names)
    for name in names:
        kubectl("patch", "workspace", name, "-n", NAMESPACE, "--type", "merge",
                "-p", json.dumps({"spec": {"running": True}}))
    wait_ready(w, names, 300)
    delete_all(kubectl, w, fleet, names)
    time.sleep(2)  # a call answered after the last event still belongs here
    hz = clouds.hetzner.calls
    return sum(hz.values()) / n, sum(clouds.cloudflare.calls.values()) / n, hz


def burst(kubectl: Kubectl, clouds: Clouds, w: Watcher, fleet: FleetSimulator, pid: int,
          n: int, limit: int) -> tuple[list[float], int, float]:
    """apply->Ready seconds of n workspaces applied at once, Hetzner's 429s, and the
    operator's CPU seconds per workspace until the last was Ready."""
    clouds.hetzner.set_rate_limit(limit, 1.0 if limit == HETZNER_LIMIT else limit)
    clouds.hetzner.reset_calls()
    names = [f"burst-{i}" for i in range(n)]
    cpu0 = cpu_seconds(pid)
    kubectl.apply(manifest(names))
    wait_ready(w, names, 600)
    cpu_each = (cpu_seconds(pid) - cpu0) / n
    latencies = [w.ready[name] - w.added[name] for name in names]
    throttled = sum(1 for r in clouds.hetzner.requests if r.status == 429)
    delete_all(kubectl, w, fleet, names)
    return latencies, throttled, cpu_each


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def apiserver_requests(kubectl: Kubectl) -> float:
    total = 0.0
    for line in kubectl("get", "--raw", "/metrics").splitlines():
        if line.startswith("apiserver_request_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def steady(kubectl: Kubectl, clouds: Clouds, w: Watcher, pid: int, n: int, running: int,
           window: float) -> dict[str, float]:
    """Grow to n Ready workspaces, settle, and measure for `window` seconds."""
    names = [f"run-{i}" for i in range(running, n)]
    for start in range(0, len(names), 100):  # one apply per hundred
        kubectl.apply(manifest(names[start:start + 100]))
    wait_ready(w, [f"run-{i}" for i in range(n)], 1800)
    time.sleep(POLL + 5)  # the last ones' first steady poll
    clouds.hetzner.reset_calls()
    clouds.cloudflare.reset_calls()
    api0, cpu0, t0 = apiserver_requests(kubectl), cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    api1, cpu1, t1 = apiserver_requests(kubectl), cpu_seconds(pid), time.monotonic()
    elapsed = t1 - t0
    hz = clouds.hetzner.calls
    listed = hz.pop("GET /servers", 0)
    hourly = (sum(hz.values()) * 3600 / elapsed
              + math.ceil(n / PAGE) * 3600 / INVENTORY_INTERVAL)
    return {"n": n, "rss": rss_mb(pid), "cpu": (cpu1 - cpu0) / elapsed,
            "api_per_poll": (api1 - api0) / (n * elapsed / POLL),
            "hetzner_hour": hourly, "listed_in_window": listed,
            "cloudflare_hour": sum(clouds.cloudflare.calls.values()) * 3600 / elapsed}


# --- the table ------------------------------------------------------------------------

def verdict(value: float, target: float) -> str:
    return "pass" if value <= target else "MISS"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="100",
                        help="running workspaces to measure at, ascending (100,500,1000)")
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--lifecycles", type=int, default=5)
    parser.add_argument("--window", type=float, default=120.0,
                        help="seconds of steady state measured at each count")
    parser.add_argument("--profile", type=Path,
                        help="run the operator under pyinstrument (pip install pyinstrument), "
                             "its report to this file")
    parser.add_argument("--memray", type=Path,
                        help="run the operator under memray (pip install memray), its "
                             "capture to this file; then `memray table` or `memray "
                             "flamegraph` on it")
    parser.add_argument("--operator-source", type=Path,
                        help="run the operator from this copy of the tree (e.g. "
                             "`git archive HEAD operator vm | tar -x -C DIR`), not the checkout")
    args = parser.parse_args()
    counts = sorted(int(c) for c in args.counts.split(",") if c)

    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp, \
            benchmark_cluster(Path(tmp) / "plane", NAMESPACE) as (plane, kubectl), \
            zero_latency_clouds() as clouds, \
            FleetSimulator(Path(tmp)) as fleet:
        fleet.attach(clouds.hetzner)
        install_class(kubectl, clouds, CLASS)
        with operator(plane.admin_kubeconfig, Path(tmp) / "operator.log",
                                args.profile, args.operator_source, args.memray) as proc, \
                Watcher(plane.admin_kubeconfig) as w:
            print(f"operator pid {proc.pid}; log {tmp}/operator.log", file=sys.stderr)
            life = lifecycle(kubectl, clouds, w, fleet, args.lifecycles)
            print(f"lifecycle done: {life[0]:.1f} Hetzner, {life[1]:.1f} Cloudflare "
                  f"calls each; {dict(life[2])}", file=sys.stderr)
            bursts = {}
            for label, limit in (("zero latency", UNLIMITED),
                                 ("Hetzner rate limit", HETZNER_LIMIT)):
                bursts[label] = burst(kubectl, clouds, w, fleet, proc.pid, args.burst,
                                      limit)
                print(f"burst ({label}) done", file=sys.stderr)
            rows, running = [], 0
            for n in counts:
                rows.append(steady(kubectl, clouds, w, proc.pid, n, running, args.window))
                running = n
                print(f"steady at {n}: {rows[-1]}", file=sys.stderr)
            if running and not args.memray:  # under memray: the peak is the steady state's
                delete_all(kubectl, w, fleet, [f"run-{i}" for i in range(running)])

    print(f"\noperator scale ({os.cpu_count()} cores; emulators at zero latency; "
          f"fleet simulator; poll {POLL:g} s)")
    print(f"{'figure':<52} {'measured':>10} {'target':>8}  ")
    print(f"{'Hetzner calls per lifecycle':<52} {life[0]:>10.1f} "
          f"{TARGETS['hetzner_lifecycle']:>8g}  {verdict(life[0], TARGETS['hetzner_lifecycle'])}")
    print(f"{'Cloudflare calls per lifecycle':<52} {life[1]:>10.1f} {'-':>8}")
    for label, (latencies, throttled, cpu_each) in bursts.items():
        p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
        print(f"{f'apply->Ready p50, {args.burst} at once ({label})':<52} {p50:>9.2f}s "
              f"{'-':>8}")
        target = TARGETS["p99"] if label == "zero latency" else None
        print(f"{f'apply->Ready p99, {args.burst} at once ({label})':<52} {p99:>9.2f}s "
              f"{(f'{target:g}s' if target else '-'):>8}  "
              f"{verdict(p99, target) if target else ''}"
              f"{f'  ({throttled} answered 429)' if throttled else ''}")
        # A Python process computes on about one core: the burst's CPU, serialised,
        # is a floor under the last workspace's apply->Ready.
        print(f"{f'operator CPU per create, {args.burst} at once ({label})':<52} "
              f"{cpu_each * 1000:>8.0f}ms {'-':>8}  "
              f"(x{args.burst}: {cpu_each * args.burst:.1f} s of CPU)")
    for row in rows:
        n = int(row["n"])
        final = n == max(counts) and n >= 1000
        for key, text, unit in (("rss", "operator RSS", "MB"), ("cpu", "operator CPU", "core"),
                                ("hetzner_hour", "Hetzner calls per hour", ""),
                                ("cloudflare_hour", "Cloudflare calls per hour", ""),
                                ("api_per_poll", "apiserver requests per workspace per poll",
                                 "")):
            target = TARGETS.get(key) if final else None
            print(f"{f'{text} at {n} running':<52} {row[key]:>10.2f}{unit and ' ' + unit} "
                  f"{(f'{target:g}' if target else '-'):>8}  "
                  f"{verdict(row[key], target) if target else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
