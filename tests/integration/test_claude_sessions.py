"""The real Claude Code CLI in simulated VMs, through the real operator and apiserver.

Each workspace's simulated VM runs the real agent, which installs the Claude settings
(hooks), CLAUDE.md and .mcp.json from the seeds the operator rendered into the
user-data. The pinned `claude` binary (AGENTSPACES_CLAUDE_BIN, installed by
scripts/test.sh) runs as the VM's devcontainer would run it
(`VmSimulator.container_command`: the VM's /workspaces at /workspaces, in the repository
/workspaces/app, CLAUDE_CONFIG_DIR=/workspaces/.claude) against a scripted Messages API
on loopback. No tool permission is granted by flags or settings; nothing here posts a
hook by hand: what the operator reads is what Claude's hooks told the agent. Idle
timeouts and the busy cap are at their minimum (1m), polls every second.

- A session whose Bash tool runs longer than the idle timeout keeps its VM (never
  stopped, same server), is `waiting` after Stop, `absent` after SessionEnd, and the
  workspace stops a timeout later with a backup; woken on a new server,
  `claude --continue` sends the earlier conversation to the API again.
- A session stuck in a tool is stopped by the busy cap.
- A permission prompt in the terminal raises Notification (waiting for the user), and
  one asked through the SDK's permission callback (as a web UI asks) PermissionRequest.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pytest

from agentspaces.lifeline import die_with_parent
from agentspaces.sandbox.vmsim import VmSimulator
from tests.component.agent_harness import stop_process
from tests.conftest import Kubectl
from tests.support.messages_api import MessagesAPI, Text, ToolUse, Turn, bash
from tests.support.stack import VmStack, condition, vm_stack, workspace
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
CLASS = "claude"
REPO = "app"  # https://github.com/example/app is cloned to /workspaces/app
KEY = "sk-ant-sim-key"  # 20 characters at most: Claude remembers approved keys by those
IDLE_SECONDS = 60
SLEEP_SECONDS = IDLE_SECONDS + 15  # the tool outlives the idle timeout
MINUTE = {"timeout": "1m", "grace": "0s"}
PROMPT = "Run the long scripted check, then tell me the codeword."
ANSWER = "The check passed; the codeword is heliotrope-42."
PROMPT_AFTER_WAKE = "What was the codeword again?"
# Claude Code refuses a bare long `sleep` (it tells the model to poll instead), so the
# stand-in for a long build or test run goes through `timeout`; the Bash tool's own
# limit (2 minutes unless the call asks for more) is raised to 10 minutes.
LONG_CHECK = f"timeout {SLEEP_SECONDS + 60} sleep {SLEEP_SECONDS}"
STUCK = "timeout 900 sleep 890"
STREAM = ["-p", "--input-format", "stream-json", "--output-format", "stream-json",
          "--verbose"]


@pytest.fixture(scope="module")
def stack(control_plane, kubectl: Kubectl,  # type: ignore[no-untyped-def]
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmStack]:
    with vm_stack(control_plane, kubectl, tmp_path_factory.mktemp("vms"), CLASS, 33, 18093,
                  storage=True) as stack:
        yield stack


# --- Claude in a simulated VM --------------------------------------------------------

def claude_binary() -> str:
    path = os.environ.get("AGENTSPACES_CLAUDE_BIN", "")
    if not path or not os.access(path, os.X_OK):
        pytest.fail("AGENTSPACES_CLAUDE_BIN does not name the Claude Code binary "
                    f"({path!r}); scripts/test.sh sets it from scripts/install-claude.sh",
                    pytrace=False)
    return path


def long_bash(command: str) -> ToolUse:
    return ToolUse("Bash", {"command": command, "description": "a long check",
                            "timeout": 600_000})


def claude_env(api: MessagesAPI) -> dict[str, str]:
    return {"ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": KEY,
            "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}


@contextlib.contextmanager
def claude(vms: VmSimulator, server_id: int, args: list[str], api: MessagesAPI,
           log: Path, *, terminal: int | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`claude ARGS` in the VM's devcontainer view; stdin a pipe (or the `terminal`
    pty's follower); stopped (its whole group) on exit."""
    cmd = vms.container_command(server_id, [claude_binary(), *args], workdir=REPO,
                                env={**claude_env(api), "TERM": "xterm-256color"})
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd.argv, env=cmd.env, start_new_session=True, preexec_fn=die_with_parent,
            stdin=terminal if terminal is not None else subprocess.PIPE,
            stdout=terminal if terminal is not None else out,
            stderr=terminal if terminal is not None else subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        stop_process(proc)


def say(proc: subprocess.Popen[bytes], text: str) -> None:
    """A user message on a stream-json session (the session stays open)."""
    assert proc.stdin is not None
    message = {"type": "user", "message": {"role": "user", "content": text}}
    proc.stdin.write((json.dumps(message) + "\n").encode())
    proc.stdin.flush()


class Terminal:
    """A pseudo-terminal for an interactive session; what Claude draws is drained into a
    bounded buffer (for failure messages) so it never blocks on a full pty."""

    def __init__(self) -> None:
        self.leader, self.follower = pty.openpty()
        fcntl.ioctl(self.follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self._screen = bytearray()
        self._thread = threading.Thread(target=self._drain, name="claude-pty", daemon=True)

    def __enter__(self) -> Terminal:
        self._thread.start()
        return self

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.leader, 65536)
            except OSError:  # EIO once the last follower is closed
                return
            if not data:
                return
            self._screen.extend(data)
            del self._screen[:-20000]

    def type(self, keys: str) -> None:
        os.write(self.leader, keys.encode())

    def child_started(self) -> None:
        """The child holds its own copy of the follower: ours goes, so the leader reads
        EOF (EIO) once the child is gone."""
        if self.follower >= 0:
            os.close(self.follower)
            self.follower = -1

    def tail(self) -> str:
        """The end of what was drawn, without the terminal's control sequences."""
        text = bytes(self._screen).decode("utf-8", "replace")
        return re.sub(r"\x1b(\[[0-9;?<>=]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-B]|.)", " ",
                      text)[-3000:]

    def __exit__(self, *exc: object) -> None:
        self.child_started()
        os.close(self.leader)
        self._thread.join(timeout=5)


def returning_user(vms: VmSimulator, server_id: int) -> None:
    """Claude's own state of a user who has used it before: onboarding done, this
    directory trusted, the API key approved. It lives in CLAUDE_CONFIG_DIR/.claude.json
    (so on a VM in /workspaces/.claude, kept by backups); the product writes none of it."""
    state = vms.workspace_dir(server_id) / ".claude" / ".claude.json"
    state.write_text(json.dumps({
        "hasCompletedOnboarding": True,
        "projects": {f"/workspaces/{REPO}": {"hasTrustDialogAccepted": True}},
        "customApiKeyResponses": {"approved": [KEY[-20:]], "rejected": []}}))
    state.chmod(0o600)


# --- the workspace as kubectl shows it --------------------------------------------------

def _ws(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any] | None:
    return kubectl.get_json("workspace", name, "-n", ns)


def _ready(kubectl: Kubectl, name: str, ns: str, timeout: float = 90) -> dict[str, Any]:
    return wait_for(lambda: (w := _ws(kubectl, name, ns)) and
                    condition(w, "Ready").get("status") == "True" and w, timeout,
                    f"{name} Ready", interval=1)


def _stopped(kubectl: Kubectl, name: str, ns: str, timeout: float) -> dict[str, Any]:
    return wait_for(lambda: (w := _ws(kubectl, name, ns)) and
                    w["status"].get("phase") == "Stopped" and w, timeout, f"{name} Stopped",
                    interval=1)


def _server(ws: dict[str, Any]) -> int:
    return int(ws["status"]["server"]["id"])


def _activity(ws: dict[str, Any] | None) -> dict[str, Any]:
    return dict(((ws or {}).get("status") or {}).get("activity") or {})


def _agent(kubectl: Kubectl, name: str, ns: str, state: str, event: str, timeout: float,
           proc: subprocess.Popen[bytes] | None = None,
           why: Callable[[], str] | None = None) -> dict[str, Any]:
    """The workspace once its agent shows `state` because of the hook `event`."""
    deadline = time.monotonic() + timeout
    activity: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        ws = _ws(kubectl, name, ns)
        activity = _activity(ws)
        if (ws is not None and activity.get("agentState") == state
                and f"claude-hook:{event}" in activity.get("reasons", [])):
            return ws
        time.sleep(1)
    exited = f"claude exited ({proc.returncode})" if proc and proc.poll() is not None else ""
    raise AssertionError(f"{name}: no agent {state} after {event} within {timeout:.0f}s "
                         f"{exited}; activity {activity}\n{why() if why else ''}")


def _seconds(since: dict[str, Any], stopped: dict[str, Any]) -> float:
    """From the agent state of `since` to the stop recorded in `stopped`'s status."""
    start = datetime.fromisoformat(_activity(since)["agentStateSince"])
    return (datetime.fromisoformat(stopped["status"]["stoppedAt"]) - start).total_seconds()


def _projects(vms: VmSimulator, server_id: int) -> dict[str, list[str]]:
    """CLAUDE_CONFIG_DIR/projects: project directory -> its transcripts."""
    root = vms.workspace_dir(server_id) / ".claude" / "projects"
    return {d.name: sorted(f.name for f in d.glob("*.jsonl"))
            for d in sorted(root.iterdir()) if d.is_dir()}


def _vm_notes(vms: VmSimulator, server_id: int) -> str:
    """The agent's log and the hooks it installed, for failure messages."""
    info = vms.vm(server_id)
    settings = vms.workspace_dir(server_id) / ".claude" / "settings.json"
    hooks = json.loads(settings.read_text()).get("hooks", {}) if settings.exists() else {}
    urls = sorted({h.get("url") for groups in hooks.values() for g in groups
                   for h in g.get("hooks", [])})
    agent = _log(info.logs["agent"]) if info is not None and "agent" in info.logs else ""
    return f"hook events {sorted(hooks)} to {urls}\nagent log:\n{agent[-2500:]}"


def _excerpt(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages API request body with long texts cut and Claude's system reminders
    left out (for the test's output)."""
    def block(b: dict[str, Any]) -> dict[str, Any] | None:
        kind = b.get("type")
        if kind == "text":
            text = str(b.get("text", ""))
            return None if text.startswith("<system-reminder>") else {
                "type": "text", "text": text[:100] + ("…" if len(text) > 100 else "")}
        if kind == "tool_use":
            return {"type": kind, "id": b.get("id"), "name": b.get("name"),
                    "input": {"command": (b.get("input") or {}).get("command")}}
        if kind == "tool_result":
            return {"type": kind, "tool_use_id": b.get("tool_use_id"),
                    "is_error": b.get("is_error", False),
                    "content": str(b.get("content"))[:60]}
        return {"type": kind}

    messages = []
    for message in body.get("messages") or []:
        content = message.get("content")
        blocks = [block(b) for b in (content if isinstance(content, list)
                                     else [{"type": "text", "text": content}])]
        kept = [b for b in blocks if b is not None]
        if kept:
            messages.append({"role": message.get("role"), "content": kept})
    return {"model": body.get("model"), "stream": body.get("stream"), "messages": messages}


def _log(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


# --- the tests ------------------------------------------------------------------------

def test_a_real_session_keeps_its_vm_while_working_and_continues_after_a_wake(
        stack: VmStack, kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    vms, ns = stack.vms, namespace
    assert stack.s3 is not None
    kubectl.apply(workspace("session", ns, CLASS, idle=MINUTE,
                            persistence={"onDelete": "Delete"}))
    kubectl.apply(workspace("runaway", ns, CLASS, idle={**MINUTE, "agentBusyCap": "1m"},
                            persistence={"enabled": False}))
    first = _server(_ready(kubectl, "session", ns))
    stuck = _server(_ready(kubectl, "runaway", ns))
    session_log, runaway_log = tmp_path / "session.log", tmp_path / "runaway.log"
    script: list[Turn] = [long_bash(LONG_CHECK), Text(ANSWER)]
    with (MessagesAPI(script) as api, MessagesAPI([long_bash(STUCK)]) as runaway_api,
          contextlib.ExitStack() as sessions):
        # The runaway: its tool never finishes, so it reads as working until the cap.
        runaway = sessions.enter_context(claude(vms, stuck, STREAM, runaway_api,
                                                runaway_log))
        say(runaway, "Loop forever.")
        runaway_working = _agent(kubectl, "runaway", ns, "working", "PreToolUse", 90,
                                 runaway, lambda: _log(runaway_log))
        proc = sessions.enter_context(claude(vms, first, STREAM, api, session_log))
        say(proc, PROMPT)
        working = _agent(kubectl, "session", ns, "working", "PreToolUse", 90, proc,
                         lambda: _log(session_log))
        since = time.monotonic()
        # The tool runs past the idle timeout: the workspace keeps its server all along.
        seen: list[dict[str, Any]] = []

        def done_working() -> dict[str, Any] | None:
            ws = _ws(kubectl, "session", ns)
            assert ws is not None and ws["status"].get("phase") == "Running", ws
            assert _server(ws) == first
            seen.append(ws)
            return ws if _activity(ws).get("agentState") == "waiting" else None

        waiting = wait_for(done_working, SLEEP_SECONDS + 60, "session waiting after Stop",
                           interval=1)
        worked = time.monotonic() - since
        assert worked >= IDLE_SECONDS, worked
        assert "claude-hook:Stop" in _activity(waiting)["reasons"]
        late = [w for w in seen if _activity(w).get("agentState") == "working"][-1]
        assert condition(late, "Idle")["reason"] == "AgentWorking"
        assert condition(late, "Idle")["status"] == "False"
        assert api.turns_left() == 0
        # The user leaves: SessionEnd, and the agent forgets the session.
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0, _log(session_log)
        gone = _agent(kubectl, "session", ns, "absent", "SessionEnd", 30)
        projects = _projects(vms, first)
        # Keyed by the working directory: /workspaces/app, the VM's path.
        assert list(projects) == ["-workspaces-app"], projects
        assert len(projects["-workspaces-app"]) == 1, projects

        stopped = _stopped(kubectl, "session", ns, IDLE_SECONDS + 60)
        stop_latency = _seconds(gone, stopped)
        assert stopped["status"]["stoppedBy"] == "inactivity"
        assert condition(stopped, "Idle")["reason"] == "IdleTimeout"
        assert condition(stopped, "BackupSucceeded")["status"] == "True"
        assert stop_latency >= IDLE_SECONDS - 1, stop_latency  # times in whole seconds

        runaway_ws = _stopped(kubectl, "runaway", ns, 180)
        runaway_seconds = _seconds(runaway_working, runaway_ws)
        assert runaway_seconds >= 2 * IDLE_SECONDS - 1, runaway_seconds  # cap + timeout
        assert runaway.poll() is None  # still in its tool when the cap stopped the VM
        assert runaway_ws["status"]["stoppedBy"] == "inactivity"
        assert condition(runaway_ws, "Idle")["reason"] == "AgentBusyCapExceeded"
    print(f"\nworking {worked:.0f}s through a {SLEEP_SECONDS}s tool (timeout "
          f"{IDLE_SECONDS}s) on server {first}; SessionEnd -> Stopped {stop_latency:.0f}s; "
          f"working since {_activity(working)['agentStateSince']}, "
          f"absent at {_activity(gone)['agentStateSince']}; the runaway stopped "
          f"{runaway_seconds:.0f}s after it started working (busy cap 1m + timeout 1m)")

    # Wake on a new server: the backup brings /workspaces/.claude back, at the same path.
    woke = time.monotonic()
    kubectl("annotate", "workspace", "session", "-n", ns, "agentspaces.dev/wake=now",
            "--overwrite")
    restored = _ready(kubectl, "session", ns, 120)
    wake_seconds = time.monotonic() - woke
    assert condition(restored, "BackupRestored")["reason"] == "Restored"
    second = _server(restored)
    assert second != first
    assert _projects(vms, second) == projects  # same project directory, same transcript

    continued_log = tmp_path / "continued.log"
    with MessagesAPI([Text("heliotrope-42, from before the stop.")]) as api:
        cmd = vms.container_command(second, [claude_binary(), "--continue", "-p",
                                             PROMPT_AFTER_WAKE],
                                    workdir=REPO, env=claude_env(api))
        result = subprocess.run(cmd.argv, env=cmd.env, capture_output=True, timeout=120,
                                preexec_fn=die_with_parent)
        continued_log.write_bytes(result.stdout + result.stderr)
        assert result.returncode == 0, _log(continued_log)
        assert b"heliotrope-42, from before the stop." in result.stdout
        [request] = api.conversation()
    messages = request.body["messages"]
    conversation = [(m["role"], block) for m in messages
                    for block in (m["content"] if isinstance(m["content"], list)
                                  else [{"type": "text", "text": m["content"]}])]
    texts = [(role, b.get("text")) for role, b in conversation if b.get("type") == "text"]
    assert ("user", PROMPT) in texts, texts
    assert ("assistant", ANSWER) in texts, texts
    assert texts[-1] == ("user", PROMPT_AFTER_WAKE), texts
    calls = [b["input"]["command"] for role, b in conversation if b.get("type") == "tool_use"]
    assert calls == [LONG_CHECK]
    results = [b for role, b in conversation if b.get("type") == "tool_result"]
    assert [r["tool_use_id"] for r in results] == ["toolu_0001"]
    assert not results[0].get("is_error"), results  # the check ran to its end
    # The order: first prompt, the tool call and its result, the answer, the new prompt.
    order = [PROMPT, "tool_use", "tool_result", ANSWER, PROMPT_AFTER_WAKE]
    flat = [b.get("text") if b.get("type") == "text" else b.get("type")
            for role, b in conversation]
    assert [item for item in flat if item in order] == order, flat
    # The transcript of the continued session grew in the restored project directory.
    after = _projects(vms, second)
    assert list(after) == list(projects)
    print(f"woken in {wake_seconds:.0f}s on server {second}; project {list(after)}; "
          f"--continue sent {len(messages)} messages; the request body, cut short:\n"
          f"{json.dumps(_excerpt(request.body), indent=1)}")
    kubectl("delete", "workspace", "session", "runaway", "-n", ns, "--wait=false")
    wait_for(lambda: all(_ws(kubectl, n, ns) is None for n in ("session", "runaway")), 90,
             "both workspaces deleted", interval=1)


def test_a_permission_prompt_waits_for_the_user(stack: VmStack, kubectl: Kubectl,
                                                namespace: str, tmp_path: Path) -> None:
    vms, ns = stack.vms, namespace
    kubectl.apply(workspace("asker", ns, CLASS, idle={"timeout": "30m"},
                            persistence={"enabled": False}))
    server = _server(_ready(kubectl, "asker", ns))
    repo = vms.workspace_dir(server) / REPO
    returning_user(vms, server)

    # In the terminal: the dialog raises Notification, the answer lets the tool run.
    log = tmp_path / "terminal.log"
    with (MessagesAPI([bash("touch asked.txt", "create a file"), Text("Created.")]) as api,
          Terminal() as term,
          claude(vms, server, ["--permission-mode", "default", "Create asked.txt."], api,
                 log, terminal=term.follower) as proc):
        term.child_started()
        asked = _agent(kubectl, "asker", ns, "waiting", "Notification", 90, proc,
                       lambda: term.tail() + _vm_notes(vms, server))
        assert not (repo / "asked.txt").exists()  # nothing runs before the answer
        term.type("\r")  # 1. Yes
        _agent(kubectl, "asker", ns, "waiting", "Stop", 60, proc, term.tail)
        assert (repo / "asked.txt").exists()
        term.type("/exit")
        time.sleep(0.5)  # the command menu opens first
        term.type("\r")
        assert proc.wait(timeout=30) == 0, term.tail()
        _agent(kubectl, "asker", ns, "absent", "SessionEnd", 30)
    assert condition(asked, "Idle")["reason"] != "AgentWorking"

    # Through the SDK's permission callback, as a web UI asks: PermissionRequest only.
    log = tmp_path / "sdk.log"
    with MessagesAPI([bash("touch sdk.txt", "create a file"), Text("Created.")]) as api:
        cmd = vms.container_command(server, [claude_binary(), *STREAM,
                                             "--permission-prompt-tool", "stdio"],
                                    workdir=REPO, env=claude_env(api))
        with log.open("wb") as err:
            proc = subprocess.Popen(cmd.argv, env=cmd.env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err,
                                    start_new_session=True, preexec_fn=die_with_parent)
        try:
            say(proc, "Create sdk.txt.")
            assert proc.stdout is not None
            request = _control_request(proc.stdout)
            _agent(kubectl, "asker", ns, "waiting", "PermissionRequest", 30, proc,
                   lambda: _log(log))
            assert not (repo / "sdk.txt").exists()
            assert proc.stdin is not None
            proc.stdin.write((json.dumps({"type": "control_response", "response": {
                "subtype": "success", "request_id": request["request_id"],
                "response": {"behavior": "allow",
                             "updatedInput": request["request"]["input"]}}}) + "\n").encode())
            proc.stdin.flush()
            _agent(kubectl, "asker", ns, "waiting", "Stop", 60, proc, lambda: _log(log))
            assert (repo / "sdk.txt").exists()
            proc.stdin.close()
            assert proc.wait(timeout=30) == 0, _log(log)
        finally:
            stop_process(proc)
    kubectl("delete", "workspace", "asker", "-n", ns, "--wait=false")
    wait_for(lambda: _ws(kubectl, "asker", ns) is None, 60, "asker deleted", interval=1)


def _control_request(stdout: IO[bytes], timeout: float = 60) -> dict[str, Any]:
    """The first `can_use_tool` control request on a stream-json session's stdout."""
    deadline = time.monotonic() + timeout
    fd, pending = stdout.fileno(), b""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 65536) if ready else b""
        if ready and not chunk:
            raise AssertionError("claude exited without asking for permission")
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            doc = json.loads(line)
            if (doc.get("type") == "control_request"
                    and doc["request"].get("subtype") == "can_use_tool"):
                assert doc["request"]["tool_name"] == "Bash"
                return dict(doc)
    raise AssertionError(f"no permission request within {timeout:.0f}s")
