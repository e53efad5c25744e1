"""Install the pinned Claude Code build on a workspace-image builder.

`python3 bake_claude.py ROOT`, with claude_install.py beside it: the same install as
`python3 -m agentspaces_vm.claude_install ROOT` (what scripts/build-vm-image.sh runs),
without the rest of the agent, which that entry point imports for its command runner
and which the builder's user-data does not carry. Python 3 standard library only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import claude_install  # written next to this file by the builder's user-data


def run(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
        timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), env=dict(env), cwd=cwd, timeout=timeout,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "",
                                           f"{argv[0]} timed out after {timeout:.0f}s")


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 bake_claude.py ROOT", file=sys.stderr)
        return 2
    try:
        done = claude_install.install(Path(argv[0]), npm=shutil.which("npm") or "npm",
                                      runner=run, env=claude_install.npm_env(os.environ))
    except (claude_install.InstallError, OSError) as exc:
        print(f"bake_claude: {exc}", file=sys.stderr)
        return 1
    print(f"{'installed' if done.installed_now else 'already installed'}: {done.binary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
