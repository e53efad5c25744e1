"""Run the real dashboard (`agentspaces dashboard`) as a child process, and a headless
Debian chromium for Playwright (never Playwright's own browser download)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from agentspaces.controlplane import free_port
from agentspaces.lifeline import die_with_parent
from tests.support.waiting import wait_for


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


class DashboardProcess:
    def __init__(self, kubeconfig: Path, log_path: Path, mode: str = "kubeconfig",
                 namespace: str | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.mode = mode
        self.namespace = namespace
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> DashboardProcess:
        args = [sys.executable, "-m", "agentspaces.cli", "dashboard", "--port",
                str(self.port), "--auth", self.mode, "--kubeconfig", str(self.kubeconfig)]
        if self.namespace:
            args += ["--namespace", self.namespace]
        env = {**os.environ}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env,
                                     start_new_session=True, preexec_fn=die_with_parent)
        log.close()
        wait_for(self._healthy, timeout, f"the dashboard on {self.url}; log {self.log_path}")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"dashboard exited: {self.log()}")
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
