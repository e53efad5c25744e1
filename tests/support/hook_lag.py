"""Measure how fast status follows the agent: play Claude Code's hooks to a simulated VM
and see the AGENT column (`status.activity.agentState`) change through a `kubectl get
-w` stream; count the agent API requests the operator makes. Used by the integration
test and benchmarks/hook_lag.py."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agentspaces.lifeline import die_with_parent
from agentspaces.sandbox.vmsim import hook_endpoint

# The agent logs one line per API request it answered ("<client> <METHOD> <path> <code>").
_API_REQUEST = re.compile(r" (GET|PUT|POST|DELETE|PATCH) /v1/\S+ \d{3}$")


def post_hook(state_dir: Path, server_id: int, event: str, session: str = "s1") -> float:
    """Post one hook event as Claude Code would; when the agent had taken it
    (time.monotonic())."""
    url, token = hook_endpoint(state_dir, server_id)
    body = json.dumps({"hook_event_name": event, "session_id": session,
                       "cwd": "/workspaces", "transcript_path": "/tmp/t.jsonl"}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 204
    return time.monotonic()


def api_requests(agent_log: Path) -> int:
    """How many API requests the agent has answered so far (its log lines)."""
    with agent_log.open(encoding="utf-8", errors="replace") as fh:
        return sum(1 for line in fh if _API_REQUEST.search(line.rstrip("\n")))


@dataclass
class AgentColumn:
    """The AGENT column of one Workspace as `kubectl get -w` streams it: every value
    with the moment (time.monotonic()) its line arrived."""

    proc: subprocess.Popen[str]
    seen: list[tuple[float, str]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.seen.append((time.monotonic(), line.strip()))
                self.changed.notify_all()

    def first(self, state: str, after: float, timeout: float) -> float:
        """When `state` was first shown after `after`; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for at, value in self.seen:
                    if at >= after and value == state:
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"AGENT column not {state!r} within {timeout}s "
                                         f"(last: {self.seen[-3:]})")
                self.changed.wait(left)


@contextlib.contextmanager
def agent_column(kubectl: Path, kubeconfig: Path, name: str, namespace: str
                 ) -> Iterator[AgentColumn]:
    proc = subprocess.Popen(
        [str(kubectl), "--kubeconfig", str(kubeconfig), "get", "workspace", name, "-n",
         namespace, "--watch", "-o", "jsonpath={.status.activity.agentState}{\"\\n\"}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        text=True, bufsize=1, start_new_session=True, preexec_fn=die_with_parent)
    column = AgentColumn(proc)
    reader = threading.Thread(target=column._read, daemon=True)
    reader.start()
    try:
        yield column
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=5)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]
