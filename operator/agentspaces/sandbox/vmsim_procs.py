"""Processes of a simulated VM: each one started in its own process group (so whatever it
forks goes with it) with its output in a log file, and stopped group by group: SIGTERM,
a bounded wait, then SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agentspaces.lifeline import die_with_parent

PROC = Path("/proc")


@dataclass
class VmProcess:
    role: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """Also the process group id (start_new_session)."""
        return self.popen.pid

    def exit_code(self) -> int | None:
        return self.popen.poll()


def spawn(role: str, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str],
          log: Path) -> VmProcess:
    """Start `argv` in a new session with stdout and stderr appended to `log`.

    Raises OSError when the program cannot be started at all.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"--- vmsim: starting {role}: {' '.join(argv)}\n".encode())
        out.flush()
        popen = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=cwd, env=dict(env),
                                 start_new_session=True, preexec_fn=die_with_parent)
    return VmProcess(role, popen, log)


def _proc_group_members(pgid: int) -> list[int] | None:
    """Live (non-zombie) processes in group `pgid`, or None without /proc."""
    if not PROC.is_dir():
        return None
    members = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) >= 3 and fields[0] != "Z" and fields[2] == str(pgid):
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    """True while any non-zombie process of the group runs."""
    members = _proc_group_members(pgid)
    if members is not None:
        return bool(members)
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal_group(proc: VmProcess, signum: int) -> None:
    # Once the leader is reaped and its group empty, the id may belong to someone else.
    if proc.popen.poll() is None or group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signum)


def _wait_gone(procs: Sequence[VmProcess], seconds: float) -> list[VmProcess]:
    deadline = time.monotonic() + seconds
    while True:
        for proc in procs:
            proc.popen.poll()  # reap the leader, so it stops counting
        alive = [p for p in procs if p.popen.poll() is None or group_alive(p.pid)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def stop_processes(procs: Sequence[VmProcess], term_seconds: float = 5.0,
                   kill_seconds: float = 5.0) -> list[str]:
    """SIGTERM every group, wait up to `term_seconds`, SIGKILL what is left and wait up
    to `kill_seconds`. Returns the roles of groups still alive after all that."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    alive = _wait_gone(procs, term_seconds)
    for proc in alive:
        _signal_group(proc, signal.SIGKILL)
    alive = _wait_gone(alive, kill_seconds)
    return [p.role for p in alive]
