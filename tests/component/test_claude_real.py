"""The real Claude Code CLI, wired only by the files the product writes, drives the agent.

The operator renders the Claude seeds (settings.json, CLAUDE.md, mcp.json) as it does
for the user-data; the real agent process copies them into the workspace at start and
adds its own hooks; the real `claude` binary (pinned, installed by scripts/test.sh via
scripts/install-claude.sh, path in AGENTSPACES_CLAUDE_BIN) runs in the repository with
CLAUDE_CONFIG_DIR pointing at the directory the agent wrote, against a scripted
Messages API on loopback. Nothing here writes a hook by hand.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentspaces.agent_client import pinned_context
from agentspaces.lifeline import die_with_parent
from agentspaces.vmconfig.claude import render_claude_md, render_claude_settings, render_mcp_json
from agentspaces.vmconfig.layout import VmLayout
from tests.component.agent_harness import AgentProcess, make_agent, stop_process
from tests.support.messages_api import MessagesAPI, Text, Turn, bash
from tests.support.waiting import wait_for
from tests.unit.vmconfig_inputs import HOST, WS, make_klass, make_spec

pytestmark = pytest.mark.timeout(180)

MARKER = f"agentspaces-claude-md-marker-{uuid.uuid4().hex[:12]}"
PROMPT = "Run the scripted sleep, then say you are done."
SLEEP_SECONDS = 4


def claude_binary() -> str:
    path = os.environ.get("AGENTSPACES_CLAUDE_BIN", "")
    if not path or not os.access(path, os.X_OK):
        pytest.fail("AGENTSPACES_CLAUDE_BIN does not name the Claude Code binary "
                    f"({path!r}); scripts/test.sh sets it from scripts/install-claude.sh "
                    "(run `bash scripts/install-claude.sh` and export its last line)",
                    pytrace=False)
    return path


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """The real agent with the Claude seeds the operator renders, started (simulated)."""
    root = tmp_path / "agent"
    root.mkdir()
    proc = make_agent(root)
    klass = make_klass()
    spec = make_spec(klass, agent={
        "instructions": f"Always mention {MARKER}.",
        "mcpServers": {"scripted-tools": {"command": "true", "args": ["--scripted"]}},
    })
    # The VM's layout with this agent's directories and listener (seeds next to
    # agent.json, as cloud-init writes them).
    layout = VmLayout(local_listen=f"{proc.addr}:{proc.ports['local']}",
                      config_dir=str(root), workspaces_dir=str(proc.workspaces))
    seeds = Path(layout.claude_seed_dir)
    seeds.mkdir()
    (seeds / "settings.json").write_text(json.dumps(render_claude_settings(spec,
                                                                           layout=layout)))
    (seeds / "CLAUDE.md").write_text(render_claude_md(WS, spec, klass, host=HOST,
                                                      layout=layout))
    mcp = render_mcp_json(spec)
    assert mcp is not None
    (seeds / "mcp.json").write_text(json.dumps(mcp))
    try:
        proc.start()
        with status_client(proc) as c:
            assert c.post("/v1/start", json={"restore": None}).status_code == 202
            wait_for(lambda: c.get("/v1/status").json()["bootStage"] == "ready", 30,
                     "the simulated start to reach ready")
        yield proc
    finally:
        proc.stop()


def status_client(agent: AgentProcess) -> httpx.Client:
    """The operator's view: GET /v1/status over the pinned TLS with its bearer token."""
    transport = httpx.HTTPTransport(verify=pinned_context(agent.creds.cert_pem))
    return httpx.Client(base_url=agent.base_url, transport=transport, timeout=10,
                        headers={"Authorization": f"Bearer {agent.creds.token}"})


def claude_env(agent: AgentProcess, api: MessagesAPI, home: Path) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": api.url,
        "ANTHROPIC_API_KEY": "sk-ant-scripted-dummy",
        # The directory the agent wrote (CLAUDE_CONFIG_DIR on the VM, docs/vm.md).
        "CLAUDE_CONFIG_DIR": str(agent.workspaces / ".claude"),
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


def repo_dir(agent: AgentProcess) -> Path:
    return agent.workspaces / "demo"  # the harness's repository, .../org/demo.git


def hook_reasons(doc: dict[str, Any]) -> list[str]:
    return [r for r in doc["reasons"] if r.startswith("claude-hook")]


def since(doc: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(doc["agentStateSince"])


def activity(c: httpx.Client) -> dict[str, Any]:
    doc: dict[str, Any] = c.get("/v1/status").json()["activity"]
    return doc


def test_real_claude_hooks_drive_the_agents_activity(agent: AgentProcess,
                                                     tmp_path: Path) -> None:
    claude = claude_binary()
    script: list[Turn] = [bash(f"sleep {SLEEP_SECONDS}"), Text(f"Done. {MARKER}")]
    with MessagesAPI(script) as api, status_client(agent) as c:
        assert activity(c)["agentState"] == "absent"
        # stream-json input keeps the session open after the turn, as an interactive
        # session does: Stop (waiting) and SessionEnd (stdin closed) are apart in time.
        cmd = [claude, "-p", "--input-format", "stream-json", "--output-format",
               "stream-json", "--verbose", "--allowedTools", "Bash"]
        log = open(tmp_path / "claude.log", "wb")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log,
                                stderr=subprocess.STDOUT, cwd=repo_dir(agent),
                                env=claude_env(agent, api, tmp_path / "home"),
                                start_new_session=True, preexec_fn=die_with_parent)
        log.close()
        try:
            assert proc.stdin is not None
            message = {"type": "user", "message": {"role": "user", "content": PROMPT}}
            proc.stdin.write((json.dumps(message) + "\n").encode())
            proc.stdin.flush()

            def state(want: str, event: str) -> dict[str, Any] | None:
                assert proc.poll() is None, claude_failed(tmp_path, api, agent)
                doc = activity(c)
                return doc if (doc["agentState"] == want
                               and hook_reasons(doc) == [f"claude-hook:{event}"]) else None

            # PreToolUse: the scripted Bash call is running.
            working = wait_for(lambda: state("working", "PreToolUse"), 60,
                               "working while the tool runs", interval=0.2)
            assert working["sessions"]["claudeWorking"] == 1
            assert api.turns_left() == 1  # the tool_use turn has been answered
            waiting = wait_for(lambda: state("waiting", "Stop"), 60, "waiting after Stop",
                               interval=0.2)
            # Working from the prompt to the end of the turn, which outlasted the tool.
            assert since(waiting) - since(working) >= timedelta(seconds=SLEEP_SECONDS)
            assert waiting["sessions"] == {**waiting["sessions"], "claude": 1,
                                           "claudeWorking": 0, "claudeWaiting": 1}
            assert waiting["malformedHookEvents"] == 0
            proc.stdin.close()  # the user leaves: SessionEnd
            assert proc.wait(timeout=60) == 0, claude_failed(tmp_path, api, agent)
            gone = wait_for(lambda: (doc := activity(c))["agentState"] == "absent" and doc,
                            15, "absent after SessionEnd")
            assert hook_reasons(gone) == ["claude-hook:SessionEnd"]
            assert gone["sessions"]["claude"] == 0
            assert gone["malformedHookEvents"] == 0
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            stop_process(proc)

    # Offline: nothing but the Messages API was asked for (no side request either).
    assert [(r.method, r.path) for r in api.requests] == \
        [("POST", "/v1/messages?beta=true")] * 2
    conversation = api.conversation()
    assert len(conversation) == 2
    first, second = conversation
    assert first.path.startswith("/v1/messages")
    assert first.body["stream"] is True
    # The prompt and the CLAUDE.md the product wrote (user memory in CLAUDE_CONFIG_DIR)
    # reached the model.
    assert PROMPT in first.text()
    assert f"Always mention {MARKER}." in first.text()
    assert "agentspaces workspace `demo`" in first.text()
    # The tool ran and its result went back with the next request.
    results = [block for message in second.body["messages"]
               if isinstance(message.get("content"), list)
               for block in message["content"] if block.get("type") == "tool_result"]
    assert [r["tool_use_id"] for r in results] == ["toolu_0001"], second.body
    # No API key was delivered, so the agent left the seed's apiKeyHelper out and the
    # key came from the environment.
    settings = json.loads((agent.workspaces / ".claude" / "settings.json").read_text())
    assert "apiKeyHelper" not in settings
    assert first.headers.get("x-api-key") == "sk-ant-scripted-dummy"
    transcripts = list((agent.workspaces / ".claude" / "projects").glob("*/*.jsonl"))
    assert len(transcripts) == 1


def test_real_claude_lists_the_mcp_servers_from_the_spec(agent: AgentProcess,
                                                         tmp_path: Path) -> None:
    claude = claude_binary()
    with MessagesAPI([]) as api:
        result = subprocess.run([claude, "mcp", "list"], cwd=repo_dir(agent),
                                env=claude_env(agent, api, tmp_path / "home"),
                                capture_output=True, text=True, timeout=60,
                                preexec_fn=die_with_parent)
    assert result.returncode == 0, result.stdout + result.stderr
    # The server from spec.agent.mcpServers, read from the .mcp.json the agent merged
    # into the repository (Claude also tries to connect: `true` exits at once).
    assert "scripted-tools: true --scripted" in result.stdout, result.stdout + result.stderr


def claude_failed(tmp_path: Path, api: MessagesAPI, agent: AgentProcess) -> str:
    log = tmp_path / "claude.log"
    requests = [f"{r.method} {r.path}" for r in api.requests]
    return (f"claude log:\n{log.read_text(errors='replace')[-4000:] if log.exists() else ''}"
            f"\nrequests: {requests}\nagent log:\n{agent.logs()[-3000:]}")


def test_the_binary_is_the_pinned_version() -> None:
    script = (Path(__file__).resolve().parents[2] / "scripts" / "install-claude.sh").read_text()
    match = re.search(r'^CLAUDE_VERSION="\$\{AGENTSPACES_CLAUDE_VERSION:-([0-9.]+)\}"$', script,
                      re.MULTILINE)
    assert match is not None
    out = subprocess.run([claude_binary(), "--version"], capture_output=True, text=True,
                         timeout=60, env={"PATH": os.environ.get("PATH", ""),
                                          "DISABLE_AUTOUPDATER": "1"})
    assert out.stdout.split()[:2] == [match.group(1), "(Claude"], out.stdout + out.stderr
