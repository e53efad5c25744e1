"""How much slower a real VM under QEMU's TCG is than this host: the same CPU-bound
commands timed on the host and inside a guest booted from the sandbox's Debian 13
image (sandbox/vmqemu.py), plus the guest's boot milestones. The factor turns the
VM durations measured here into an estimate for a real Hetzner server.

Prints a table; exits non-zero if the guest does not answer in time.

    .venv/bin/python benchmarks/tcg_slowdown.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import hcloud
from hcloud.images import Image
from hcloud.server_types import ServerType

from agentspaces.sandbox.hetzner import HetznerEmulator
from agentspaces.sandbox.vmqemu import QemuVms, build_image
from agentspaces.sandbox.vmsim_ips import LoopbackPool

TOKEN = "tcg-bench-token"
PORT = 9443
BOOT_TIMEOUT = 600.0
# Interpreter-bound and library (C) bound work; each takes about a second on the host.
WORKLOADS = {
    "python loop (5M additions)": "s=0\nfor i in range(5_000_000): s += i",
    "sha256 of 200 MiB": "import hashlib\nh=hashlib.sha256()\nb=bytes(1<<20)\n"
                         "for _ in range(200): h.update(b)",
    "zlib level 6, 32 MiB": "import zlib, os\nzlib.compress(os.urandom(1<<25), 6)",
}


def timed(code: str, rounds: int) -> float:
    """Median seconds of `rounds` runs of `code` in a fresh python3."""
    runner = ("import time\nt=time.perf_counter()\nexec(compile(CODE,'w','exec'))\n"
              "print(time.perf_counter()-t)")
    times = []
    for _ in range(rounds):
        out = subprocess.run(["python3", "-c", f"CODE={code!r}\n{runner}"], check=True,
                             capture_output=True, text=True, timeout=600).stdout
        times.append(float(out))
    return statistics.median(times)


def guest_script(rounds: int) -> str:
    """The same measurement inside the guest, written to a file it then serves."""
    program = ("import json, statistics, subprocess, time\n"
               f"W={WORKLOADS!r}\nR={rounds}\n"
               "runner='import time\\nt=time.perf_counter()\\n"
               "exec(compile(CODE,\"w\",\"exec\"))\\nprint(time.perf_counter()-t)'\n"
               "out={}\n"
               "for name, code in W.items():\n"
               "    ts=[float(subprocess.run(['python3','-c',f'CODE={code!r}\\n'+runner],"
               "check=True,capture_output=True,text=True).stdout) for _ in range(R)]\n"
               "    out[name]=statistics.median(ts)\n"
               "json.dump(out, open('/srv/bench/result.json.tmp','w'))\n"
               "import os; os.rename('/srv/bench/result.json.tmp','/srv/bench/result.json')\n")
    return "#cloud-config\n" + json.dumps({
        "write_files": [{"path": "/srv/bench/run.py", "content": program,
                         "permissions": "0644"}],
        "runcmd": [
            ["sh", "-c", "cat /proc/uptime > /srv/bench/uptime-at-runcmd"],
            ["systemd-run", "--unit=bench-http", "/usr/bin/python3", "-m", "http.server",
             str(PORT), "--directory", "/srv/bench"],
            ["python3", "/srv/bench/run.py"],
        ],
    })


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    host = {name: timed(code, args.rounds) for name, code in WORKLOADS.items()}
    image = build_image()
    with tempfile.TemporaryDirectory(prefix="tcg-bench-") as state:
        vms = QemuVms(Path(state), image, ip_pool=LoopbackPool("127.0.0.190", "127.0.0.199"),
                      ports=(PORT,))
        emulator = HetznerEmulator(TOKEN, boot_seconds=0.1, delete_seconds=0.1,
                                   action_seconds=0.05)
        vms.attach(emulator)
        emulator.start()
        try:
            client = hcloud.Client(token=TOKEN, api_endpoint=emulator.url, poll_interval=0.2)
            created = time.monotonic()
            server = client.servers.create(
                name="tcg-bench", server_type=ServerType(name="cx23"),
                image=Image(name="debian-13"), user_data=guest_script(args.rounds)).server
            ip = server.public_net.ipv4.ip
            deadline = created + BOOT_TIMEOUT
            answered = result = None
            while time.monotonic() < deadline:
                if answered is None and fetch(f"http://{ip}:{PORT}/") is not None:
                    answered = time.monotonic() - created
                text = fetch(f"http://{ip}:{PORT}/result.json")
                if text:
                    result = json.loads(text)
                    break
                time.sleep(1)
            if result is None:
                print(f"the guest gave no result within {BOOT_TIMEOUT:.0f}s", file=sys.stderr)
                return 1
            uptime = float((fetch(f"http://{ip}:{PORT}/uptime-at-runcmd") or "0").split()[0])
            client.servers.delete(server)
        finally:
            vms.stop_all()
            emulator.stop()

    print(f"\n{'workload':<30} {'host s':>8} {'guest s':>8} {'factor':>7}")
    factors = []
    for name in WORKLOADS:
        factor = result[name] / host[name]
        factors.append(factor)
        print(f"{name:<30} {host[name]:>8.2f} {result[name]:>8.2f} {factor:>7.1f}")
    print(f"{'geometric mean':<30} {'':>8} {'':>8} "
          f"{statistics.geometric_mean(factors):>7.1f}")
    print(f"\nguest boot: kernel -> cloud-init runcmd {uptime:.1f}s; "
          f"create -> guest answers {answered or float('nan'):.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
