"""Token usage from Claude Code's transcripts: parsing one record, and the incremental,
bounded scanner over the projects tree (agentspaces_vm.usage).

Record shapes follow what the real CLI writes (tests/unit/golden/claude-transcript.jsonl
was written by Claude Code 2.1.332 against the scripted Messages API; the component
test tests/component/test_claude_usage.py checks the same against a live run).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agentspaces_vm import usage as u
from agentspaces_vm.contracts import AgentStatus, BootStage, TokenCounts, UsageReport

GOLDEN = Path(__file__).parent / "golden" / "claude-transcript.jsonl"
PROJECT = "-workspaces-demo"


def assistant(message_id: str, session: str = "s1", *, model: str = "claude-opus-5-5",
              inp: int = 0, out: int = 0, read: int = 0, write: int = 0, write_1h: int = 0,
              at: str = "2026-12-02T10:00:00.000Z", **extra: Any) -> dict[str, Any]:
    """An assistant record as Claude Code 2.1.x writes it (the fields that matter)."""
    return {"parentUuid": None, "isSidechain": False, "type": "assistant",
            "message": {"id": message_id, "type": "message", "role": "assistant",
                        "model": model, "content": [{"type": "text", "text": "hi"}],
                        "stop_reason": "end_turn",
                        "usage": {"input_tokens": inp, "output_tokens": out,
                                  "cache_creation_input_tokens": write,
                                  "cache_read_input_tokens": read,
                                  "cache_creation": {
                                      "ephemeral_5m_input_tokens": write - write_1h,
                                      "ephemeral_1h_input_tokens": write_1h},
                                  "service_tier": "standard"}},
            "uuid": f"u-{message_id}", "timestamp": at, "sessionId": session,
            "version": "2.1.332", **extra}


def line(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def write(path: Path, *docs: dict[str, Any], mode: str = "ab") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as fh:
        for doc in docs:
            fh.write(line(doc))


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return tmp_path


def transcript(ws: Path, session: str = "s1") -> Path:
    return ws / ".claude" / "projects" / PROJECT / f"{session}.jsonl"


def scan(ws: Path, **kwargs: Any) -> u.UsageScanner:
    return u.UsageScanner(ws, **kwargs)


def polled(scanner: u.UsageScanner) -> UsageReport:
    scanner.poll()
    return scanner.report()


# --- one record ---------------------------------------------------------------------------

def test_a_record_gives_its_four_counters_and_the_one_hour_share() -> None:
    record = u.parse_record(line(assistant("m1", inp=10, out=20, read=30, write=40,
                                           write_1h=15)))
    assert record is not None
    assert (record.message_id, record.session_id, record.model) == \
        ("m1", "s1", "claude-opus-5-5")
    assert record.tokens == TokenCounts(input=10, output=20, cache_read=30, cache_write=40,
                                        cache_write_1h=15)
    assert record.time == datetime(2026, 12, 2, 10, tzinfo=UTC)


@pytest.mark.parametrize("doc", [
    {"type": "user", "message": {"role": "user", "content": "assistant usage"},
     "sessionId": "s1"},
    {"type": "cost-state", "sessionId": "s1", "totalCostUSD": 1.0},
    assistant("m1", model="<synthetic>", inp=5),  # Claude Code's own placeholder
    assistant("m1", requestSessionId="parent"),  # a fork's copy of the parent's answer
    {**assistant("m1"), "sessionId": 7},
    {**assistant("m1"), "message": {"id": "m1", "model": "x", "usage": "many"}},
], ids=["user", "cost-state", "synthetic", "fork-copy", "bad-session", "bad-usage"])
def test_records_that_are_not_counted(doc: dict[str, Any]) -> None:
    assert u.parse_record(line(doc)) is None


def test_malformed_lines_are_skipped() -> None:
    assert u.parse_record(b'{"type":"assistant","usage": [') is None
    assert u.parse_record(b"\xff\xfe assistant usage") is None


def test_negative_or_odd_counters_count_as_zero() -> None:
    doc = assistant("m1", inp=5)
    doc["message"]["usage"].update(output_tokens=-3, cache_read_input_tokens=True,
                                   cache_creation_input_tokens="9")
    record = u.parse_record(line(doc))
    assert record is not None and record.tokens == TokenCounts(input=5)


def test_an_unexpected_model_name_is_summed_as_other() -> None:
    record = u.parse_record(line(assistant("m1", model="claude opus; rm -rf", inp=1)))
    assert record is not None and record.model == u.OTHER_MODEL


def test_the_golden_transcript_from_the_real_cli() -> None:
    """Lines Claude Code 2.1.332 wrote: a two-block answer is recorded twice, a fork
    copied the first answer into its own file (requestSessionId)."""
    records = [r for raw in GOLDEN.read_bytes().splitlines()
               if (r := u.parse_record(raw)) is not None]
    assert [r.message_id for r in records] == ["msg_0001", "msg_0001", "msg_0002"]
    assert {r.model for r in records} == {"claude-opus-5-5"}


# --- the scanner --------------------------------------------------------------------------

def test_the_golden_transcript_sums_each_answer_once(ws: Path) -> None:
    path = transcript(ws)
    path.parent.mkdir(parents=True)
    path.write_bytes(GOLDEN.read_bytes())
    report = polled(scan(ws))
    # The scripted turns reported (1200, 40, write 3000 of which 1h 1000, read 500) and
    # (300, 12, read 4000); the fork's copy of the first is not counted again.
    assert report.models == {"claude-opus-5-5": TokenCounts(
        input=1500, output=52, cache_read=4500, cache_write=3000, cache_write_1h=1000)}
    assert (report.sessions, report.last_model) == (1, "claude-opus-5-5")


def test_nothing_is_complete_before_the_first_poll(ws: Path) -> None:
    write(transcript(ws), assistant("m1", inp=1))
    scanner = scan(ws)
    assert not scanner.report().complete
    assert polled(scanner).complete


def test_a_restore_holds_the_report_incomplete_until_a_poll_after_it(ws: Path) -> None:
    scanner = scan(ws)
    assert polled(scanner).complete
    scanner.hold(True)  # the start sequence begins: a restore writes transcripts
    write(transcript(ws), assistant("m1", inp=1))
    assert not polled(scanner).complete  # partial sums are never complete
    write(transcript(ws), assistant("m2", inp=2))
    scanner.hold(False)  # ready: the next poll reads what the restore left
    assert not scanner.report().complete
    report = polled(scanner)
    assert report.complete and report.totals.input == 3


def test_no_transcripts_is_an_empty_complete_report(ws: Path) -> None:
    report = polled(scan(ws))
    assert report == UsageReport(complete=True)
    assert report.totals == TokenCounts()


def test_copies_of_one_message_count_once_with_the_largest_counters(ws: Path) -> None:
    # The first block's copy may carry message_start's usage (output 1).
    write(transcript(ws), assistant("m1", inp=100, out=1, read=7),
          assistant("m1", inp=100, out=16, read=7),
          assistant("m2", inp=50, out=5, write=20, write_1h=20))
    report = polled(scan(ws))
    assert report.models == {"claude-opus-5-5": TokenCounts(input=150, output=21,
                                                            cache_read=7, cache_write=20,
                                                            cache_write_1h=20)}
    assert report.sessions == 1


def test_a_copy_in_a_later_poll_adds_only_the_difference(ws: Path) -> None:
    scanner = scan(ws)
    write(transcript(ws), assistant("m1", inp=100, out=1))
    assert polled(scanner).totals == TokenCounts(input=100, output=1)
    write(transcript(ws), assistant("m1", inp=100, out=16))
    assert polled(scanner).totals == TokenCounts(input=100, output=16)


def test_reading_is_incremental_and_a_partial_line_waits(ws: Path) -> None:
    scanner = scan(ws)
    path = transcript(ws)
    write(path, assistant("m1", inp=1))
    assert polled(scanner).totals.input == 1
    raw = line(assistant("m2", inp=2))
    with open(path, "ab") as fh:
        fh.write(raw[:25])
    assert polled(scanner).totals.input == 1
    with open(path, "ab") as fh:
        fh.write(raw[25:])
    assert polled(scanner).totals.input == 3


def test_the_budget_bounds_each_poll_and_complete_says_when_caught_up(ws: Path) -> None:
    docs = [assistant(f"m{i}", inp=1, out=2) for i in range(40)]
    write(transcript(ws), *docs)
    size = transcript(ws).stat().st_size
    scanner = scan(ws, budget=size // 4 + 1)
    reports = [polled(scanner) for _ in range(4)]
    assert [r.complete for r in reports] == [False, False, False, True]
    inputs = [r.totals.input for r in reports]
    assert inputs == sorted(inputs) and inputs[0] < 40 and inputs[-1] == 40
    assert reports[-1].totals == TokenCounts(input=40, output=80)


def test_a_truncated_or_replaced_file_is_read_again(ws: Path) -> None:
    scanner = scan(ws)
    path = transcript(ws)
    write(path, assistant("m1", inp=10), assistant("m2", inp=20))
    assert polled(scanner).totals.input == 30
    write(path, assistant("m3", inp=5), mode="wb")  # shorter: truncated and rewritten
    assert polled(scanner).totals.input == 5
    fresh = path.with_suffix(".new")
    write(fresh, assistant("m4", inp=7), assistant("m5", inp=8), assistant("m6", inp=9))
    os.replace(fresh, path)  # another inode at the same name
    assert polled(scanner).totals.input == 24


def test_a_vanished_transcript_takes_its_tokens_with_it(ws: Path) -> None:
    scanner = scan(ws)
    write(transcript(ws, "s1"), assistant("m1", "s1", inp=10))
    write(transcript(ws, "s2"), assistant("m2", "s2", inp=20))
    assert polled(scanner).sessions == 2
    transcript(ws, "s1").unlink()
    report = polled(scanner)
    assert (report.sessions, report.totals.input) == (1, 20)


def test_sessions_models_last_model_and_recent_sessions(ws: Path) -> None:
    write(transcript(ws, "old"),
          assistant("a1", "old", model="claude-sonnet-5-5", inp=1,
                    at="2026-12-01T09:00:00Z"))
    write(transcript(ws, "new"),
          assistant("b1", "new", model="claude-sonnet-5-5", inp=2,
                    at="2026-12-02T09:00:00Z"),
          assistant("b2", "new", model="claude-haiku-5-5", out=3,
                    at="2026-12-02T09:05:00Z"))
    # A subagent's transcript sits below its session and carries the session's id.
    write(ws / ".claude" / "projects" / PROJECT / "new" / "subagents" / "agent-1.jsonl",
          assistant("c1", "new", model="claude-haiku-5-5", out=4, isSidechain=True,
                    at="2026-12-02T09:01:00Z"))
    report = polled(scan(ws))
    assert report.sessions == 2
    assert report.models == {"claude-sonnet-5-5": TokenCounts(input=3),
                             "claude-haiku-5-5": TokenCounts(output=7)}
    assert report.last_model == "claude-haiku-5-5"
    assert report.last_time == datetime(2026, 12, 2, 9, 5, tzinfo=UTC)
    assert [s.session_id for s in report.recent_sessions] == ["new", "old"]
    newest = report.recent_sessions[0]
    assert newest.tokens == TokenCounts(input=2, output=7)
    assert newest.last_model == "claude-haiku-5-5"


def test_many_models_are_capped_with_the_rest_as_other(ws: Path) -> None:
    docs = [assistant(f"m{i}", model=f"model-{i:02d}", inp=100 + i) for i in range(40)]
    write(transcript(ws), *docs)
    report = polled(scan(ws))
    assert len(report.models) == 32
    assert report.totals.input == sum(100 + i for i in range(40))
    assert "model-39" in report.models and u.OTHER_MODEL in report.models


def test_an_overlong_line_is_skipped_without_being_buffered(
        ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(u, "MAX_LINE", 1000)  # a normal record is ~450 bytes
    huge = assistant("big", inp=1000)
    huge["message"]["content"] = [{"type": "text", "text": "x" * 3000}]
    write(transcript(ws), assistant("m1", inp=1), huge, assistant("m2", inp=2))
    scanner = scan(ws, budget=256)  # the long line spans several polls
    for _ in range(20):
        report = polled(scanner)
    assert report.complete and report.totals.input == 3


def test_links_fifos_and_a_linked_projects_dir_are_never_read(ws: Path,
                                                              tmp_path_factory: Any) -> None:
    outside = tmp_path_factory.mktemp("outside")
    secret = outside / "secret.jsonl"
    write(secret, assistant("x1", inp=999))
    projects = ws / ".claude" / "projects" / PROJECT
    write(projects / "real.jsonl", assistant("m1", inp=1))
    (projects / "link.jsonl").symlink_to(secret)
    (projects / "dirlink").symlink_to(outside, target_is_directory=True)
    os.mkfifo(projects / "pipe.jsonl")  # opening it for reading would block
    assert polled(scan(ws)).totals.input == 1

    other = ws.parent / f"{ws.name}-linked"
    (other / ".claude").mkdir(parents=True)
    (other / ".claude" / "projects").symlink_to(outside, target_is_directory=True)
    assert polled(scan(other)).totals == TokenCounts()


# --- the status document ------------------------------------------------------------------

def test_the_report_round_trips_and_an_agent_without_usage_still_parses(ws: Path) -> None:
    write(transcript(ws), assistant("m1", inp=1, out=2, read=3, write=4, write_1h=1))
    report = polled(scan(ws))
    status = AgentStatus(version="1", boot_stage=BootStage.READY, usage=report)
    wire = json.loads(json.dumps(status.to_json()))
    assert wire["usage"]["totals"] == {"inputTokens": 1, "outputTokens": 2,
                                       "cacheReadTokens": 3, "cacheWriteTokens": 4,
                                       "cacheWrite1hTokens": 1}
    assert AgentStatus.from_json(wire) == status
    del wire["usage"]
    assert AgentStatus.from_json(wire).usage is None
