"""Backup/restore throughput and memory against a `tar | zstd -3` baseline.

Builds a workspace-like tree (many small source files, a few large ones, partly
compressible), starts moto's S3 server on 127.0.0.1, and runs the real path:
begin_backup -> agent backup() -> commit_backup -> restore_plan -> agent restore().
The agent side runs in a subprocess so its peak RSS is its own. The baseline is the
same tar command piped through a single-threaded `zstd -3` to /dev/null (and `zstd -d |
tar -x` for restore), timed in the same run on the same tree, alternating with the
agent; the median of the runs counts (the machine may be shared).

    .venv/bin/python benchmarks/backup_bench.py --size 256MiB --size 1GiB

Goal: agent throughput >= 1.0x the baseline, agent peak RSS <= 128 MiB whatever the
tree size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentspaces_vm.contracts import BackupPlan, RestorePlan

MIB = 1024 * 1024


# --- the tree -----------------------------------------------------------------------------

_KEYWORDS = ("def class return import from self if else elif for while in not and or None "
             "True False try except finally with as yield lambda async await pass raise "
             "config value result items error request response handler client server path "
             "name data index count total buffer stream chunk key token status update state "
             "workspace backup restore upload part size offset length logger context")
_WORDS = _KEYWORDS.split()


def _text_pool(rng: random.Random, size: int) -> bytes:
    """Source-like text: indented lines of keywords, identifiers and numbers."""
    idents = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randint(3, 12)))
              for _ in range(3000)]
    vocab = _WORDS + idents
    lines, total = [], 0
    while total < size:
        words = rng.choices(vocab, k=rng.randint(2, 12))
        line = "    " * rng.randint(0, 4) + " ".join(words)
        if rng.random() < 0.2:
            line += f" = {rng.randint(0, 10**6)}"
        lines.append(line)
        total += len(line) + 1
    return ("\n".join(lines) + "\n").encode()[:size]


def build_tree(root: Path, size_mib: int, seed: int = 7) -> tuple[int, int]:
    """~45% small source files, ~25% large text (logs, data), ~30% incompressible.
    Returns (files, bytes)."""
    rng = random.Random(seed)
    target = size_mib * MIB
    pool = _text_pool(rng, 24 * MIB)
    files = written = 0
    root.mkdir(parents=True)
    small_budget = int(target * 0.45)
    while written < small_budget:
        pkg = root / "src" / f"pkg{files // 400:03d}" / f"mod{files // 40 % 10}"
        pkg.mkdir(parents=True, exist_ok=True)
        size = min(int(rng.lognormvariate(8.8, 1.0)) + 200, 256 * 1024)
        start = rng.randrange(0, len(pool) - size)
        (pkg / f"file{files}.py").write_bytes(
            f"# file {files} {rng.getrandbits(64):x}\n".encode() + pool[start:start + size])
        files += 1
        written += size
    big = root / "data"
    big.mkdir()
    text_budget = int(target * 0.25)
    for i in range(3):
        with open(big / f"service-{i}.log", "wb") as out:
            remaining = text_budget // 3
            while remaining > 0:
                start = rng.randrange(0, len(pool) - MIB)
                piece = pool[start:start + min(MIB, remaining)]
                out.write(piece)
                remaining -= len(piece)
        files += 1
        written += text_budget // 3
    noise_budget = max(0, target - written)
    for i in range(2):
        with open(big / f"blob-{i}.bin", "wb") as out:
            remaining = noise_budget // 2
            while remaining > 0:
                piece = os.urandom(min(8 * MIB, remaining))
                out.write(piece)
                remaining -= len(piece)
        files += 1
        written += noise_budget // 2
    return files, written


def tree_digest(root: Path) -> str:
    """One hash over names, modes, mtimes and contents, to check a restore."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            st = os.lstat(path)
            digest.update(f"{path.relative_to(root)} {st.st_mode} {st.st_mtime_ns}\n".encode())
            with open(path, "rb") as handle:
                while block := handle.read(4 * MIB):
                    digest.update(block)
    return digest.hexdigest()


# --- the agent, in its own process ----------------------------------------------------------

def agent_worker(action: str, plan_file: str, root: str) -> None:
    from agentspaces_vm import backup as agent

    plan = json.loads(Path(plan_file).read_text())
    started = time.perf_counter()
    result: Any = None
    if action == "backup":
        result = agent.backup(plan, Path(root), lambda _: None).to_json()
    else:
        agent.restore(plan, Path(root))
    seconds = time.perf_counter() - started
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"seconds": seconds, "rssKiB": peak_rss_kib(), "result": result,
                      "cpu": own.ru_utime + own.ru_stime,
                      "childCpu": kids.ru_utime + kids.ru_stime}))


def peak_rss_kib() -> int:
    """This process's own RSS high-water mark. Not getrusage(): after a vfork+exec the
    new process inherits the parent's high-water mark there (here: the moto server's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_agent(action: str, plan: BackupPlan | RestorePlan, root: Path, scratch: Path
              ) -> dict[str, Any]:
    plan_file = scratch / f"{action}-plan.json"
    plan_file.write_text(json.dumps(plan.to_json()))
    plan_file.chmod(0o600)
    os.sync()  # start every timed run with no writeback pending from the last one
    before = resource.getrusage(resource.RUSAGE_SELF)  # this process = the S3 server
    out = subprocess.run([sys.executable, __file__, "--agent-worker", action, str(plan_file),
                          str(root)], check=True, capture_output=True, text=True, timeout=3600)
    after = resource.getrusage(resource.RUSAGE_SELF)
    plan_file.unlink()
    run = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    run["serverCpu"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return run


# --- baselines ------------------------------------------------------------------------------

def baseline_backup(root: Path, out: Path | None) -> float:
    from agentspaces_vm.backup import tar_create_args

    with open(out or os.devnull, "wb") as sink:
        os.sync()
        started = time.perf_counter()
        tar = subprocess.Popen(tar_create_args(root, ()), stdout=subprocess.PIPE)
        zstd = subprocess.run(["zstd", "-3", "-q", "-c", "-"], stdin=tar.stdout, stdout=sink,
                              check=True, timeout=3600)
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait(timeout=60)
        del zstd
        return time.perf_counter() - started


def baseline_restore(archive: Path, target: Path) -> float:
    from agentspaces_vm.backup import tar_extract_args

    target.mkdir()
    os.sync()
    started = time.perf_counter()
    zstd = subprocess.Popen(["zstd", "-d", "-q", "-c", str(archive)], stdout=subprocess.PIPE)
    subprocess.run(tar_extract_args(target), stdin=zstd.stdout, check=True, timeout=3600)
    assert zstd.stdout is not None
    zstd.stdout.close()
    zstd.wait(timeout=60)
    return time.perf_counter() - started


# --- one size -------------------------------------------------------------------------------

@dataclass
class Row:
    size_mib: int
    phase: str
    baseline_mib_s: float
    agent_mib_s: float
    agent_rss_mib: float
    cpu: tuple[float, float, float]  # agent, its tar+zstd, the S3 server (s, best run)

    @property
    def ratio(self) -> float:
        return self.agent_mib_s / self.baseline_mib_s


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda run: float(run["seconds"]))[(len(runs) - 1) // 2]


def bench_size(size_mib: int, workdir: Path, endpoint: str, part_size: int,
               repeat: int) -> list[Row]:
    """Baseline and agent alternate `repeat` times; the median time of each side counts
    (the machine is shared), the agent's RSS is the worst seen."""
    from agentspaces.clouds.r2 import S3ObjectStore, make_client
    from agentspaces.persistence import backups, keys

    scratch = workdir / f"run-{size_mib}"
    scratch.mkdir()
    tree = scratch / "tree"
    t0 = time.perf_counter()
    files, total = build_tree(tree, size_mib)
    mib = total / MIB
    print(f"[{size_mib} MiB] built {files} files, {mib:.0f} MiB in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)

    bucket = f"bench-{size_mib}"
    make_client(endpoint, "bench", "bench", region="us-east-1").create_bucket(Bucket=bucket)
    store = S3ObjectStore.connect(endpoint, bucket, "bench", "bench")
    ws = backups.BackupLocation.for_workspace("bench/", "default", "bench", f"uid-{size_mib}")
    data_key = keys.DataKey(keys.new_key_id(), keys.generate_data_key())
    clock = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)

    baseline_backup(tree, None)  # warm the page cache
    base_times: list[float] = []
    runs: list[dict[str, Any]] = []
    record = None
    for rep in range(repeat):
        base_times.append(baseline_backup(tree, None))
        if record is not None:  # keep one backup object in the (in-memory) server
            backups.delete_all(store, ws)
        plan, pending = backups.begin_backup(store, ws, data_key,
                                             clock + timedelta(minutes=rep), part_size,
                                             backups.DEFAULT_MAX_PARTS, 3600)
        run = run_agent("backup", plan, tree, scratch)
        record = backups.commit_backup(store, pending, run["result"], data_key, datetime.now(UTC))
        runs.append(run)
    assert record is not None
    base_b, mid = statistics.median(base_times), _median_run(runs)
    agent_b, rss_b = mid["seconds"], max(r["rssKiB"] for r in runs)
    cpu_b = (mid["cpu"], mid["childCpu"], mid["serverCpu"])
    print(f"[{size_mib} MiB] object {record.size / MIB:.0f} MiB "
          f"({record.size / total:.0%} of the tree), {len(run['result']['parts'])} parts",
          flush=True)

    archive = scratch / "baseline.tar.zst"
    baseline_backup(tree, archive)
    base_times, runs = [], []
    for rep in range(repeat):
        base_times.append(baseline_restore(archive, scratch / "baseline-restore"))
        shutil.rmtree(scratch / "baseline-restore")
        target = scratch / "restored"
        restore = backups.restore_plan(store, record, data_key, 3600, datetime.now(UTC))
        runs.append(run_agent("restore", restore, target, scratch))
        if rep == 0 and tree_digest(tree) != tree_digest(target):
            raise SystemExit(f"[{size_mib} MiB] restored tree differs from the source")
        shutil.rmtree(target)
    base_r, mid = statistics.median(base_times), _median_run(runs)
    agent_r, rss_r = mid["seconds"], max(r["rssKiB"] for r in runs)
    cpu_r = (mid["cpu"], mid["childCpu"], mid["serverCpu"])
    archive.unlink()
    backups.delete_all(store, ws)
    shutil.rmtree(scratch)
    return [Row(size_mib, "backup", mib / base_b, mib / agent_b, rss_b / 1024, cpu_b),
            Row(size_mib, "restore", mib / base_r, mib / agent_r, rss_r / 1024, cpu_r)]


def _default_workdir() -> Path | None:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


_UNITS = {"": 1, "m": 1, "mb": 1, "mib": 1, "g": 1024, "gb": 1024, "gib": 1024}


def parse_size(text: str) -> int:
    """A tree size in MiB from "256MiB", "1GiB", "1.5G" or "512" (MiB)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS or float(match.group(1)) * _UNITS[unit] < 1:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256MiB, 1GiB)")
    return round(float(match.group(1)) * _UNITS[unit])


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--agent-worker":
        agent_worker(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, action="append", dest="sizes",
                        help="tree size, e.g. 256MiB or 1GiB; repeat to compare sizes "
                             "(default 1GiB)")
    parser.add_argument("--size-mib", type=int, action="append", dest="sizes",
                        help=argparse.SUPPRESS)  # the older spelling
    parser.add_argument("--part-size-mib", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per side, alternating; the median counts")
    parser.add_argument("--workdir", type=Path, default=_default_workdir(),
                        help="where trees are built (default: /dev/shm, so disk writeback "
                             "on a shared machine does not drown the numbers)")
    args = parser.parse_args()
    sizes = args.sizes or [1024]

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    workdir = Path(tempfile.mkdtemp(prefix="backup-bench-", dir=args.workdir))
    rows: list[Row] = []
    try:
        host, port = server.get_host_and_port()
        for size in sizes:
            rows += bench_size(size, workdir, f"http://{host}:{port}",
                               args.part_size_mib * MIB, max(1, args.repeat))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\npart size {args.part_size_mib} MiB, chunk 1 MiB, {os.cpu_count()} CPUs, "
          f"median of {args.repeat}, trees in {args.workdir or tempfile.gettempdir()}; "
          "MiB/s of tree data; baseline = tar | zstd -3 (restore: zstd -d | tar -x); "
          "peak RSS = the agent process's (tar and zstd are separate processes)")
    print("| tree | phase | baseline | agent | ratio | agent peak RSS "
          "| CPU s: agent / tar+zstd / S3 server |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        tree = f"{row.size_mib // 1024} GiB" if row.size_mib % 1024 == 0 else \
            f"{row.size_mib} MiB"
        print(f"| {tree} | {row.phase} | {row.baseline_mib_s:.0f} MiB/s "
              f"| {row.agent_mib_s:.0f} MiB/s | {row.ratio:.2f}x | {row.agent_rss_mib:.0f} MiB "
              f"| {row.cpu[0]:.1f} / {row.cpu[1]:.1f} / {row.cpu[2]:.1f} |")


if __name__ == "__main__":
    main()
