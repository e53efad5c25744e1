"""Token usage from the real Claude Code CLI reaches the agent's status document.

The real `claude` binary (pinned, AGENTSPACES_CLAUDE_BIN), wired only by the files the
product writes (the `agent` fixture of test_claude_real), runs sessions against the
scripted Messages API, whose answers carry known usage: a two-block answer (recorded
twice by the CLI), cache reads and writes with a one-hour share, a second model, and a
forked session (which copies the parent's answers into its own transcript). The agent's
GET /v1/status must show exactly the scripted sums per model, the sessions and the last
model; the operator's default price table must give the cost Claude Code itself
recorded for each session (its `cost-state` records).
"""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agentspaces.api.pricing import estimate
from agentspaces.lifeline import die_with_parent
from agentspaces_vm.contracts import TokenCounts, UsageReport
from tests.component import test_claude_real as real
from tests.component.agent_harness import AgentProcess
from tests.component.test_claude_real import claude_binary, claude_env, repo_dir, status_client
from tests.support.messages_api import MessagesAPI, Text, ToolUse, Turn, Usage
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(240)
agent = real.agent  # the fixture: the agent with the product's Claude files, started

OPUS, SONNET = "claude-opus-5-5", "claude-sonnet-5-5"  # 2.1.332's default, and another
# Session 1 (default model): a two-block answer, then a plain one.
FIRST = Usage(1200, 40, cache_creation_input_tokens=3000, cache_read_input_tokens=500,
              cache_creation_1h_input_tokens=1000)
SECOND = Usage(300, 12, cache_read_input_tokens=4000)
# Session 2 (--model claude-sonnet-5-5).
THIRD = Usage(7000, 250, cache_creation_input_tokens=2000, cache_read_input_tokens=90_000)
# Session 3: a fork of session 1 (--resume --fork-session), one more answer.
FOURTH = Usage(10, 2)
NANO = Decimal("1e-9")


def tokens(*turns: Usage) -> TokenCounts:
    total = TokenCounts()
    for t in turns:
        total = total + TokenCounts(input=t.input_tokens, output=t.output_tokens,
                                    cache_read=t.cache_read_input_tokens,
                                    cache_write=t.cache_creation_input_tokens,
                                    cache_write_1h=t.cache_creation_1h_input_tokens)
    return total


def run_claude(agent: AgentProcess, api: MessagesAPI, home: Path, *args: str) -> None:
    result = subprocess.run([claude_binary(), *args], cwd=repo_dir(agent),
                            env=claude_env(agent, api, home), capture_output=True, text=True,
                            timeout=120, preexec_fn=die_with_parent)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def transcripts(agent: AgentProcess) -> dict[str, list[dict[str, Any]]]:
    """Session id -> the records of its transcript file."""
    root = agent.workspaces / ".claude" / "projects"
    return {path.stem: [json.loads(raw) for raw in path.read_text().splitlines()]
            for path in root.glob("*/*.jsonl")}


def claude_cost(records: list[dict[str, Any]]) -> Decimal:
    """What Claude Code itself says the session cost (its last cost-state record)."""
    states = [r for r in records if r.get("type") == "cost-state"]
    assert states, "Claude Code recorded no cost-state"
    # A float there: compare at a nano-dollar.
    return Decimal(str(states[-1]["totalCostUSD"])).quantize(NANO)


def test_real_sessions_sum_to_the_scripted_usage(agent: AgentProcess,
                                                 tmp_path: Path) -> None:
    script: list[Turn] = [ToolUse("Bash", {"command": "true", "description": "scripted"},
                      text="Checking first.", usage=FIRST),
              Text("Done.", usage=SECOND), Text("Sonnet here.", usage=THIRD),
              Text("Forked.", usage=FOURTH)]
    home = tmp_path / "home"
    with MessagesAPI(script) as api, status_client(agent) as c:
        run_claude(agent, api, home, "-p", "first session", "--allowedTools", "Bash")
        (first_id,) = transcripts(agent)
        run_claude(agent, api, home, "-p", "second session", "--model", SONNET)
        run_claude(agent, api, home, "--resume", first_id, "--fork-session", "-p", "fork")
        assert api.turns_left() == 0

        want = {OPUS: tokens(FIRST, SECOND, FOURTH), SONNET: tokens(THIRD)}

        def settled() -> UsageReport | None:
            doc = c.get("/v1/status").json()["usage"]
            report = UsageReport.from_json(doc)
            return report if report.complete and dict(report.models) == want else None

        report = wait_for(settled, 20, "the agent's usage to show the scripted sums",
                          interval=0.3)
        wire = c.get("/v1/status").json()["usage"]

    assert report.sessions == 3
    assert report.last_model == OPUS  # the fork answered last
    assert report.totals == tokens(FIRST, SECOND, THIRD, FOURTH)
    assert wire["totals"] == {"inputTokens": 8510, "outputTokens": 304,
                              "cacheReadTokens": 94_500, "cacheWriteTokens": 5000,
                              "cacheWrite1hTokens": 1000}
    by_session = {s.session_id: s for s in report.recent_sessions}
    assert by_session[first_id].tokens == tokens(FIRST, SECOND)

    # The product's default prices agree with Claude Code's own estimate per session
    # (the fork's cost-state carries its parent's cost, so the two plain ones).
    records = transcripts(agent)
    (second_id,) = [s for s, recs in records.items()
                    if any((r.get("message") or {}).get("model") == SONNET
                           for r in recs if r.get("type") == "assistant")]
    first_cost = estimate({OPUS: by_session[first_id].tokens})
    second_cost = estimate({SONNET: by_session[second_id].tokens})
    assert first_cost.unpriced == second_cost.unpriced == ()
    assert first_cost.total == claude_cost(records[first_id]) == Decimal("0.02594")
    assert second_cost.total == claude_cost(records[second_id]) == Decimal("0.0305")
    print(f"\nusage: {json.dumps(wire['totals'])}; sessions {report.sessions}; "
          f"last model {report.last_model}; estimated USD {estimate(report.models).total}")


def test_an_agent_with_no_transcripts_reports_empty_usage(agent: AgentProcess) -> None:
    with status_client(agent) as c:
        doc: dict[str, Any] = wait_for(
            lambda: (d := c.get("/v1/status").json()["usage"])["complete"] and d, 10,
            "a complete usage report (after the agent's first poll)")
    assert doc["sessions"] == 0 and doc["lastModel"] is None
    assert doc["totals"] == TokenCounts().to_json()
