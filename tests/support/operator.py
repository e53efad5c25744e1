"""Run the real operator (`agentspaces run`) as a child process the tests can kill."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agentspaces.lifeline import die_with_parent

FAST_SETTINGS = {
    "AGENTSPACES_POLL_INTERVAL": "1s",
    "AGENTSPACES_BOOT_POLL": "0.5s",
    "AGENTSPACES_INVENTORY_INTERVAL": "3s",
    "AGENTSPACES_POOL_INTERVAL": "3s",
    "AGENTSPACES_AGENT_TIMEOUT": "3s",
    # A free port for /metrics, so operators started side by side never contend for one.
    "AGENTSPACES_METRICS_PORT": "0",
}


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log_path: Path, namespace: str,
                 extra_env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.namespace = namespace
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {**os.environ, **FAST_SETTINGS, **self.extra_env,
               "KUBECONFIG": str(self.kubeconfig), "AGENTSPACES_NAMESPACE": self.namespace}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentspaces.cli", "run", "--verbose"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, preexec_fn=die_with_parent)
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no final status write — a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples `name` whose labels include `labels`, scraped from this
        operator's /metrics (the address its log announces)."""
        found = re.search(r"metrics at (http://\S+/metrics)", self.log())
        assert found, "the operator announced no metrics address"
        with urllib.request.urlopen(found.group(1), timeout=5) as response:
            text = response.read().decode()
        wanted = set(labels.items())
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples
                   if sample.name == name and wanted <= set(sample.labels.items()))
