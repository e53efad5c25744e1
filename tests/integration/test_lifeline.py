"""Servers started for tests and the sandbox go down with the process that started
them, even when that process is killed outright (SIGKILL: no finally, no atexit)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agentspaces.lifeline import OwnerWatch, die_with_parent, process_alive
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

# Starts the real control plane, prints the pids of etcd and kube-apiserver, then hangs.
PARENT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from agentspaces.controlplane import ControlPlane
    plane = ControlPlane(workdir=Path(sys.argv[1])).start()
    print(json.dumps([p.pid for p in plane._procs]), flush=True)
    time.sleep(600)
""")


def test_control_plane_dies_with_a_killed_parent(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "cp")],
                              stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        children = json.loads(line)
        assert len(children) == 2 and all(process_alive(pid) for pid in children)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
    try:
        wait_for(lambda: not any(process_alive(pid) for pid in children), 15,
                 "etcd and kube-apiserver to exit after their parent was killed")
    finally:
        for pid in children:  # a failing run must not leak them either
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_owner_watch_sees_the_owner_exit() -> None:
    owner = subprocess.Popen(["sleep", "30"], preexec_fn=die_with_parent)
    try:
        watch = OwnerWatch(owner.pid)
        assert not watch.gone()
        owner.send_signal(signal.SIGKILL)
        # Not yet reaped by us: a zombie counts as gone.
        wait_for(watch.gone, 10, "the watch to notice its owner's exit")
    finally:
        owner.wait(timeout=10)
    assert OwnerWatch(None).gone() is False
    assert OwnerWatch(os.getpid()).gone() is False
