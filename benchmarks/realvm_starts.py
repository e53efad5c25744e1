"""Cold, wake and warm-pool starts on real VMs: the real-VM tier's timelines as a table.

Runs `scripts/test.sh tests/realvm` (which installs what the tier needs) with
AGENTSPACES_REALVM_TIMELINES set, so each scenario writes its timeline as it ends, then
prints, in seconds from the apply (or the wake):

- a cold start: the first boot of a workspace on the workspace base image (software at
  its pins, so the bootstrap's install steps skip), the clone and `devcontainer up`;
- a wake: a new VM, the restore, the same steps;
- the bake: WorkspaceImage apply -> builder created -> the guest's own power-off ->
  snapshot -> Ready;
- a warm-pool server: class applied -> booted from that snapshot -> awaiting a claim;
- a claim: the workspace applied -> the pool server relabelled -> the claim's config,
  the clone and `devcontainer up` -> usable.

Everything runs under QEMU's TCG on this host, so guest work is 10-20x slower than on
a real cx23 (benchmarks/tcg_slowdown.py); the ratios between the rows are the point.
It prints tables; it asserts nothing (the tests it runs do).

    flock /tmp/agentspaces-qemu.lock .venv/bin/python benchmarks/realvm_starts.py \\
        [--timelines FILE]   # FILE: read an earlier run's timelines instead of running
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMELINES_ENV = "AGENTSPACES_REALVM_TIMELINES"  # tests/realvm/harness.py
SCENARIOS = "test_a_workspace_on_a_real_vm or test_a_baked_image_and_a_warm_pool"
USABLE = "usable (Caddy 200 with the password)"
STEPS = ("server created", "agent answering", "agent delivered and running",
         "devcontainer up started", "AgentReady", USABLE)
STARTS = (("cold: first boot, workspace base image", "real VM, first boot", "first boot"),
          ("wake: new VM + restore", "wake", "wake"),
          ("warm pool: claim of a server booted from the image", "claim", "claim"))


def run_tier(timelines: Path) -> int:
    log = timelines.with_suffix(".log")
    print(f"running the real-VM scenarios (about 30 minutes); pytest's output: {log}",
          file=sys.stderr, flush=True)
    with log.open("w") as out:
        done = subprocess.run(["bash", "scripts/test.sh", "tests/realvm", "-k", SCENARIOS,
                               "-s"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, TIMELINES_ENV: str(timelines)}, check=False)
    return done.returncode


def read(timelines: Path) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    for line in timelines.read_text().splitlines():
        entry = json.loads(line)
        found[entry["title"]] = entry["marks"]
    return found


def cell(marks: dict[str, float], name: str) -> str:
    return f"{marks[name]:.0f}" if name in marks else "-"


def starts_table(found: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| start (TCG, seconds from apply) | " + " | ".join(STEPS) + " |",
             "|---|" + "---|" * len(STEPS)]
    for label, title, prefix in STARTS:
        marks = found.get(title, {})
        lines.append(f"| {label} | "
                     + " | ".join(cell(marks, f"{prefix}: {step}") for step in STEPS) + " |")
    return lines


def pool_table(found: dict[str, dict[str, float]]) -> list[str]:
    bake = found.get("bake and warm pool", {})
    rows = [("WorkspaceImage apply -> builder created", "bake: builder created"),
            ("WorkspaceImage apply -> Ready (snapshot available)", "bake: Ready"),
            ("class applied -> pool server offered (its loader awaits a claim)",
             "pool: class applied -> server awaiting claim"),
            ("class applied -> pool server's bootstrap done",
             "pool: class applied -> bootstrap done (console)")]
    lines = ["| bake and pool (TCG) | seconds |", "|---|---|"]
    lines += [f"| {label} | {cell(bake, name)} |" for label, name in rows]
    cold = found.get("real VM, first boot", {}).get(f"first boot: {USABLE}")
    claimed = found.get("claim", {}).get(f"claim: {USABLE}")
    boot = bake.get("pool: class applied -> bootstrap done (console)")
    if cold and claimed:
        lines.append(f"| apply -> usable, claim / cold | {claimed / cold:.2f} |")
    if claimed and boot:
        lines.append(f"| from the image without a pool (pool bootstrap + claim, summed) | "
                     f"{boot + claimed:.0f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timelines", type=Path,
                        help="an earlier run's AGENTSPACES_REALVM_TIMELINES file")
    args = parser.parse_args()
    code = 0
    if args.timelines is None:
        args.timelines = Path(tempfile.mkdtemp(prefix="realvm-starts-")) / "timelines.jsonl"
        code = run_tier(args.timelines)
    if not args.timelines.is_file():
        print(f"no timelines in {args.timelines} (pytest exit {code})", file=sys.stderr)
        return code or 1
    found = read(args.timelines)
    print("\n".join(starts_table(found)) + "\n\n" + "\n".join(pool_table(found)))
    if code:
        print(f"\nthe tier failed (pytest exit {code}): the figures above are partial",
              file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
