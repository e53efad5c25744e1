"""ActivityTracker and its sources: hook state machine, metrics, SSH, files, snapshot."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agentspaces_vm.activity import (
    KNOWN_EVENTS,
    WAITING_EVENTS,
    WORKING_EVENTS,
    ActivityTracker,
    FileScanner,
    Sample,
    count_ssh_sessions,
    http_counters,
    parse_prometheus_text,
)

# A base a day ahead of the real clock: files the test creates carry real ctimes, which
# are then safely "before the agent started", and test-set mtimes are meaningful.
BASE = datetime.fromtimestamp(int(time.time()) + 86_400, UTC)


class Clock:
    def __init__(self, start: datetime = BASE) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def hook(event: str, session: str = "s1", **extra: object) -> dict[str, object]:
    return {"hook_event_name": event, "session_id": session, "cwd": "/workspaces/repo",
            "transcript_path": "/workspaces/.claude/projects/x.jsonl", **extra}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_tracker(clock: Clock, tmp_path: Path) -> Callable[..., ActivityTracker]:
    empty_proc = tmp_path / "proc"
    empty_proc.mkdir()

    def make(**options: object) -> ActivityTracker:
        defaults: dict[str, object] = {
            "workspaces_root": tmp_path / "workspaces",
            "caddy_metrics_url": None,
            "proc_root": empty_proc,
            "scan_files": False,
        }
        defaults.update(options)
        return ActivityTracker(clock, **defaults)  # type: ignore[arg-type]

    return make


# --- hook state machine ------------------------------------------------------------
def test_no_session_is_absent_since_start(make_tracker, clock):
    tracker = make_tracker()
    clock.advance(minutes=3)
    snap = tracker.snapshot()
    assert snap["agentState"] == "absent"
    assert snap["agentStateSince"] == iso(BASE)
    assert snap["lastActivityTime"] is None
    assert snap["reasons"] == []


def test_turn_cycle_working_waiting_idle_absent(make_tracker, clock):
    tracker = make_tracker(idle_after=timedelta(minutes=10))
    t_start = clock.advance(seconds=5)
    assert tracker.record_hook(hook("SessionStart", source="startup"))
    assert tracker.snapshot()["agentState"] == "waiting"
    assert tracker.snapshot()["agentStateSince"] == iso(t_start)

    t_prompt = clock.advance(seconds=30)
    tracker.record_hook(hook("UserPromptSubmit", prompt="fix the tests"))
    clock.advance(seconds=20)
    tracker.record_hook(hook("PreToolUse", tool_name="Bash"))
    t_post = clock.advance(minutes=4)
    tracker.record_hook(hook("PostToolUse", tool_name="Bash"))
    snap = tracker.snapshot()
    assert snap["agentState"] == "working"
    assert snap["agentStateSince"] == iso(t_prompt), "working since the turn began"
    assert snap["lastActivityTime"] == iso(t_post)

    t_stop = clock.advance(seconds=10)
    tracker.record_hook(hook("Stop"))
    snap = tracker.snapshot()
    assert (snap["agentState"], snap["agentStateSince"]) == ("waiting", iso(t_stop))

    clock.advance(minutes=1)  # Claude's own reminder that it waits: still waiting
    tracker.record_hook(hook("Notification", notification_type="idle_prompt"))
    snap = tracker.snapshot()
    assert (snap["agentState"], snap["agentStateSince"]) == ("waiting", iso(t_stop))

    clock.advance(minutes=9, seconds=59)
    assert tracker.snapshot()["agentState"] == "waiting"
    clock.advance(seconds=1)
    snap = tracker.snapshot()
    # idle is a relabel after a quiet period: the time the agent stopped is kept
    assert (snap["agentState"], snap["agentStateSince"]) == ("idle", iso(t_stop))

    t_end = clock.advance(minutes=1)
    tracker.record_hook(hook("SessionEnd", reason="logout"))
    snap = tracker.snapshot()
    assert (snap["agentState"], snap["agentStateSince"]) == ("absent", iso(t_end))
    assert snap["lastActivityTime"] == iso(t_end)
    assert snap["sessions"]["claude"] == 0


@pytest.mark.parametrize("event", sorted(WORKING_EVENTS))
def test_working_events_make_a_waiting_session_work(make_tracker, clock, event):
    tracker = make_tracker()
    tracker.record_hook(hook("Stop"))
    clock.advance(seconds=1)
    tracker.record_hook(hook(event))
    assert tracker.snapshot()["agentState"] == "working"


@pytest.mark.parametrize("event", sorted(WAITING_EVENTS))
def test_waiting_events_end_work(make_tracker, clock, event):
    tracker = make_tracker()
    tracker.record_hook(hook("PreToolUse"))
    t = clock.advance(seconds=1)
    tracker.record_hook(hook(event, notification_type="idle_prompt")
                        if event == "Notification" else hook(event))
    snap = tracker.snapshot()
    assert (snap["agentState"], snap["agentStateSince"]) == ("waiting", iso(t))


def test_permission_request_waits_until_the_tool_runs(make_tracker, clock):
    tracker = make_tracker()
    tracker.record_hook(hook("PreToolUse", tool_name="Bash"))
    tracker.record_hook(hook("PermissionRequest", tool_name="Bash"))
    assert tracker.snapshot()["agentState"] == "waiting"
    clock.advance(minutes=2)
    tracker.record_hook(hook("PostToolUse", tool_name="Bash"))
    assert tracker.snapshot()["agentState"] == "working"


def test_neutral_events_keep_the_session_state(make_tracker, clock):
    tracker = make_tracker()
    tracker.record_hook(hook("PreToolUse"))
    since = tracker.snapshot()["agentStateSince"]
    clock.advance(seconds=5)
    tracker.record_hook(hook("Notification", notification_type="auth_success"))
    tracker.record_hook(hook("SessionStart", source="compact"))
    snap = tracker.snapshot()
    assert (snap["agentState"], snap["agentStateSince"]) == ("working", since)
    assert snap["lastActivityTime"] == iso(clock.now)


def test_any_working_session_wins_then_waiting_then_absent(make_tracker, clock):
    tracker = make_tracker()
    tracker.record_hook(hook("UserPromptSubmit", "a"))
    t_a = clock.now
    clock.advance(seconds=10)
    tracker.record_hook(hook("SessionStart", "b"))
    tracker.record_hook(hook("UserPromptSubmit", "b"))
    clock.advance(seconds=10)
    tracker.record_hook(hook("Stop", "a"))
    snap = tracker.snapshot()
    assert (snap["agentState"], snap["agentStateSince"]) == ("working", iso(t_a)), \
        "continuous work across sessions keeps the earliest start"
    assert snap["sessions"] == {"claude": 2, "claudeWorking": 1, "claudeWaiting": 1,
                                "ssh": 0, "httpInFlight": 0}
    t_b_stop = clock.advance(seconds=10)
    tracker.record_hook(hook("Stop", "b"))
    clock.advance(seconds=10)
    tracker.record_hook(hook("SessionEnd", "a"))
    snap = tracker.snapshot()
    assert (snap["agentState"], snap["agentStateSince"]) == ("waiting", iso(t_b_stop))
    tracker.record_hook(hook("SessionEnd", "b"))
    assert tracker.snapshot()["agentState"] == "absent"


def test_silent_sessions_expire_dated_to_their_last_event(make_tracker, clock):
    tracker = make_tracker(session_ttl=timedelta(hours=2))
    tracker.record_hook(hook("PreToolUse"))
    t_last = clock.advance(minutes=30)
    tracker.record_hook(hook("PostToolUse"))
    clock.advance(hours=1, minutes=59)
    assert tracker.snapshot()["agentState"] == "working"
    clock.advance(minutes=1)
    snap = tracker.snapshot()
    assert (snap["agentState"], snap["agentStateSince"]) == ("absent", iso(t_last))
    assert snap["sessions"]["claude"] == 0


def test_session_table_is_bounded_dropping_the_least_recent(make_tracker, clock):
    tracker = make_tracker(max_sessions=4)
    tracker.record_hook(hook("PreToolUse", "oldest"))
    for n in range(4):
        clock.advance(seconds=1)
        tracker.record_hook(hook("SessionStart", f"s{n}"))
    snap = tracker.snapshot()
    assert snap["sessions"]["claude"] == 4
    assert snap["agentState"] == "waiting", "the working session was the one dropped"


def test_recently_active_session_survives_the_bound(make_tracker, clock):
    tracker = make_tracker(max_sessions=2)
    tracker.record_hook(hook("PreToolUse", "a"))
    clock.advance(seconds=1)
    tracker.record_hook(hook("SessionStart", "b"))
    clock.advance(seconds=1)
    tracker.record_hook(hook("PostToolUse", "a"))   # a is now the most recent
    clock.advance(seconds=1)
    tracker.record_hook(hook("SessionStart", "c"))  # evicts b
    snap = tracker.snapshot()
    assert snap["agentState"] == "working"
    assert snap["sessions"]["claude"] == 2


def test_hook_reason_names_the_latest_event_and_ages_out(make_tracker, clock):
    tracker = make_tracker(reason_window=timedelta(minutes=2))
    tracker.record_hook(hook("PreToolUse"))
    tracker.record_hook(hook("PostToolUse"))
    assert tracker.snapshot()["reasons"] == ["claude-hook:PostToolUse"]
    clock.advance(minutes=2)
    assert tracker.snapshot()["reasons"] == ["claude-hook:PostToolUse"]
    clock.advance(seconds=1)
    assert tracker.snapshot()["reasons"] == []


# --- malformed hook events -----------------------------------------------------------
MALFORMED = [
    None, [], "PreToolUse", 42, {},
    {"hook_event_name": "PreToolUse"},
    {"session_id": "s1"},
    {"hook_event_name": "NoSuchEvent", "session_id": "s1"},
    {"hook_event_name": "pretooluse", "session_id": "s1"},
    {"hook_event_name": 7, "session_id": "s1"},
    {"hook_event_name": "PreToolUse", "session_id": 1},
    {"hook_event_name": "PreToolUse", "session_id": ""},
    {"hook_event_name": "PreToolUse", "session_id": "x" * 257},
    {"hook_event_name": "PreToolUse", "session_id": "s1", "cwd": ["/"]},
    {"hook_event_name": "Notification", "session_id": "s1", "notification_type": None},
]


def test_malformed_events_are_counted_and_change_nothing(make_tracker, clock):
    tracker = make_tracker()
    tracker.record_hook(hook("Stop"))
    before = tracker.snapshot()
    clock.advance(minutes=1)
    for n, payload in enumerate(MALFORMED, start=1):
        assert tracker.record_hook(payload) is False, payload
        snap = tracker.snapshot()
        assert snap["malformedHookEvents"] == n
        assert snap["agentState"] == before["agentState"]
        assert snap["lastActivityTime"] == before["lastActivityTime"]
    assert tracker.record_hook(hook("PreToolUse")) is True
    assert tracker.snapshot()["malformedHookEvents"] == len(MALFORMED)


def test_every_known_event_is_accepted(make_tracker):
    tracker = make_tracker()
    for event in sorted(KNOWN_EVENTS):
        assert tracker.record_hook(hook(event)), event
    assert tracker.snapshot()["malformedHookEvents"] == 0


# --- Prometheus text -----------------------------------------------------------------
_TEMPLATE = """\
# HELP caddy_http_requests_in_flight Number of requests currently handled by this server.
# TYPE caddy_http_requests_in_flight gauge
caddy_http_requests_in_flight{{A}} 1
caddy_http_requests_in_flight{{O}} 3
caddy_http_requests_in_flight{{P}} 2
# HELP caddy_http_requests_total Counter of HTTP(S) requests made.
# TYPE caddy_http_requests_total counter
caddy_http_requests_total{{A}} 12
caddy_http_requests_total{{O}} 40
# HELP caddy_http_request_duration_seconds Histogram of round-trip request durations.
# TYPE caddy_http_request_duration_seconds histogram
caddy_http_request_duration_seconds_bucket{code="200",method="GET",{A},le="0.005"} 0
caddy_http_request_duration_seconds_bucket{code="200",method="GET",{A},le="+Inf"} 9
caddy_http_request_duration_seconds_sum{code="200",method="GET",{A}} 1.5e-02
caddy_http_request_duration_seconds_count{code="200",method="GET",{A}} 9
caddy_http_request_duration_seconds_count{code="401",method="GET",{A}} 3
caddy_http_request_duration_seconds_count{code="403",method="POST",{A}} 4
caddy_http_request_duration_seconds_count{code="429",method="GET",{A}} 6
caddy_http_request_duration_seconds_count{code="404",method="GET",{O}} 40
caddy_http_request_duration_seconds_count{code="200",method="GET",{P}} 5
caddy_http_request_duration_seconds_count{code="308",method="GET",{R}} 7
# HELP go_gc_duration_seconds A summary of the pause duration of GC cycles.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile="0"} 2.5682e-05
go_gc_duration_seconds{quantile="1"} NaN
go_gc_duration_seconds_count 4
process_start_time_seconds 1.76e+09 1764201600000
weird_label{path="C:\\\\tmp\\"x\\"\\nend",} +Inf
this line is { broken
also_broken{a="1"
bad_value{a="1"} one
"""
# Caddy's label sets, spliced in to keep lines short (Caddy sorts labels; order is free)
_LABELS = {
    "{A}": 'handler="authentication",host="ws.example.com",server="workspace"',
    "{O}": 'handler="static_response",host="_other",server="workspace"',
    "{P}": 'handler="reverse_proxy",host="8080.ws.example.com",server="workspace"',
    "{R}": 'handler="static_response",server="remaining_auto_https_redirects"',
}
EXPOSITION = _TEMPLATE
for _key, _value in _LABELS.items():
    EXPOSITION = EXPOSITION.replace(_key, _value)


def test_parser_reads_a_realistic_caddy_exposition():
    samples = parse_prometheus_text(EXPOSITION)
    names = [s.name for s in samples]
    assert "this" not in names and "also_broken" not in names and "bad_value" not in names
    assert len(samples) == 20
    bucket = next(s for s in samples if s.labels.get("le") == "+Inf")
    assert bucket == Sample("caddy_http_request_duration_seconds_bucket", {
        "code": "200", "handler": "authentication", "host": "ws.example.com",
        "method": "GET", "server": "workspace", "le": "+Inf"}, 9.0)
    total = next(s for s in samples if s.name == "caddy_http_request_duration_seconds_sum")
    assert total.value == pytest.approx(0.015)
    nan = next(s for s in samples if s.labels.get("quantile") == "1")
    assert nan.value != nan.value
    assert next(s for s in samples if s.name == "process_start_time_seconds").value == 1.76e9
    weird = next(s for s in samples if s.name == "weird_label")
    assert weird.labels == {"path": 'C:\\tmp"x"\nend'}
    assert weird.value == float("inf")


def test_http_counters_leave_out_scanners_redirects_and_unauthenticated():
    counters = http_counters(parse_prometheus_text(EXPOSITION))
    # 200s on known hosts; not 401 (no login), 403 (cross-origin), 429 (rate limited)
    assert counters.completed == 9 + 5
    assert counters.in_flight == 1 + 2           # not the _other host


def test_http_counters_drop_hosts_the_caller_rejects():
    counters = http_counters(parse_prometheus_text(EXPOSITION),
                             counts_host=lambda host: not host.startswith("8080."))
    assert (counters.completed, counters.in_flight) == (9, 1)


def test_http_counters_fall_back_to_requests_total():
    text = "\n".join(line for line in EXPOSITION.splitlines()
                     if "duration_seconds" not in line)
    assert http_counters(parse_prometheus_text(text)).completed == 12


# --- HTTP source in the tracker --------------------------------------------------------
class FakeMetrics:
    def __init__(self) -> None:
        self.completed = 0
        self.in_flight = 0
        self.fail = False
        self.urls: list[str] = []

    def __call__(self, url: str) -> str:
        self.urls.append(url)
        if self.fail:
            raise ConnectionRefusedError("connection refused")
        labels = 'handler="authentication",host="ws.example.com",server="workspace"'
        return (f'caddy_http_requests_in_flight{{{labels}}} {self.in_flight}\n'
                f'caddy_http_request_duration_seconds_count{{code="200",method="GET",'
                f'{labels}}} {self.completed}\n')


def test_request_counter_increase_is_http_activity(make_tracker, clock):
    metrics = FakeMetrics()
    metrics.completed = 50  # history before the agent looked is not activity
    tracker = make_tracker(caddy_metrics_url="http://127.0.0.1:2019/metrics",
                           fetch_metrics=metrics)
    tracker.poll()
    assert tracker.snapshot()["lastActivityTime"] is None
    assert metrics.urls == ["http://127.0.0.1:2019/metrics"]

    t = clock.advance(seconds=5)
    metrics.completed = 53
    tracker.poll()
    snap = tracker.snapshot()
    assert snap["reasons"] == ["http"]
    assert snap["lastActivityTime"] == snap["lastUserActivityTime"] == iso(t)

    clock.advance(minutes=5)
    tracker.poll()  # unchanged counter
    snap = tracker.snapshot()
    assert snap["reasons"] == [] and snap["lastActivityTime"] == iso(t)


def test_caddy_restart_resets_counters_without_losing_activity(make_tracker, clock):
    metrics = FakeMetrics()
    metrics.completed = 500
    tracker = make_tracker(caddy_metrics_url="http://m", fetch_metrics=metrics)
    tracker.poll()
    t = clock.advance(seconds=5)
    metrics.completed = 2  # restarted, two requests since
    tracker.poll()
    assert tracker.snapshot()["lastActivityTime"] == iso(t)
    clock.advance(seconds=5)
    tracker.poll()  # unchanged after the restart
    assert tracker.snapshot()["lastActivityTime"] == iso(t)


def test_unreachable_metrics_are_no_activity_and_no_error(make_tracker, clock):
    metrics = FakeMetrics()
    tracker = make_tracker(caddy_metrics_url="http://m", fetch_metrics=metrics)
    tracker.poll()
    metrics.fail = True
    metrics.completed = 10
    clock.advance(seconds=5)
    tracker.poll()
    assert tracker.snapshot()["lastActivityTime"] is None
    metrics.fail = False
    clock.advance(seconds=5)
    tracker.poll()  # first answer after the outage is a new baseline
    assert tracker.snapshot()["lastActivityTime"] is None
    t = clock.advance(seconds=5)
    metrics.completed = 11
    tracker.poll()
    assert tracker.snapshot()["lastActivityTime"] == iso(t)


def test_unreachable_real_endpoint_does_not_raise(make_tracker, clock):
    import socket
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tracker = make_tracker(caddy_metrics_url=f"http://127.0.0.1:{port}/metrics")
    tracker.poll()
    clock.advance(seconds=5)
    tracker.poll()
    snap = tracker.snapshot()
    assert snap["lastActivityTime"] is None and snap["sessions"]["httpInFlight"] == 0


def test_requests_in_flight_on_two_polls_are_an_open_session(make_tracker, clock):
    metrics = FakeMetrics()
    tracker = make_tracker(caddy_metrics_url="http://m", fetch_metrics=metrics)
    metrics.in_flight = 1
    tracker.poll()
    assert tracker.snapshot()["reasons"] == [], "one sample may be an ordinary request"
    t = clock.advance(seconds=5)
    tracker.poll()
    snap = tracker.snapshot()
    assert snap["reasons"] == ["http-session"]
    assert snap["lastUserActivityTime"] == iso(t)
    assert snap["sessions"]["httpInFlight"] == 1
    clock.advance(seconds=5)
    metrics.in_flight = 0
    tracker.poll()
    clock.advance(seconds=5)
    metrics.in_flight = 1
    tracker.poll()
    assert tracker.snapshot()["lastUserActivityTime"] == iso(t)


# --- SSH -------------------------------------------------------------------------------
def fake_proc(root: Path, titles: dict[str, bytes | None]) -> Path:
    for name, cmdline in titles.items():
        (root / name).mkdir(parents=True)
        if cmdline is not None:
            (root / name / "cmdline").write_bytes(cmdline)
    return root


PROC = {
    "1": b"/sbin/init\0splash\0",
    "410": b"sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups\0",
    "900": b"sshd: alice [priv]\0\0\0\0",
    "901": b"sshd: alice@pts/0\0\0\0\0\0\0",
    "905": b"sshd: unknown [preauth]\0",
    "906": b"sshd: root [net]\0",
    "950": b"sshd-session: bob@notty\0",
    "951": b"sshd-session: bob [priv]\0",
    "990": b"-bash\0",
    "991": b"ssh\0git@github.com\0",
    "992": None,                    # exited while we looked
    "self": b"sshd: fake@pts/9\0",  # not a pid
}


def test_ssh_sessions_are_counted_from_proc_titles(tmp_path):
    assert count_ssh_sessions(fake_proc(tmp_path / "proc", PROC)) == 2
    assert count_ssh_sessions(tmp_path / "missing") == 0


def test_ssh_sessions_are_user_activity(make_tracker, clock, tmp_path):
    proc = fake_proc(tmp_path / "sshproc", PROC)
    tracker = make_tracker(proc_root=proc)
    t = clock.advance(seconds=5)
    tracker.poll()
    snap = tracker.snapshot()
    assert snap["reasons"] == ["ssh"]
    assert snap["sessions"]["ssh"] == 2
    assert snap["lastUserActivityTime"] == iso(t)
    (proc / "901" / "cmdline").unlink()
    (proc / "950" / "cmdline").unlink()
    clock.advance(minutes=5)
    tracker.poll()
    snap = tracker.snapshot()
    assert snap["sessions"]["ssh"] == 0 and snap["reasons"] == []


# --- files -----------------------------------------------------------------------------
def touch(path: Path, when: datetime) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("x")
    os.utime(path, (when.timestamp(), when.timestamp()))


def make_tree(root: Path, files: int, when: datetime) -> None:
    for n in range(files):
        touch(root / f"d{n % 5}" / f"f{n}.txt", when)
    for directory in [root, *root.iterdir()]:
        os.utime(directory, (when.timestamp(), when.timestamp()))


def test_scanner_respects_its_budget_and_resumes(tmp_path):
    root = tmp_path / "w"
    make_tree(root, 50, BASE - timedelta(hours=1))  # 5 dirs + 50 files + the root = 56
    scanner = FileScanner(root, budget=10)
    steps = 0
    while scanner.passes == 0:
        scanner.step(BASE.timestamp())
        steps += 1
        assert scanner.last_step_entries <= 10
        assert steps < 20
    assert steps == 6  # ceil(56 / 10)
    assert scanner.newest is not None


def test_scanner_finds_a_change_anywhere(tmp_path):
    root = tmp_path / "w"
    old = BASE - timedelta(hours=1)
    make_tree(root, 30, old)
    scanner = FileScanner(root, budget=1000)
    scanner.step(BASE.timestamp())
    first = scanner.newest
    assert first is not None and first < BASE.timestamp()
    changed = BASE + timedelta(minutes=1)
    os.utime(root / "d3" / "f13.txt", (changed.timestamp(), changed.timestamp()))
    assert scanner.step(changed.timestamp()) == changed.timestamp()


def test_scanner_handles_a_directory_bigger_than_the_budget(tmp_path):
    root = tmp_path / "w"
    for n in range(25):
        touch(root / f"f{n:02}", BASE - timedelta(hours=1))
    scanner = FileScanner(root, budget=4)
    for _ in range(7):  # 26 entries / 4 per step
        scanner.step(BASE.timestamp())
        assert scanner.last_step_entries <= 4
    assert scanner.passes == 1


def test_scanner_skips_heavy_trees_and_future_times(tmp_path):
    root = tmp_path / "w"
    old = BASE - timedelta(hours=1)
    make_tree(root, 5, old)
    later = BASE + timedelta(minutes=5)
    touch(root / "node_modules" / "pkg" / "index.js", later)
    touch(root / "src" / ".git" / "FETCH_HEAD", later)
    touch(root / ".claude" / "statsig" / "cache", later)
    touch(root / "server.log", later)
    touch(root / "clock-skew.txt", later + timedelta(days=365))
    for directory in (root, root / "src"):
        os.utime(directory, (old.timestamp(), old.timestamp()))
    scanner = FileScanner(root, budget=1000)
    assert scanner.step(later.timestamp()) == old.timestamp()


def test_file_changes_after_start_are_activity(make_tracker, clock, tmp_path):
    root = tmp_path / "workspaces"
    make_tree(root, 20, BASE - timedelta(days=1))
    tracker = make_tracker(scan_files=True, workspaces_root=root)
    clock.advance(seconds=5)
    tracker.poll()
    assert tracker.snapshot()["lastActivityTime"] is None, "the existing tree is no change"
    edited = clock.advance(seconds=20)
    touch(root / "d2" / "f7.txt", edited)
    clock.advance(seconds=10)  # seen a little after the edit: dated to the edit
    tracker.poll()
    snap = tracker.snapshot()
    assert snap["reasons"] == ["files"]
    assert snap["lastActivityTime"] == iso(edited)
    assert snap["lastUserActivityTime"] is None, "files are not user activity"


def test_suppressed_file_changes_do_not_count(make_tracker, clock, tmp_path):
    root = tmp_path / "workspaces"
    root.mkdir()
    os.utime(root, (BASE.timestamp() - 60, BASE.timestamp() - 60))
    tracker = make_tracker(scan_files=True, workspaces_root=root)
    tracker.suppress_files_until(BASE + timedelta(hours=1))   # restore begins
    restored = clock.advance(minutes=3)
    make_tree(root, 10, restored)
    tracker.poll()
    done = clock.advance(minutes=1)
    tracker.suppress_files_until(done)                         # restore ended
    tracker.poll()
    assert tracker.snapshot()["lastActivityTime"] is None
    edited = clock.advance(minutes=1)
    touch(root / "d1" / "f1.txt", edited)
    tracker.poll()
    assert tracker.snapshot()["lastActivityTime"] == iso(edited)


# --- snapshot --------------------------------------------------------------------------
def test_snapshot_shape(make_tracker, clock, tmp_path):
    tracker = make_tracker(proc_root=fake_proc(tmp_path / "p", {"7": b"sshd: a@pts/1\0"}))
    tracker.record_hook(hook("PreToolUse"))
    tracker.record_hook({"oops": True})
    clock.advance(seconds=3)
    tracker.poll()
    snap = tracker.snapshot()
    assert set(snap) == {"agentState", "agentStateSince", "lastActivityTime",
                         "lastUserActivityTime", "reasons", "malformedHookEvents",
                         "sessions"}
    assert snap["agentState"] == "working"
    for key in ("agentStateSince", "lastActivityTime", "lastUserActivityTime"):
        value = snap[key]
        assert isinstance(value, str) and value.endswith("Z")
        assert datetime.fromisoformat(value) <= clock.now
    assert snap["reasons"] == ["claude-hook:PreToolUse", "ssh"]
    assert snap["malformedHookEvents"] == 1
    assert snap["sessions"] == {"claude": 1, "claudeWorking": 1, "claudeWaiting": 0,
                                "ssh": 1, "httpInFlight": 0}
