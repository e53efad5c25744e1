"""A sandbox started on behalf of a process (a test run) goes down when that process
dies, even by SIGKILL: no etcd, kube-apiserver, operator or emulator is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agentspaces.lifeline import OWNER_ENV, die_with_parent
from tests.e2e.test_sandbox_walkthrough import _sandbox_processes
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_sandbox_goes_down_when_its_owner_is_killed(tmp_path: Path) -> None:
    state = tmp_path / "sandbox"
    owner = subprocess.Popen(["sleep", "600"], preexec_fn=die_with_parent)
    env = {**os.environ, OWNER_ENV: str(owner.pid),
           "AGENTSPACES_SANDBOX_IPS": "127.0.0.241-127.0.0.250"}
    try:
        up = subprocess.run([sys.executable, "-m", "agentspaces.cli", "sandbox", "--dir",
                             str(state), "up"], capture_output=True, text=True, env=env,
                            timeout=240, check=False)
        assert up.returncode == 0, up.stdout + up.stderr
        serve_pid = json.loads((state / "sandbox.json").read_text())["serve_pid"]
        running = _sandbox_processes(state)
        assert serve_pid in running
        assert any("kube-apiserver" in cmd for cmd in running.values())
        assert any("etcd" in cmd for cmd in running.values())

        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        wait_for(lambda: not _sandbox_processes(state), 60,
                 "every sandbox process to exit after its owner was killed")
    finally:
        owner.kill()
        owner.wait(timeout=10)
        for pid in _sandbox_processes(state):  # a failing run must not leak them either
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
