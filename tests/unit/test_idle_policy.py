"""The idle policy: a table of situations, then properties over random inputs/timelines."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentspaces.api.enums import AgentState, Reason, StoppedBy
from agentspaces.api.status import ActivityStatus
from agentspaces.reconcile.idle import ActivityReport, IdleDecision, IdleInputs, decide
from agentspaces_vm.activity import ActivityTracker
from agentspaces_vm.contracts import Activity

T0 = datetime(2030, 3, 1, 8, 0, tzinfo=UTC)   # the server became Running
M = timedelta(minutes=1)
H = timedelta(hours=1)


def report(state: str, since: timedelta, last: timedelta | None = None,
           reasons: tuple[str, ...] = (), user: timedelta | None = None) -> ActivityReport:
    """A report with times given as offsets from T0."""
    return ActivityReport(agent_state=AgentState(state), agent_state_since=T0 + since,
                          last_activity=None if last is None else T0 + last,
                          reasons=reasons,
                          last_user_activity=None if user is None else T0 + user)


def inputs(at: timedelta, rep: ActivityReport | None, *, failed: int = 0,
           lifetime: timedelta | None = None, **overrides: object) -> IdleInputs:
    base = IdleInputs(now=T0 + at, started_at=T0, report=rep, failed_polls=failed,
                      timeout=30 * M, grace=5 * M, agent_busy_cap=6 * H,
                      lifetime_max=lifetime)
    return replace(base, **overrides)  # type: ignore[arg-type]


# (id, inputs, stop, stopped_by, idle, idle_since offset, reason, message fragment)
CASES = [
    ("no-report-fresh", inputs(M, None), False, None, False, None, Reason.ACTIVE,
     "no report from the agent yet; started 1m ago"),
    ("no-report-quiet", inputs(12 * M, None), False, None, True, timedelta(0),
     Reason.IDLE_TIMEOUT, "no activity for 12m since the start (timeout 30m)"),
    ("no-report-timeout", inputs(30 * M, None), True, "inactivity", True, timedelta(0),
     Reason.IDLE_TIMEOUT, "no activity for 30m"),
    ("working", inputs(5 * H, report("working", M, 5 * H)), False, None, False, None,
     Reason.AGENT_WORKING, "agent working for 4h59m (busy cap 6h)"),
    ("working-lifetime", inputs(4 * H, report("working", M, 4 * H), lifetime=4 * H),
     True, "lifetime", False, None, Reason.LIFETIME_EXCEEDED, "running for 4h (lifetime 4h)"),
    ("busy-cap-reached", inputs(6 * H, report("working", timedelta(0), 6 * H)), False, None,
     False, None, Reason.BUSY_CAP_EXCEEDED, "past the 6h busy cap"),
    ("busy-cap-idle", inputs(6 * H + 10 * M, report("working", timedelta(0), 6 * H)),
     False, None, True, 6 * H, Reason.BUSY_CAP_EXCEEDED, "no user activity for 10m"),
    ("busy-cap-stop", inputs(6 * H + 30 * M, report("working", timedelta(0), 6 * H + 29 * M)),
     True, "inactivity", True, 6 * H, Reason.BUSY_CAP_EXCEEDED, "(timeout 30m)"),
    ("busy-cap-user-there",
     inputs(6 * H + 30 * M, report("working", timedelta(0), 6 * H + 29 * M,
                                   user=6 * H + 29 * M)),
     False, None, False, None, Reason.BUSY_CAP_EXCEEDED, "user active 1m ago"),
    ("busy-cap-user-reason-fallback",
     inputs(7 * H, report("working", timedelta(0), 7 * H - M, reasons=("ssh",))),
     False, None, False, None, Reason.BUSY_CAP_EXCEEDED, "user active 1m ago"),
    ("busy-cap-files-are-not-users",
     inputs(7 * H, report("working", timedelta(0), 7 * H - M,
                          reasons=("claude-hook:PostToolUse", "files"))),
     True, "inactivity", True, 6 * H, Reason.BUSY_CAP_EXCEEDED, "no user activity for 1h"),
    ("grace", inputs(H + 4 * M, report("waiting", H, H)), False, None, False, None,
     Reason.ACTIVE, "agent waiting for 4m (grace 5m)"),
    ("after-grace", inputs(H + 34 * M, report("waiting", H, H + M)), False, None, True,
     H + 5 * M, Reason.IDLE_TIMEOUT, "no activity for 29m (timeout 30m)"),
    ("timeout", inputs(H + 35 * M, report("idle", H, H + M)), True, "inactivity", True,
     H + 5 * M, Reason.IDLE_TIMEOUT, "no activity for 30m (timeout 30m)"),
    ("activity-after-grace",
     inputs(2 * H + 29 * M, report("idle", H, 2 * H, ("ssh",))), False, None, True,
     2 * H, Reason.IDLE_TIMEOUT, "no activity for 29m"),
    ("recent-activity-is-not-idle",
     inputs(2 * H + M, report("waiting", H, 2 * H, ("ssh", "http"))), False, None, False,
     None, Reason.ACTIVE, "last activity 1m ago (ssh, http)"),
    ("absent-since-boot", inputs(35 * M, report("absent", timedelta(0))), True,
     "inactivity", True, 5 * M, Reason.IDLE_TIMEOUT, "no activity for 30m"),
    ("unknown-state-is-not-working", inputs(40 * M, report("unknown", timedelta(0))), True,
     "inactivity", True, 5 * M, Reason.IDLE_TIMEOUT, "no activity"),
    ("activity-before-start-does-not-count",
     inputs(29 * M, report("absent", -2 * H, -H)), False, None, True, timedelta(0),
     Reason.IDLE_TIMEOUT, "no activity for 29m"),
    ("flaky-agent-old-report", inputs(2 * H, report("waiting", M, M), failed=2), True,
     "inactivity", True, 6 * M, Reason.IDLE_TIMEOUT, "no activity"),
    ("unreachable", inputs(9 * H, report("waiting", M, M), failed=3), False, None, False,
     None, Reason.AGENT_UNREACHABLE, "agent unreachable for 3 polls"),
    ("unreachable-never-answered", inputs(9 * H, None, failed=50), False, None, False, None,
     Reason.AGENT_UNREACHABLE, "inactivity is not judged"),
    ("unreachable-lifetime", inputs(9 * H, None, failed=50, lifetime=8 * H), True,
     "lifetime", False, None, Reason.LIFETIME_EXCEEDED, "running for 9h (lifetime 8h)"),
    ("lifetime-idle-too", inputs(3 * H, report("idle", M, M), lifetime=3 * H), True,
     "lifetime", True, 6 * M, Reason.LIFETIME_EXCEEDED, "lifetime 3h"),
    ("short-timeout-below-min-quiet",
     inputs(H + M, report("waiting", timedelta(0), H), timeout=M, grace=timedelta(0)),
     True, "inactivity", True, H, Reason.IDLE_TIMEOUT, "(timeout 1m)"),
]


@pytest.mark.parametrize(
    ("given_inputs", "stop", "stopped_by", "idle", "idle_since", "reason", "message"),
    [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_table(given_inputs, stop, stopped_by, idle, idle_since, reason, message):
    decision = decide(given_inputs)
    assert (decision.stop, decision.stopped_by, decision.idle) == (stop, stopped_by, idle)
    assert decision.idle_since == (None if idle_since is None else T0 + idle_since)
    assert decision.reason == reason
    assert message in decision.message, decision.message
    assert decision.agent_unreachable == (given_inputs.failed_polls >= 3)


def test_idle_shows_only_after_min_quiet():
    rep = report("waiting", timedelta(0), H)
    assert not decide(inputs(H + M, rep)).idle
    assert decide(inputs(H + 2 * M, rep)).idle
    assert not decide(inputs(H + 2 * M, rep, min_quiet=3 * M)).idle


def test_reasons_and_stops_are_the_api_enums():
    decisions = [decide(case[1]) for case in CASES]
    assert {d.reason for d in decisions} == {
        Reason.ACTIVE, Reason.AGENT_WORKING, Reason.IDLE_TIMEOUT, Reason.BUSY_CAP_EXCEEDED,
        Reason.LIFETIME_EXCEEDED, Reason.AGENT_UNREACHABLE}
    assert all(isinstance(d.reason, Reason) for d in decisions)
    assert {d.stopped_by for d in decisions} == {None, StoppedBy.INACTIVITY,
                                                 StoppedBy.LIFETIME}


@pytest.mark.parametrize("bad", [
    {"timeout": timedelta(0)}, {"grace": -M}, {"agent_busy_cap": timedelta(0)},
    {"lifetime_max": timedelta(0)}, {"unreachable_after": 0}, {"min_quiet": -M},
])
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        inputs(M, None, **bad)


# --- reading the agent's status ------------------------------------------------------
def from_agent(doc: dict[str, object]) -> ActivityReport:
    return ActivityReport.from_agent(Activity.from_json(doc))


def test_report_from_the_agent():
    rep = from_agent({
        "agentState": "waiting", "agentStateSince": "2030-03-01T08:05:00Z",
        "lastActivityTime": "2030-03-01T08:06:00+00:00", "lastUserActivityTime": None,
        "reasons": ["ssh"], "malformedHookEvents": 0, "sessions": {"claude": 1}})
    assert rep == report("waiting", 5 * M, 6 * M, ("ssh",))
    old_agent = from_agent({"agentState": "absent",
                            "agentStateSince": "2030-03-01T08:00:00Z"})
    assert old_agent == report("absent", timedelta(0))


def test_a_state_this_operator_does_not_know_is_unknown_and_not_working():
    rep = from_agent({"agentState": "thinking", "agentStateSince": "2030-03-01T08:00:00Z"})
    assert rep.agent_state is AgentState.UNKNOWN
    decision = decide(inputs(H, rep))
    assert decision.stop and decision.reason is Reason.IDLE_TIMEOUT


def test_report_recorded_in_status_stands_in_for_a_missed_poll():
    recorded = ActivityStatus(agent_state=AgentState.WAITING,
                              agent_state_since=T0 + 5 * M,
                              last_activity_time=T0 + 50 * M, reasons=["ssh"])
    rep = ActivityReport.from_status(recorded)
    assert rep == report("waiting", 5 * M, 50 * M, ("ssh",))
    # Without it a missed poll would count from the start and stop an active workspace.
    assert not decide(inputs(H, rep, failed=1)).stop
    assert decide(inputs(H, None, failed=1)).stop
    assert ActivityReport.from_status(None) is None
    assert ActivityReport.from_status(ActivityStatus(idle=False)) is None


@pytest.mark.parametrize("status", [
    {},
    {"agentState": "", "agentStateSince": "2030-03-01T08:00:00Z"},
    {"agentState": "working"},
    {"agentState": "working", "agentStateSince": "yesterday"},
    {"agentState": "working", "agentStateSince": 1700000000},
    {"agentState": "working", "agentStateSince": "2030-03-01T08:00:00Z", "reasons": "ssh"},
    {"agentState": "working", "agentStateSince": "2030-03-01T08:00:00Z", "reasons": [1]},
    {"agentState": "working", "agentStateSince": "2030-03-01T08:00:00Z",
     "lastActivityTime": "soon"},
])
def test_report_from_bad_status(status):
    with pytest.raises(ValueError):
        from_agent(status)


# --- properties over random inputs ----------------------------------------------------
minutes = st.integers(min_value=1, max_value=24 * 60).map(lambda n: n * M)
offsets = st.integers(min_value=-3 * 60 * 60, max_value=48 * 60 * 60).map(
    lambda s: timedelta(seconds=s))
states = st.sampled_from(["working", "waiting", "idle", "absent", "unknown"])


@st.composite
def any_inputs(draw: st.DrawFn) -> IdleInputs:
    rep = draw(st.none() | st.builds(
        lambda state, since, last, user, reasons: ActivityReport(
            AgentState(state), T0 + since, None if last is None else T0 + last, reasons,
            None if user is None else T0 + user),
        states, offsets, st.none() | offsets, st.none() | offsets,
        st.lists(st.sampled_from(["ssh", "http", "http-session", "files",
                                  "claude-hook:Stop"]), max_size=3).map(tuple)))
    return IdleInputs(
        now=T0 + draw(offsets), started_at=T0, report=rep,
        failed_polls=draw(st.integers(0, 6)), timeout=draw(minutes),
        grace=draw(st.integers(0, 120).map(lambda n: n * M)),
        agent_busy_cap=draw(minutes), lifetime_max=draw(st.none() | minutes),
        min_quiet=draw(st.integers(0, 10).map(lambda n: n * M)))


def well_formed(decision: IdleDecision, given_inputs: IdleInputs) -> None:
    assert (decision.idle_since is None) == (not decision.idle)
    if decision.idle_since is not None:
        assert decision.idle_since <= given_inputs.now
    assert decision.stopped_by == (None if not decision.stop else decision.stopped_by)
    if decision.stop:
        assert decision.stopped_by in ("inactivity", "lifetime")
    if decision.stopped_by == "inactivity":
        assert decision.idle
    assert decision.message
    assert decision.reason.isalpha() and decision.reason[0].isupper()


@given(any_inputs(), st.integers(0, 48 * 60 * 60))
def test_monotone_in_time_and_well_formed(given_inputs, later_seconds):
    later = replace(given_inputs, now=given_inputs.now + timedelta(seconds=later_seconds))
    first, second = decide(given_inputs), decide(later)
    well_formed(first, given_inputs)
    well_formed(second, later)
    assert not first.stop or second.stop, "once stop, stays stop"
    assert not first.idle or second.idle
    if first.idle and second.idle:
        assert first.idle_since == second.idle_since


@given(any_inputs())
def test_working_within_cap_never_stops_before_the_lifetime(given_inputs):
    rep = given_inputs.report
    working = (rep is not None and rep.agent_state == "working"
               and given_inputs.now - rep.agent_state_since < given_inputs.agent_busy_cap)
    lifetime = given_inputs.lifetime_max
    alive = lifetime is None or given_inputs.now - given_inputs.started_at < lifetime
    if working and alive:
        assert not decide(given_inputs).stop


@given(any_inputs())
def test_unreachable_agents_only_stop_by_lifetime(given_inputs):
    if given_inputs.failed_polls >= given_inputs.unreachable_after:
        decision = decide(given_inputs)
        assert decision.agent_unreachable and not decision.idle
        assert decision.stopped_by in (None, "lifetime")


@given(any_inputs(), st.integers(0, 24 * 60 * 60))
def test_always_stops_after_timeout_plus_grace_of_nothing(given_inputs, extra_seconds):
    rep = given_inputs.report
    if rep is not None and rep.agent_state == "working":
        rep = replace(rep, agent_state="waiting")
    times = [given_inputs.started_at]
    if rep is not None:
        times += [t for t in (rep.agent_state_since, rep.last_activity,
                              rep.last_user_activity) if t is not None]
    quiet_from = max(times)
    now = quiet_from + given_inputs.timeout + given_inputs.grace + \
        timedelta(seconds=extra_seconds)
    decision = decide(replace(given_inputs, report=rep, now=now,
                              failed_polls=min(given_inputs.failed_polls, 2)))
    assert decision.stop and decision.idle


# --- properties over event timelines through the real agent tracker -------------------
class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


HOOK_EVENTS = ["SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse",
               "PermissionRequest", "Notification", "Stop", "SessionEnd"]
steps = st.lists(st.tuples(st.integers(0, 90 * 60),
                           st.sampled_from([*HOOK_EVENTS, None]),
                           st.sampled_from(["a", "b"])),
                 min_size=1, max_size=25)


@pytest.fixture(scope="module")
def no_proc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proc")


@settings(max_examples=150, deadline=None)
@given(steps, st.integers(1, 8).map(lambda n: n * 15 * M),
       st.integers(0, 3).map(lambda n: n * 5 * M), st.integers(1, 12).map(lambda n: n * H))
def test_timelines_through_the_tracker(no_proc, timeline, timeout, grace, cap):
    clock = Clock()
    tracker = ActivityTracker(clock, workspaces_root=no_proc / "none", scan_files=False,
                              caddy_metrics_url=None, proc_root=no_proc)
    last_event = T0
    for gap, event, session in timeline:
        clock.now += timedelta(seconds=gap)
        if event is not None:
            assert tracker.record_hook({"hook_event_name": event, "session_id": session})
            last_event = clock.now
        snap = tracker.snapshot()
        decision = decide(IdleInputs(
            now=clock.now, started_at=T0, report=from_agent(snap),
            failed_polls=0, timeout=timeout, grace=grace, agent_busy_cap=cap,
            lifetime_max=None))
        since = datetime.fromisoformat(snap["agentStateSince"])
        if snap["agentState"] == "working" and clock.now - since < cap:
            assert not decision.stop, (snap, decision)
        if snap["agentState"] != "working" and clock.now - last_event >= timeout + grace:
            assert decision.stop and decision.stopped_by == "inactivity", (snap, decision)
        if snap["agentState"] != "working" and clock.now - last_event < timeout:
            assert not decision.stop, (snap, decision)
