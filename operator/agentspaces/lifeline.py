"""Tie child processes to the life of whoever started them.

Every server this project starts for tests or the sandbox (etcd, kube-apiserver, the
operator, simulated VMs) runs in its own session, so a Ctrl-C aimed at the parent's
process group does not reach it half way through a controlled shutdown. The price is
that a parent killed outright (SIGKILL, an OOM kill, a CI time-out) would leave them
running. Two guards close that gap:

- `die_with_parent`, a `preexec_fn`: the kernel sends the child SIGKILL when the
  thread that started it dies (Linux `PR_SET_PDEATHSIG`). Start long-lived children
  from a long-lived thread.
- `OwnerWatch`: a daemon (the sandbox) started on behalf of another process polls that
  process and shuts down when it is gone (`AGENTSPACES_OWNER_PID`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

OWNER_ENV = "AGENTSPACES_OWNER_PID"
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


# Resolved once in the parent: the child of a fork must not load libraries.
_PRCTL = _load_prctl()


def die_with_parent() -> None:
    """`preexec_fn` for subprocess.Popen: SIGKILL this child when its parent dies."""
    parent = os.getppid()
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died between fork and prctl; then nobody would ever signal.
    if os.getppid() != parent:
        os._exit(1)


def owner_from_env(environ: dict[str, str] | None = None) -> int | None:
    """The pid named by AGENTSPACES_OWNER_PID, when set and valid."""
    raw = (environ if environ is not None else dict(os.environ)).get(OWNER_ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 1 else None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
        return stat[stat.rfind(")") + 2:].split()[0] != "Z"
    except OSError:
        return True


class OwnerWatch:
    """True from `gone()` once the owning process has exited (never without an owner)."""

    def __init__(self, owner: int | None,
                 alive: Callable[[int], bool] = process_alive) -> None:
        self.owner = owner
        self._alive = alive

    def gone(self) -> bool:
        return self.owner is not None and not self._alive(self.owner)
