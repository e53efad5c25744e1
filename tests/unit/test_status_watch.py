"""The agent's long-polls of GET /v1/status: the ETag, the request headers, and
StatusWatch's waiting, waking, caps and ending (real threads, short waits)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from agentspaces_vm.contracts import Activity, AgentStatus, BootStage, JobState
from agentspaces_vm.status import (
    MAX_WAIT_SECONDS,
    Answer,
    StatusWatch,
    change_key,
    requested_etag,
    requested_wait,
)

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
DOC = AgentStatus(version="1", boot_stage=BootStage.READY,
                  activity=Activity(agent_state="waiting", agent_state_since=T0,
                                    last_activity_time=T0, reasons=("claude-hook:Stop",),
                                    sessions={"claude": 1}))


def _activity(doc: AgentStatus, **changes: object) -> AgentStatus:
    assert doc.activity is not None
    return replace(doc, activity=replace(doc.activity, **changes))  # type: ignore[arg-type]


def test_the_etag_follows_what_the_operator_acts_on() -> None:
    key = change_key(DOC)
    assert change_key(replace(DOC)) == key
    assert change_key(_activity(DOC, agent_state="working")) != key
    assert change_key(_activity(DOC, agent_state_since=T0 + timedelta(seconds=1))) != key
    assert change_key(replace(DOC, boot_stage=BootStage.FAILED)) != key
    assert change_key(replace(DOC, secrets_version="v2")) != key
    assert change_key(replace(DOC, backup_state=JobState.SUCCEEDED)) != key
    assert change_key(replace(DOC, ports=(3000,))) != key
    assert change_key(replace(DOC, activity=None)) != key


def test_the_etag_ignores_what_advances_on_its_own() -> None:
    key = change_key(DOC)
    later = T0 + timedelta(minutes=3)
    assert change_key(_activity(DOC, last_activity_time=later,
                                last_user_activity_time=later, reasons=(),
                                sessions={"claude": 1, "httpInFlight": 2})) == key


@pytest.mark.parametrize(("header", "wait"), [
    (None, None), ("", None), ("wait=25", 25.0), ("respond-async, wait=2.5", 2.5),
    ("handling=lenient; wait=10", 10.0), ("WAIT = 7", 7.0), ("wait=abc", None),
    ("wait=0", None), ("wait=-3", None), ("wait=nan", None), ("wait=1e9", MAX_WAIT_SECONDS),
    ("return=minimal", None),
])
def test_the_wait_preference(header: str | None, wait: float | None) -> None:
    assert requested_wait(header) == wait


@pytest.mark.parametrize(("header", "etag"), [
    (None, None), ("", None), ('"abc"', "abc"), ('W/"abc"', "abc"), ('"a", "b"', "a"),
    ("abc", "abc"), ('""', None),
])
def test_the_entity_tag(header: str | None, etag: str | None) -> None:
    assert requested_etag(header) == etag


class Agent:
    """The document a StatusWatch builds, changed by the test (counted builds)."""

    def __init__(self) -> None:
        self.doc = DOC
        self.builds = 0

    def build(self) -> AgentStatus:
        self.builds += 1
        return self.doc


def _in_thread(watch: StatusWatch, etag: str | None, wait: float, address: str = "10.0.0.1",
               gone: threading.Event | None = None) -> tuple[threading.Thread, list[Answer],
                                                             list[float]]:
    answers: list[Answer] = []
    took: list[float] = []

    def run() -> None:
        started = time.monotonic()
        answers.append(watch.answer(etag, wait, address,
                                    gone.is_set if gone is not None else lambda: False))
        took.append(time.monotonic() - started)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, answers, took


def test_a_plain_get_and_a_stale_etag_are_answered_at_once() -> None:
    agent = Agent()
    watch = StatusWatch(agent.build)
    plain = watch.answer(None, None, "10.0.0.1")
    assert plain == Answer(DOC, change_key(DOC), waited=False)
    started = time.monotonic()
    stale = watch.answer("not-the-key", 30, "10.0.0.1")
    assert time.monotonic() - started < 0.5
    assert stale.waited and stale.etag == change_key(DOC)


def test_a_long_poll_returns_at_its_bound_when_nothing_changed() -> None:
    watch = StatusWatch(Agent().build, recheck=0.1)
    thread, answers, took = _in_thread(watch, change_key(DOC), 0.4)
    thread.join(5)
    assert answers[0].etag == change_key(DOC) and answers[0].waited
    assert 0.35 <= took[0] < 2.0


def test_changed_wakes_a_held_long_poll_at_once() -> None:
    agent = Agent()
    watch = StatusWatch(agent.build, recheck=30)  # only the notification can wake it
    thread, answers, took = _in_thread(watch, change_key(DOC), 20)
    time.sleep(0.2)
    agent.doc = _activity(DOC, agent_state="working")
    watch.changed()
    thread.join(5)
    assert not thread.is_alive()
    assert answers[0].status.activity is not None
    assert answers[0].status.activity.agent_state == "working"
    assert took[0] < 2.0


def test_an_unannounced_change_is_seen_at_the_next_recheck() -> None:
    agent = Agent()
    watch = StatusWatch(agent.build, recheck=0.1)
    thread, answers, took = _in_thread(watch, change_key(DOC), 20)
    time.sleep(0.2)
    agent.doc = replace(DOC, backup_state=JobState.SUCCEEDED)
    thread.join(5)
    assert answers[0].status.backup_state is JobState.SUCCEEDED
    assert took[0] < 2.0


def test_a_notification_without_a_change_keeps_waiting() -> None:
    agent = Agent()
    watch = StatusWatch(agent.build, recheck=30)
    thread, answers, _ = _in_thread(watch, change_key(DOC), 0.6)
    time.sleep(0.1)
    watch.changed()  # e.g. a hook that did not change the agent's state
    time.sleep(0.2)
    assert thread.is_alive() and agent.builds >= 2
    thread.join(5)
    assert answers[0].etag == change_key(DOC)


def test_long_polls_are_capped_per_address_and_in_total() -> None:
    agent = Agent()
    watch = StatusWatch(agent.build, max_waiters=3, per_address=2, recheck=30)
    key = change_key(DOC)
    held = [_in_thread(watch, key, 20, "10.0.0.1"), _in_thread(watch, key, 20, "10.0.0.1")]
    time.sleep(0.2)
    started = time.monotonic()
    third = watch.answer(key, 20, "10.0.0.1")
    assert not third.waited and time.monotonic() - started < 0.5  # answered, not held
    held.append(_in_thread(watch, key, 20, "10.0.0.2"))
    time.sleep(0.2)
    assert not watch.answer(key, 20, "10.0.0.3").waited  # the total cap
    watch.close()
    for thread, answers, took in held:
        thread.join(5)
        assert answers[0].waited and took[0] < 2.0
    # Closed: every slot was given back, and nothing is held any more.
    assert watch.answer(key, 20, "10.0.0.1").waited


def test_a_client_that_hung_up_frees_its_slot_within_a_recheck() -> None:
    watch = StatusWatch(Agent().build, per_address=1, recheck=0.1)
    gone = threading.Event()
    key = change_key(DOC)
    thread, _, took = _in_thread(watch, key, 20, gone=gone)
    time.sleep(0.2)
    assert not watch.answer(key, 0.2, "10.0.0.1").waited  # its address's one slot is held
    gone.set()
    thread.join(5)
    assert took[0] < 2.0
    assert watch.answer(key, 0.2, "10.0.0.1").waited
