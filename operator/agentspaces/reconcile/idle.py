"""When does a running workspace stop by itself? A pure policy over the agent's report.

`decide(IdleInputs) -> IdleDecision`; no I/O, the caller passes `now`. docs/idle.md
explains what the agent counts as activity; the rules here, in order:

1. Lifetime: `now - started_at >= lifetime_max` stops the workspace
   (`StoppedBy.LIFETIME`, reason LifetimeExceeded), whatever else is true: a working
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
5. No report yet (the agent has never answered; a failed poll after it has passes the
   report last recorded in status): idleness counts from `started_at`.

`idle` turns True once the quiet stretch has lasted `min_quiet` (at most `timeout`):
activity only arrives every poll interval, so a gap of seconds is not "idle". The
decision is monotone in `now` for fixed other inputs: once it says stop, later times
say stop too. `idle_since` is set exactly when `idle` is, and is never after `now`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from agentspaces.api.durations import format_duration
from agentspaces.api.enums import AgentState, Reason, StoppedBy
from agentspaces.api.status import ActivityStatus
from agentspaces_vm.contracts import Activity

# The agent's user-activity reasons (agentspaces_vm.activity.USER_REASONS); used only
# when a report lacks lastUserActivityTime.
USER_REASONS = frozenset({"http", "http-session", "ssh"})


@dataclass(frozen=True)
class ActivityReport:
    """What the operator knows of the agent's activity (its status `activity` object)."""

    agent_state: AgentState
    agent_state_since: datetime
    last_activity: datetime | None
    reasons: tuple[str, ...]
    # Newest HTTP/web-terminal/SSH activity; None if the agent did not say.
    last_user_activity: datetime | None = None

    @classmethod
    def from_agent(cls, activity: Activity) -> ActivityReport:
        """The `activity` object of GET /v1/status, as the agent just reported it."""
        return cls(agent_state=agent_state(activity.agent_state),
                   agent_state_since=activity.agent_state_since,
                   last_activity=activity.last_activity_time,
                   reasons=activity.reasons,
                   last_user_activity=activity.last_user_activity_time)

    @classmethod
    def from_status(cls, activity: ActivityStatus | None) -> ActivityReport | None:
        """The report last recorded in status.activity (None when there is none), for a
        poll the agent did not answer. It has no user-activity time: the busy-cap rule
        falls back to the user reasons."""
        if activity is None or activity.agent_state is None \
                or activity.agent_state_since is None:
            return None
        return cls(agent_state=activity.agent_state,
                   agent_state_since=activity.agent_state_since,
                   last_activity=activity.last_activity_time,
                   reasons=tuple(activity.reasons))


def agent_state(reported: str) -> AgentState:
    """The agent's state; one this operator does not know is UNKNOWN (not working)."""
    try:
        return AgentState(reported)
    except ValueError:
        return AgentState.UNKNOWN


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
    stopped_by: StoppedBy | None          # set exactly when stop is
    idle: bool
    idle_since: datetime | None
    reason: Reason                        # for the Idle condition
    message: str                          # human text, e.g. "no activity for 31m (timeout 30m)"
    agent_unreachable: bool


def decide(inputs: IdleInputs) -> IdleDecision:
    """Apply the rules of the module docstring."""
    unreachable = inputs.failed_polls >= inputs.unreachable_after
    decision = _unreachable(inputs) if unreachable else _by_activity(inputs)
    age = inputs.now - inputs.started_at
    if inputs.lifetime_max is not None and age >= inputs.lifetime_max:
        return replace(decision, stop=True, stopped_by=StoppedBy.LIFETIME,
                       reason=Reason.LIFETIME_EXCEEDED,
                       message=f"running for {_fmt(age)} "
                               f"(lifetime {_fmt(inputs.lifetime_max)})")
    return decision


def _unreachable(inputs: IdleInputs) -> IdleDecision:
    return IdleDecision(
        stop=False, stopped_by=None, idle=False, idle_since=None,
        reason=Reason.AGENT_UNREACHABLE,
        message=f"agent unreachable for {inputs.failed_polls} polls; "
                "inactivity is not judged until it answers",
        agent_unreachable=True)


def _by_activity(inputs: IdleInputs) -> IdleDecision:
    report, now, timeout = inputs.report, inputs.now, _fmt(inputs.timeout)
    if report is None:
        quiet = now - inputs.started_at
        return _decision(inputs, inputs.started_at, Reason.ACTIVE,
                         f"no report from the agent yet; started {_fmt(quiet)} ago",
                         f"no report from the agent yet; no activity for {_fmt(quiet)} "
                         f"since the start (timeout {timeout})")
    if report.agent_state == AgentState.WORKING:
        busy = now - report.agent_state_since
        cap = inputs.agent_busy_cap
        if busy < cap:
            return _decision(inputs, None, Reason.AGENT_WORKING,
                             f"agent working for {_fmt(busy)} (busy cap {_fmt(cap)})", "")
        runaway = f"agent working for {_fmt(busy)}, past the {_fmt(cap)} busy cap"
        user = _last_user_activity(report)
        start = max(report.agent_state_since + cap, inputs.started_at,
                    *([user] if user is not None else []))
        active = (f"{runaway}; user active {_fmt(now - user)} ago"
                  if user is not None and user == start else runaway)
        return _decision(inputs, start, Reason.BUSY_CAP_EXCEEDED, active,
                         f"{runaway}; no user activity for {_fmt(now - start)} "
                         f"(timeout {timeout})",
                         idle_reason=Reason.BUSY_CAP_EXCEEDED)
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
    return _decision(inputs, start, Reason.ACTIVE, active,
                     f"no activity for {_fmt(now - start)} (timeout {timeout})")


def _decision(inputs: IdleInputs, start: datetime | None, active_reason: Reason,
              active_message: str, idle_message: str, *,
              idle_reason: Reason = Reason.IDLE_TIMEOUT) -> IdleDecision:
    """Decide from the start of the quiet stretch (None: not counting at all)."""
    quiet = None if start is None else inputs.now - start
    stop = quiet is not None and quiet >= inputs.timeout
    idle = quiet is not None and quiet >= min(inputs.min_quiet, inputs.timeout)
    return IdleDecision(
        stop=stop, stopped_by=StoppedBy.INACTIVITY if stop else None,
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


def _fmt(delta: timedelta) -> str:
    return format_duration(max(delta, timedelta(0)))
