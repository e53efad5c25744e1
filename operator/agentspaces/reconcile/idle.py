"""When does a running workspace stop by itself? A pure policy over the agent's report.

`decide(IdleInputs) -> IdleDecision`; no I/O, the caller passes `now`. docs/idle.md
explains what the agent counts as activity; the rules here, in order:

1. Lifetime: `now - started_at >= lifetime_max` stops the workspace
   (`stopped_by="lifetime"`, reason LifetimeExceeded), whatever else is true: a working
   agent, a present user, an unreachable agent.
2. Unreachable agent (`failed_polls >= unreachable_after`): never a stop by itself. A
   dead agent is an alarm (AgentReady=False), not evidence that nobody is there; the
   user may be in the middle of something the operator cannot see. Reason Unreachable,
   idle False (callers may show Idle as Unknown).
3. Agent working: not idle (reason AgentWorking) while it has been working for less
   than `agent_busy_cap`. Past the cap (runaway guard, reason AgentBusyCapExceeded)
   idleness counts from max(since + cap, the last *user* activity, started_at): only
   HTTP, web-terminal and SSH activity count there, because a runaway agent keeps
   firing hooks and changing files itself. Stops once that quiet stretch reaches
   `timeout`, so a user who is around keeps a long agent run alive.
4. Agent not working (waiting, idle, absent, or a state this operator does not know):
   idleness counts from max(started_at, last activity of any kind, since + grace);
   the grace gives the human time to look at what the agent just finished. Stops when
   the quiet stretch reaches `timeout` (reason IdleTimeout, stopped_by inactivity).
5. No report yet (the agent has not answered, but is not yet "unreachable"): idleness
   counts from `started_at`.

`idle` turns True once the quiet stretch has lasted `min_quiet` (at most `timeout`):
activity only arrives every poll interval, so a gap of seconds is not "idle". The
decision is monotone in `now` for fixed other inputs: once it says stop, later times
say stop too. `idle_since` is set exactly when `idle` is, and is never after `now`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from agentspaces.api import conditions
from agentspaces.api.durations import format_duration

WORKING = "working"
# The agent's user-activity reasons (agentspaces_vm.activity.USER_REASONS); used only
# when a report lacks lastUserActivityTime.
USER_REASONS = frozenset({"http", "http-session", "ssh"})


@dataclass(frozen=True)
class ActivityReport:
    """What the operator last read from the agent's status `activity` object."""

    agent_state: str                 # working|waiting|idle|absent
    agent_state_since: datetime
    last_activity: datetime | None
    reasons: tuple[str, ...]
    # Newest HTTP/web-terminal/SSH activity; None if the agent did not say.
    last_user_activity: datetime | None = None

    @classmethod
    def from_status(cls, activity: Mapping[str, object]) -> ActivityReport:
        """Parse the `activity` object of GET /v1/status; ValueError if it is malformed."""
        state = activity.get("agentState")
        if not isinstance(state, str) or not state:
            raise ValueError(f"activity.agentState must be a non-empty string, not {state!r}")
        reasons = activity.get("reasons", [])
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise ValueError("activity.reasons must be a list of strings")
        since = _time(activity, "agentStateSince")
        if since is None:
            raise ValueError("activity.agentStateSince is required")
        return cls(agent_state=state, agent_state_since=since,
                   last_activity=_time(activity, "lastActivityTime"),
                   reasons=tuple(reasons),
                   last_user_activity=_time(activity, "lastUserActivityTime"))


@dataclass(frozen=True)
class IdleInputs:
    now: datetime
    started_at: datetime                  # when the current server became Running
    report: ActivityReport | None         # None: the agent has not answered yet
    failed_polls: int                     # consecutive failed agent polls
    timeout: timedelta
    grace: timedelta
    agent_busy_cap: timedelta
    lifetime_max: timedelta | None
    unreachable_after: int = 3            # N failed polls -> AgentReady=False, never a stop
    min_quiet: timedelta = timedelta(minutes=2)  # quiet this long before Idle shows True

    def __post_init__(self) -> None:
        if self.timeout <= timedelta(0):
            raise ValueError(f"idle timeout must be positive, not {self.timeout}")
        if self.grace < timedelta(0) or self.min_quiet < timedelta(0):
            raise ValueError("grace and min_quiet must not be negative")
        if self.agent_busy_cap <= timedelta(0):
            raise ValueError(f"agent busy cap must be positive, not {self.agent_busy_cap}")
        if self.lifetime_max is not None and self.lifetime_max <= timedelta(0):
            raise ValueError(f"lifetime must be positive, not {self.lifetime_max}")
        if self.unreachable_after < 1:
            raise ValueError(f"unreachable_after must be at least 1, not "
                             f"{self.unreachable_after}")


@dataclass(frozen=True)
class IdleDecision:
    stop: bool
    stopped_by: str | None                # "inactivity" | "lifetime" | None
    idle: bool
    idle_since: datetime | None
    reason: str                           # CamelCase reason for the Idle condition
    message: str                          # human text, e.g. "no activity for 31m (timeout 30m)"
    agent_unreachable: bool


def decide(inputs: IdleInputs) -> IdleDecision:
    """Apply the rules of the module docstring."""
    unreachable = inputs.failed_polls >= inputs.unreachable_after
    decision = _unreachable(inputs) if unreachable else _by_activity(inputs)
    age = inputs.now - inputs.started_at
    if inputs.lifetime_max is not None and age >= inputs.lifetime_max:
        return replace(decision, stop=True, stopped_by="lifetime",
                       reason=conditions.LIFETIME_EXCEEDED,
                       message=f"running for {_fmt(age)} "
                               f"(lifetime {_fmt(inputs.lifetime_max)})")
    return decision


def _unreachable(inputs: IdleInputs) -> IdleDecision:
    return IdleDecision(
        stop=False, stopped_by=None, idle=False, idle_since=None,
        reason=conditions.AGENT_UNREACHABLE,
        message=f"agent unreachable for {inputs.failed_polls} polls; "
                "inactivity is not judged until it answers",
        agent_unreachable=True)


def _by_activity(inputs: IdleInputs) -> IdleDecision:
    report, now, timeout = inputs.report, inputs.now, _fmt(inputs.timeout)
    if report is None:
        quiet = now - inputs.started_at
        return _decision(inputs, inputs.started_at, conditions.ACTIVE,
                         f"no report from the agent yet; started {_fmt(quiet)} ago",
                         f"no report from the agent yet; no activity for {_fmt(quiet)} "
                         f"since the start (timeout {timeout})")
    if report.agent_state == WORKING:
        busy = now - report.agent_state_since
        cap = inputs.agent_busy_cap
        if busy < cap:
            return _decision(inputs, None, conditions.AGENT_WORKING,
                             f"agent working for {_fmt(busy)} (busy cap {_fmt(cap)})", "")
        runaway = f"agent working for {_fmt(busy)}, past the {_fmt(cap)} busy cap"
        user = _last_user_activity(report)
        start = max(report.agent_state_since + cap, inputs.started_at,
                    *([user] if user is not None else []))
        active = (f"{runaway}; user active {_fmt(now - user)} ago"
                  if user is not None and user == start else runaway)
        return _decision(inputs, start, conditions.BUSY_CAP_EXCEEDED, active,
                         f"{runaway}; no user activity for {_fmt(now - start)} "
                         f"(timeout {timeout})",
                         idle_reason=conditions.BUSY_CAP_EXCEEDED)
    grace_end = report.agent_state_since + inputs.grace
    start = max(inputs.started_at, grace_end,
                *([report.last_activity] if report.last_activity is not None else []))
    if start == grace_end and now < grace_end:
        active = (f"agent {report.agent_state} for "
                  f"{_fmt(now - report.agent_state_since)} (grace {_fmt(inputs.grace)})")
    else:
        active = f"last activity {_fmt(now - start)} ago"
        if report.reasons:
            active += f" ({', '.join(report.reasons)})"
    return _decision(inputs, start, conditions.ACTIVE, active,
                     f"no activity for {_fmt(now - start)} (timeout {timeout})")


def _decision(inputs: IdleInputs, start: datetime | None, active_reason: str,
              active_message: str, idle_message: str, *,
              idle_reason: str = conditions.IDLE_TIMEOUT) -> IdleDecision:
    """Decide from the start of the quiet stretch (None: not counting at all)."""
    quiet = None if start is None else inputs.now - start
    stop = quiet is not None and quiet >= inputs.timeout
    idle = quiet is not None and quiet >= min(inputs.min_quiet, inputs.timeout)
    return IdleDecision(
        stop=stop, stopped_by="inactivity" if stop else None,
        idle=idle, idle_since=start if idle else None,
        reason=idle_reason if idle else active_reason,
        message=idle_message if idle else active_message,
        agent_unreachable=False)


def _last_user_activity(report: ActivityReport) -> datetime | None:
    if report.last_user_activity is not None:
        return report.last_user_activity
    # An older agent: a user reason in the recent window means "about as recent as the
    # newest activity of any kind".
    if USER_REASONS.intersection(report.reasons):
        return report.last_activity
    return None


def _time(activity: Mapping[str, object], key: str) -> datetime | None:
    value = activity.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"activity.{key} must be an RFC 3339 time, not {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"activity.{key} is not an RFC 3339 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"activity.{key} has no time zone: {value!r}")
    return parsed


def _fmt(delta: timedelta) -> str:
    return format_duration(max(delta, timedelta(0)))
