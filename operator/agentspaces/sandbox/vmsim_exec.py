"""Run a program in a simulated VM as the VM's devcontainer runs it: Claude Code above all
(`VmSimulator.container_command`).

On a VM Claude runs in the devcontainer, in the repository at `/workspaces/<repo>`, with
`CLAUDE_CONFIG_DIR=/workspaces/.claude`; the settings the agent writes there name that
path again (`env.CLAUDE_CONFIG_DIR`, docs/vm.md), and Claude keys its transcripts by
the real path of its working directory (`projects/-workspaces-app/`). So the path has
to be the VM's: elsewhere Claude would switch to a `/workspaces/.claude` that does not
exist and lose its hooks, and `claude --continue` after a wake would look in another
project directory.

A simulated VM's `/workspaces` lives under its per-server root instead. The command
therefore runs in a private mount namespace (util-linux `unshare`) and a chroot whose
root is the host's (every top-level directory bound recursively, on a tmpfs mounted
over `<state>/devcontainer/root`) plus the VM's `/workspaces` at `/workspaces`. Nothing
outside the namespace sees these mounts. Root needs only the mount namespace; anyone
else gets a user namespace that maps them to root inside (what they write stays theirs).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agentspaces.vmconfig.layout import VM_LAYOUT

from .vmsim_layout import SimulationError

ROOT_MOUNT_POINT = Path("devcontainer") / "root"  # under the sandbox's state directory
# $1: the VM's /workspaces, $2: the new root, $3: the working directory inside, then
# the command. A recursive bind of the directory holding the new root copies the new
# root into itself: that copy is detached again before the chroot.
_ENTER = """set -e
vm=$1 new=$2 cwd=$3
shift 3
mount -t tmpfs -o mode=0755 agentspaces-devcontainer "$new"
for path in /*; do
  name=${path#/}
  [ "$name" = workspaces ] && continue
  if [ -L "$path" ]; then
    ln -s "$(readlink "$path")" "$new/$name"
  elif [ -d "$path" ]; then
    mkdir "$new/$name"
    mount --rbind "$path" "$new/$name"
  fi
done
mkdir "$new/workspaces"
mount --bind "$vm" "$new/workspaces"
umount -l "$new$new" 2>/dev/null || true
exec chroot "$new" /bin/sh -c 'cd "$1" && shift && exec "$@"' devcontainer "$cwd" "$@"
"""


@dataclass(frozen=True)
class ContainerCommand:
    """What to start (with subprocess.Popen): `argv` with `env`, from any directory."""

    argv: list[str]
    env: dict[str, str]
    workdir: PurePosixPath
    """The command's working directory, as the command sees it (under /workspaces)."""


def container_command(vm_workspaces: Path, new_root: Path, argv: Sequence[str], *,
                      workdir: str = "", home: Path,
                      env: Mapping[str, str] | None = None) -> ContainerCommand:
    """`argv` in a view of the host with the VM's /workspaces (`vm_workspaces`) at
    /workspaces, in /workspaces/`workdir`, with the devcontainer's Claude environment
    plus `env`. `new_root` is an empty directory to mount the view on (created);
    `home` is the container user's home (created)."""
    rel = PurePosixPath(workdir)
    if rel.is_absolute() or ".." in rel.parts:
        raise SimulationError(f"workdir {workdir!r}: expected a path inside /workspaces")
    unshare = shutil.which("unshare")
    if unshare is None:
        raise SimulationError("util-linux unshare is needed to run a command in a "
                              "simulated VM's devcontainer")
    if not vm_workspaces.is_dir():
        raise SimulationError(f"{vm_workspaces} is not a simulated VM's /workspaces")
    new_root.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    workspaces = PurePosixPath(VM_LAYOUT.workspaces_dir)
    inside = workspaces.joinpath(*rel.parts)
    namespaces = ["--mount"] if os.geteuid() == 0 else ["--user", "--map-root-user", "--mount"]
    full_env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
                "LANG": "C.UTF-8", "HOME": str(home),
                # What the devcontainer sets (containerEnv and --remote-env, docs/vm.md).
                "CLAUDE_CONFIG_DIR": VM_LAYOUT.claude_config_dir, "DISABLE_AUTOUPDATER": "1",
                **(env or {})}
    return ContainerCommand(
        argv=[unshare, *namespaces, "--propagation", "private", "--", "/bin/sh", "-c",
              _ENTER, "vmsim-devcontainer", str(vm_workspaces.resolve()),
              str(new_root.resolve()), str(inside), *argv],
        env=full_env, workdir=inside)
