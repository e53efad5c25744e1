"""The pre-stop save in the operator: the pure policy (who saves, when time is up, what
an answer means) and the step against the in-memory agent, alone and inside a whole
automatic stop, where the server goes whatever the save did."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from agentspaces.agent_client import AgentError
from agentspaces.api.enums import Phase, PreStopOutcome, Reason, StoppedBy
from agentspaces.api.model import PreStopMode
from agentspaces.pki import AgentCredentials
from agentspaces.reconcile import prestop, prestop_step
from agentspaces.reconcile.outcome import Outcome, Wait
from agentspaces.reconcile.scope import Scope
from agentspaces_vm.contracts import (
    JobState,
    SaveJob,
    SaveMode,
    SaveOutcome,
    SaveRequest,
    SaveResult,
    format_time,
)
from tests.support.scope_builder import SETTINGS, ScopeBuilder

BRANCH = "agentspaces/wip/demo-20261202T100000Z"
SAVED = SaveResult(SaveOutcome.SAVED, f"committed 0123456789ab to {BRANCH} and pushed it",
                   BRANCH, "0123456789ab" * 3 + "0123", pushed=True)


# -- the policy ----------------------------------------------------------------------

def _inputs(mode: PreStopMode = "commit", stopped_by: StoppedBy = StoppedBy.INACTIVITY,
            persistence: bool = True, ready: bool = True) -> prestop.PreStopInputs:
    return prestop.PreStopInputs(mode=mode, stopped_by=stopped_by,
                                 persistence_enabled=persistence, agent_ready=ready)


@pytest.mark.parametrize(("inputs", "expected"), [
    (_inputs(), prestop.Save(SaveMode.COMMIT)),
    (_inputs(stopped_by=StoppedBy.LIFETIME), prestop.Save(SaveMode.COMMIT)),
    (_inputs("commit-and-push"), prestop.Save(SaveMode.COMMIT_AND_PUSH)),
    (_inputs("commit-and-push", persistence=False), prestop.Save(SaveMode.COMMIT_AND_PUSH)),
    (_inputs("none"), "none"),
    (_inputs(stopped_by=StoppedBy.USER), "only idle and lifetime stops"),
    (_inputs("commit-and-push", stopped_by=StoppedBy.USER), "only idle and lifetime stops"),
    (_inputs(ready=False), "never finished starting"),
    (_inputs(persistence=False), "deleted with the server"),
], ids=["idle", "lifetime", "push", "push-without-backups", "none", "user-stop",
        "user-stop-push", "never-ready", "commit-without-backups"])
def test_who_saves(inputs: prestop.PreStopInputs, expected: object) -> None:
    decision = prestop.decide(inputs)
    if isinstance(expected, str):
        assert isinstance(decision, prestop.Skip) and expected in decision.message
    else:
        assert decision == expected


def test_time_is_up_at_the_timeout_plus_the_margin() -> None:
    start = ScopeBuilder().clock()
    timeout = timedelta(seconds=60)
    assert not prestop.overdue(start, start + timeout, timeout)
    assert not prestop.overdue(start, start + timeout + prestop.MARGIN - timedelta(seconds=1),
                               timeout)
    assert prestop.overdue(start, start + timeout + prestop.MARGIN, timeout)


@pytest.mark.parametrize(("result", "outcome", "event"), [
    (SAVED, PreStopOutcome.SAVED, ("Normal", Reason.PRE_STOP_SAVED)),
    (SaveResult(SaveOutcome.SAVED, "committed", BRANCH, "c", push_error="no token"),
     PreStopOutcome.SAVED, ("Warning", Reason.PRE_STOP_SAVED)),
    (SaveResult(SaveOutcome.SAVED, "committed", BRANCH, "c"),
     PreStopOutcome.SAVED, ("Normal", Reason.PRE_STOP_SAVED)),
    (SaveResult(SaveOutcome.NOTHING_TO_SAVE, "clean"), PreStopOutcome.NOTHING_TO_SAVE,
     ("Normal", Reason.PRE_STOP_SKIPPED)),
    (SaveResult(SaveOutcome.NO_REPOSITORY, "none"), PreStopOutcome.SKIPPED,
     ("Normal", Reason.PRE_STOP_SKIPPED)),
    (SaveResult(SaveOutcome.FAILED, "add: boom"), PreStopOutcome.FAILED,
     ("Warning", Reason.PRE_STOP_FAILED)),
    (SaveResult(SaveOutcome.TIMED_OUT, "slow"), PreStopOutcome.TIMED_OUT,
     ("Warning", Reason.PRE_STOP_FAILED)),
], ids=["pushed", "push-failed", "commit", "clean", "no-repo", "failed", "timed-out"])
def test_what_an_answer_means(result: SaveResult, outcome: PreStopOutcome,
                              event: tuple[str, Reason]) -> None:
    verdict = prestop.verdict(result)
    assert verdict.outcome is outcome
    assert (verdict.event_type, verdict.event_reason) == event
    assert verdict.branch == result.branch and verdict.commit == result.commit
    assert result.message in verdict.event_message
    assert ("the stop go on" in verdict.event_message) == (event[0] == "Warning")


# -- the step ------------------------------------------------------------------------

class World:
    """A running workspace whose agent booted; `stop(by)` runs the step once."""

    def __init__(self, mode: PreStopMode = "commit-and-push", timeout: str = "60s",
                 **class_spec: Any) -> None:
        self.b = ScopeBuilder().with_class(**class_spec)
        self.b.with_spec(lifecycle={"preStop": mode, "preStopTimeout": timeout})
        self.b.with_status({"phase": "Running", "startedAt": format_time(self.b.clock()),
                            "server": {"id": 1},
                            "agentEndpoint": {"url": "https://192.0.2.1:9443"},
                            "conditions": [{"type": "AgentReady", "status": "True",
                                            "reason": "AgentReady"}]})

    @property
    def agent(self) -> Any:
        return self.b.agent

    @property
    def record(self) -> dict[str, Any]:
        return dict(self.b.status.get("preStop") or {})

    async def stop(self, by: StoppedBy = StoppedBy.INACTIVITY) -> Outcome | None:
        scope: Scope = self.b.scope()
        scope.agent_credentials = AgentCredentials("cert", "key", "token", "sha", "fp")
        try:
            return await prestop_step.before_stop(scope, by)
        finally:
            self.b.save(scope)


async def test_an_idle_stop_saves_then_lets_the_stop_go_on() -> None:
    w = World()
    outcome = await w.stop()
    assert outcome is not None and outcome.requeue == Wait.PRE_STOP_POLL
    [request] = w.agent.save_requests
    assert request == SaveRequest(save_id="prestop-20261202T100000Z",
                                  mode=SaveMode.COMMIT_AND_PUSH, timeout_seconds=60,
                                  reason="inactivity")
    assert w.record["outcome"] == "Running" and w.record["id"] == request.save_id
    assert w.b.status["stoppingSince"] == format_time(w.b.clock())

    w.b.clock.advance(1)
    assert (await w.stop()).requeue == Wait.PRE_STOP_POLL  # type: ignore[union-attr]
    w.agent.finish_save(SAVED)
    w.b.clock.advance(1)
    assert await w.stop() is None
    assert w.record == {"outcome": "Saved", "message": SAVED.message, "branch": BRANCH,
                        "commit": SAVED.commit, "pushed": True,
                        "time": format_time(w.b.clock()),
                        "startedAt": w.record["startedAt"], "id": request.save_id}
    assert [(e.type, e.reason) for e in w.b.events] == [("Normal", "PreStopSaved")]
    # A later visit of the same stop (the backup still running) saves nothing again.
    w.agent.calls.clear()
    assert await w.stop() is None
    assert w.agent.calls.methods() == [] and len(w.b.events) == 1


async def test_a_slow_save_is_given_up_at_its_timeout_plus_the_margin() -> None:
    w = World(timeout="10s")
    await w.stop()
    w.b.clock.advance(10 + prestop.MARGIN.total_seconds() - 1)
    assert await w.stop() is not None
    w.b.clock.advance(1)
    assert await w.stop() is None
    assert w.record["outcome"] == "TimedOut" and "10s" in w.record["message"]
    assert [(e.type, e.reason) for e in w.b.events] == [("Warning", "PreStopFailed")]


async def test_an_agent_that_stops_answering_holds_the_stop_only_until_the_timeout() -> None:
    w = World(timeout="5s")
    await w.stop()
    w.agent.reachable = False
    w.b.clock.advance(3)
    assert await w.stop() is not None  # maybe a hiccup: ask again
    w.b.clock.advance(5 + prestop.MARGIN.total_seconds())
    assert await w.stop() is None
    assert w.record["outcome"] == "TimedOut" and "no answer" in w.record["message"]


async def test_an_unreachable_agent_fails_the_save_at_once() -> None:
    w = World()
    w.agent.reachable = False
    assert await w.stop() is None
    assert w.record["outcome"] == "Failed" and "cannot reach the agent" in w.record["message"]
    assert w.b.reasons() == ["PreStopFailed"]


@pytest.mark.parametrize(("refusal", "outcome", "reason"), [
    (AgentError(404, {"error": "not found"}), "Skipped", "PreStopSkipped"),
    (AgentError(400, {"error": "bad request", "detail": "mode"}), "Failed", "PreStopFailed"),
], ids=["older-agent", "refused"])
async def test_an_agent_that_cannot_save_does_not_hold_the_stop(
        refusal: AgentError, outcome: str, reason: str) -> None:
    w = World()
    w.agent.save_refusal = refusal
    assert await w.stop() is None
    assert w.record["outcome"] == outcome and w.b.reasons() == [reason]


async def test_a_save_already_running_after_a_lost_record_is_followed() -> None:
    w = World()
    w.agent.save = SaveJob(state=JobState.RUNNING, save_id="prestop-earlier")
    w.agent.save_refusal = AgentError(409, {"error": "save running", "id": "prestop-earlier"})
    assert await w.stop() is not None
    assert w.record["id"] == "prestop-earlier"
    w.agent.finish_save(SaveResult(SaveOutcome.NOTHING_TO_SAVE, "clean"))
    assert await w.stop() is None
    assert w.record["outcome"] == "NothingToSave" and w.b.reasons() == ["PreStopSkipped"]


async def test_a_save_the_agent_lost_is_a_failure_not_a_wait() -> None:
    w = World()
    await w.stop()
    w.agent.save = SaveJob()  # the agent restarted
    assert await w.stop() is None
    assert w.record["outcome"] == "Failed" and "lost" in w.record["message"]


@pytest.mark.parametrize(("mode", "by", "words"), [
    ("none", StoppedBy.INACTIVITY, "none"),
    ("commit-and-push", StoppedBy.USER, "stopped by the user"),
    ("commit", StoppedBy.LIFETIME, "persistence is off"),  # the builder's class: no storage
])
async def test_skipped_saves_ask_the_agent_nothing(mode: PreStopMode, by: StoppedBy,
                                                   words: str) -> None:
    w = World(mode)
    assert await w.stop(by) is None
    assert w.agent.calls.methods() == []
    assert w.record["outcome"] == "Skipped" and words in w.record["message"]
    assert [(e.type, e.reason) for e in w.b.events] == [("Normal", "PreStopSkipped")]


async def test_a_new_stop_saves_again_even_with_an_earlier_record() -> None:
    w = World()
    earlier = format_time(w.b.clock() - timedelta(days=1))
    w.b.with_status({**w.b.status, "preStop": {"outcome": "Saved", "startedAt": earlier,
                                               "time": earlier, "branch": "old"}})
    assert await w.stop() is not None
    assert len(w.agent.save_requests) == 1 and w.record["outcome"] == "Running"


async def test_the_class_sets_the_default_and_the_workspace_overrides_it() -> None:
    w = World(lifecycle={"preStop": "none", "preStopTimeout": "2m"})
    w.b.body["spec"].pop("lifecycle")
    scope = w.b.scope()
    assert (scope.spec.pre_stop, scope.spec.pre_stop_timeout) == ("none",
                                                                  timedelta(minutes=2))
    w.b.with_spec(lifecycle={"preStop": "commit"})
    scope = w.b.scope()
    assert (scope.spec.pre_stop, scope.spec.pre_stop_timeout) == ("commit",
                                                                  timedelta(minutes=2))
    assert ScopeBuilder().scope().spec.pre_stop == "commit"  # the product's default


# -- inside a whole stop -------------------------------------------------------------

async def _running(b: ScopeBuilder) -> None:
    for _ in range(2):
        await b.reconcile()
        b.clock.advance(SETTINGS.boot_poll)
        b.servers.boot()
    b.agent.report_ready(b.clock())
    await b.reconcile()
    assert b.status["phase"] == Phase.RUNNING


@pytest.mark.parametrize("answer", ["saved", "failed", "silent"])
async def test_a_lifetime_stop_deletes_the_server_whatever_the_save_did(
        scope_builder: ScopeBuilder, answer: str) -> None:
    b = scope_builder
    b.with_spec(lifecycle={"preStop": "commit-and-push", "preStopTimeout": "5s"},
                lifetime={"max": "1m"})
    await _running(b)
    b.clock.advance(61)
    outcome = await b.reconcile()
    assert outcome.requeue == Wait.PRE_STOP_POLL and b.status["phase"] == Phase.STOPPING
    assert b.servers.ids() != []  # the save runs on the server, which is still there
    if answer == "saved":
        b.agent.finish_save(SAVED)
    elif answer == "failed":
        b.agent.finish_save(SaveResult(SaveOutcome.FAILED, "add: permission denied"))
    for _ in range(30):
        if b.status.get("phase") == Phase.STOPPED:
            break
        b.clock.advance(1)
        await b.reconcile()
    assert b.status["phase"] == Phase.STOPPED and b.status["stoppedBy"] == "lifetime"
    assert b.servers.ids() == []
    expected = {"saved": "Saved", "failed": "Failed", "silent": "TimedOut"}[answer]
    assert b.status["preStop"]["outcome"] == expected
    reasons = b.reasons()
    assert reasons.index("Stopped") > reasons.index(
        "PreStopSaved" if answer == "saved" else "PreStopFailed")


@pytest.mark.parametrize(("lifecycle", "problem"), [
    ({"preStopTimeout": "6m"}, "longer than 5m"),
    ({"preStopTimeout": "4s"}, "shorter than 5s"),
    ({"preStop": "push"}, "preStop"),
])
def test_the_spec_refuses_what_admission_refuses(lifecycle: dict[str, str],
                                                 problem: str) -> None:
    from agentspaces.api.model import WorkspaceSpecModel

    with pytest.raises(ValueError, match=problem):
        WorkspaceSpecModel.parse({"className": "c", "lifecycle": lifecycle,
                                  "repository": {"url": "https://github.com/o/r"}})
