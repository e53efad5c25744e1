"""The operator's agent watcher: its pure pacing rules, the timer's coverage, and the
watch loop against a scripted long-poll client (real asyncio, short waits)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
import pytest

from agentspaces import agent_watch, handlers
from agentspaces.agent_client import (
    PRIMED_FOR,
    AgentClient,
    AgentClientClosed,
    AgentUnreachable,
    StatusWatchPort,
    WatchedStatus,
)
from agentspaces.agent_watch import (
    MIN_GAP,
    WatchCoverage,
    next_wait,
    pause_before_next,
    watch,
)
from agentspaces.pki import generate
from agentspaces.runtime import Runtime
from agentspaces.settings import OperatorSettings
from agentspaces_vm.contracts import AgentStatus, BootStage
from tests.support.fakes import FakeAgent, FakeKube

DOC = AgentStatus(version="1", boot_stage=BootStage.READY)
SETTINGS = OperatorSettings(namespace="ops", poll_interval=30, inventory_interval=600,
                            boot_poll=5, agent_concurrency=4, unreachable_after=3,
                            backup_part_mib=16, backup_url_ttl=3600, agent_timeout=5)
HOST = "demo-default-1a2b3c.example.com"


# --- pure rules ---------------------------------------------------------------------------

def test_the_wait_is_the_interval_or_the_sooner_requeue() -> None:
    assert next_wait(30, None) == 30
    assert next_wait(30, 5) == 5
    assert next_wait(30, 120) == 30
    assert next_wait(30, 0) == agent_watch.MIN_WAIT


def test_an_unchanged_answer_holds_the_next_poll_to_the_wait() -> None:
    # An agent that answered at once without news is asked again only after `wait`.
    assert pause_before_next(changed=False, elapsed=0.1, wait=30) == pytest.approx(29.9)
    assert pause_before_next(changed=False, elapsed=30.2, wait=30) == 0
    # A change is followed at once, but never more often than MIN_GAP.
    assert pause_before_next(changed=True, elapsed=5, wait=30) == 0
    assert pause_before_next(changed=True, elapsed=0.25, wait=30) == pytest.approx(
        MIN_GAP - 0.25)


def test_coverage_lasts_an_interval_plus_slack() -> None:
    now = [100.0]
    coverage = WatchCoverage(interval=30, slack=5, monotonic=lambda: now[0])
    assert not coverage.covers("u")
    coverage.reconciled("u")
    now[0] += 34.9
    assert coverage.covers("u")
    now[0] += 0.2
    assert not coverage.covers("u")
    coverage.reconciled("u")
    coverage.end("u")
    assert not coverage.covers("u")


# --- the loop -------------------------------------------------------------------------------

@dataclass
class Script:
    """A long-poll client whose answers a test scripts: each entry is a WatchedStatus,
    an exception to raise, or None to hold the request until cancelled."""

    answers: list[WatchedStatus | Exception | None]
    calls: list[tuple[str | None, float]] = field(default_factory=list)
    primed: list[AgentStatus] = field(default_factory=list)
    cancelled: int = 0
    last_answer: float = 0.0

    async def watch_status(self, etag: str | None, wait: float) -> WatchedStatus:
        self.calls.append((etag, wait))
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        if answer is None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        assert isinstance(answer, WatchedStatus)
        return answer

    def prime(self, status: AgentStatus) -> None:
        self.primed.append(status)


def _answer(etag: str | None, state: str = "ready", waited: bool = True) -> WatchedStatus:
    return WatchedStatus(DOC if state == "ready" else
                         AgentStatus(version="1", boot_stage=BootStage(state)), etag, waited)


class Reconciles:
    def __init__(self, requeue: float | None = None, stop_after: int | None = None,
                 stopped: asyncio.Event | None = None) -> None:
        self.count = 0
        self.requeue = requeue
        self.stop_after, self.stopped = stop_after, stopped

    async def __call__(self) -> float | None:
        self.count += 1
        if self.stop_after is not None and self.count >= self.stop_after:
            assert self.stopped is not None
            self.stopped.set()
        return self.requeue


def _coverage() -> WatchCoverage:
    return WatchCoverage(interval=30, slack=5)


async def _run(client: Callable[[], StatusWatchPort | None], reconcile: Reconciles,
               stopped: asyncio.Event, coverage: WatchCoverage | None = None,
               bound: float = 30) -> asyncio.Task[None]:
    return asyncio.create_task(watch("uid-1", agent=client, reconcile=reconcile,
                                     coverage=coverage or _coverage(), bound=bound,
                                     stopped=stopped))


async def test_each_answer_is_primed_and_reconciled_and_its_etag_sent_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_watch, "MIN_GAP", 0.0)
    client = Script([_answer("e1"), _answer("e2"), None])
    stopped = asyncio.Event()
    coverage = _coverage()
    reconcile = Reconciles(requeue=5)
    task = await _run(lambda: client, reconcile, stopped, coverage)
    await asyncio.sleep(0.2)
    assert reconcile.count == 2 and client.primed == [DOC, DOC]
    # First without an ETag (answered at once), then each answer's ETag; the requeue
    # of 5 s shortens the wait from the 30 s interval.
    assert client.calls == [(None, 30), ("e1", 5), ("e2", 5)]
    assert coverage.covers("uid-1")
    stopped.set()
    await asyncio.wait_for(task, 2)
    assert client.cancelled == 1  # the held long-poll was cancelled, not left open
    assert not coverage.covers("uid-1")  # the timer takes over at once


async def test_an_agent_without_long_polls_is_asked_once_per_wait() -> None:
    # No ETag, no wait honoured (the VM's loader, an old agent): every answer looks the
    # same, so the watcher must pace itself instead of looping.
    client = Script([_answer(None, waited=False) for _ in range(100)])
    stopped = asyncio.Event()
    reconcile = Reconciles()
    task = await _run(lambda: client, reconcile, stopped, bound=0.3)
    await asyncio.sleep(1.0)
    stopped.set()
    await asyncio.wait_for(task, 2)
    assert 3 <= len(client.calls) <= 5 and reconcile.count == len(client.calls)


async def test_changes_in_a_loop_cost_at_most_one_reconcile_per_gap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_watch, "MIN_GAP", 0.2)
    client = Script([_answer(f"e{n}") for n in range(100)])
    stopped = asyncio.Event()
    reconcile = Reconciles()
    task = await _run(lambda: client, reconcile, stopped)
    await asyncio.sleep(1.0)
    stopped.set()
    await asyncio.wait_for(task, 2)
    assert 4 <= reconcile.count <= 6


async def test_a_replaced_client_is_picked_up_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_watch, "MIN_GAP", 0.0)
    old = Script([_answer("e1"), AgentClientClosed("closed")])
    new = Script([_answer("n1"), None])
    current: list[Script] = [old]
    stopped = asyncio.Event()
    reconcile = Reconciles()

    def client() -> Script:
        if len(old.calls) == 2:
            current[0] = new
        return current[0]

    task = await _run(client, reconcile, stopped)
    await asyncio.sleep(0.2)
    assert new.calls[0] == (None, 30)  # a new server: start without the old ETag
    assert reconcile.count == 2
    stopped.set()
    await asyncio.wait_for(task, 2)


async def test_an_unreachable_agent_hands_polling_back_to_the_timer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_watch, "MIN_GAP", 0.0)
    client = Script([_answer("e1"), AgentUnreachable("refused"), _answer("e1")])
    stopped = asyncio.Event()
    coverage = _coverage()
    reconcile = Reconciles()
    task = await _run(lambda: client, reconcile, stopped, coverage, bound=0.3)
    await asyncio.sleep(0.15)
    assert not coverage.covers("uid-1") and reconcile.count == 1  # backing off
    await asyncio.sleep(0.6)
    assert reconcile.count == 2 and coverage.covers("uid-1")
    assert client.calls[2][0] is None  # after a failure, start over without an ETag
    stopped.set()
    await asyncio.wait_for(task, 2)


async def test_after_a_failure_an_answer_to_a_reconcile_brings_the_watch_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # An agent still booting refuses the long-poll; the watcher waits (up to the poll
    # interval) until the normal reconcile's poll gets an answer, then watches again.
    monkeypatch.setattr(agent_watch, "RECHECK", 0.05)
    monkeypatch.setattr(agent_watch, "MIN_GAP", 0.0)
    client = Script([AgentUnreachable("refused"), _answer("e1"), None])
    stopped = asyncio.Event()
    reconcile = Reconciles()
    task = await _run(lambda: client, reconcile, stopped)
    await asyncio.sleep(0.3)
    assert len(client.calls) == 1 and reconcile.count == 0  # waiting, not retrying
    client.last_answer = asyncio.get_running_loop().time()  # the timer's GET was answered
    await asyncio.sleep(0.3)
    assert len(client.calls) == 3 and reconcile.count == 1
    stopped.set()
    await asyncio.wait_for(task, 2)


async def test_a_failed_reconcile_does_not_end_the_watcher() -> None:
    client = Script([_answer("e1"), _answer("e2"), None])
    stopped = asyncio.Event()
    coverage = _coverage()
    outcomes: list[object] = [RuntimeError("apiserver gone"), None]

    async def reconcile() -> float | None:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return None

    task = asyncio.create_task(watch("uid-1", agent=lambda: client, reconcile=reconcile,
                                     coverage=coverage, bound=0.3, stopped=stopped))
    await asyncio.sleep(0.15)
    assert not coverage.covers("uid-1")
    await asyncio.sleep(0.5)
    assert outcomes == [] and coverage.covers("uid-1")
    stopped.set()
    await asyncio.wait_for(task, 2)


async def test_without_a_client_the_watcher_waits_for_one() -> None:
    stopped = asyncio.Event()
    reconcile = Reconciles()
    task = await _run(lambda: None, reconcile, stopped)
    await asyncio.sleep(0.1)
    stopped.set()
    await asyncio.wait_for(task, 2)  # ends promptly, without having reconciled
    assert reconcile.count == 0


async def test_stopping_during_a_reconcile_ends_after_it() -> None:
    client = Script([_answer("e1"), None])
    stopped = asyncio.Event()
    reconcile = Reconciles(stop_after=1, stopped=stopped)
    task = await _run(lambda: client, reconcile, stopped)
    await asyncio.wait_for(task, 2)
    assert reconcile.count == 1 and len(client.calls) == 1


# --- the client's part, the runtime and the timer -------------------------------------------

def _client(now: list[float]) -> AgentClient:
    creds = generate(HOST, datetime.now(UTC))
    # Port 1 on loopback: nothing listens, so any real request fails fast.
    return AgentClient("https://127.0.0.1:1", creds.token, creds.cert_pem, timeout=2,
                       monotonic=lambda: now[0])


async def test_a_primed_document_answers_the_next_status_call_once() -> None:
    now = [10.0]
    client = _client(now)
    try:
        client.prime(DOC)
        assert await client.agent_status() is DOC  # no request made
        with pytest.raises(AgentUnreachable):
            await client.agent_status()  # used up: this one asks the agent
        client.prime(DOC)
        now[0] += PRIMED_FOR + 0.1
        with pytest.raises(AgentUnreachable):
            await client.agent_status()  # too old to stand in for a poll
    finally:
        await client.aclose()


async def test_closing_a_client_ends_its_long_poll() -> None:
    import socket

    # A listener that accepts and never answers: the long-poll stays held.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        creds = generate(HOST, datetime.now(UTC))
        client = AgentClient(f"https://127.0.0.1:{port}", creds.token, creds.cert_pem,
                             timeout=30)
        held = asyncio.create_task(client.watch_status("e1", 30))
        await asyncio.sleep(0.2)
        assert not held.done()
        await asyncio.wait_for(client.aclose(), 5)
        with pytest.raises(AgentClientClosed):
            await asyncio.wait_for(held, 5)
        with pytest.raises(AgentClientClosed):
            await client.watch_status("e1", 30)


async def test_the_runtime_offers_only_clients_that_can_long_poll() -> None:
    rt = Runtime(SETTINGS, FakeKube(), agent_factory=lambda *a: FakeAgent())
    rt.agent_client("uid-1", "https://192.0.2.1:9443", "t", "pem")
    assert rt.watchable_agent("uid-1") is None  # the in-memory agent has no long-poll
    creds = generate(HOST, datetime.now(UTC))
    real = Runtime(SETTINGS, FakeKube())
    client = real.agent_client("uid-2", "https://192.0.2.1:9443", creds.token, creds.cert_pem)
    assert real.watchable_agent("uid-2") is client
    assert real.watchable_agent("uid-3") is None
    real.watch_coverage.reconciled("uid-2")
    real.forget("uid-2")
    assert not real.watch_coverage.covers("uid-2")
    await real.close_stale_clients()
    await real.aclose()


async def test_the_timer_skips_a_workspace_its_watcher_keeps_reconciled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[Any] = []

    async def fake_run(body: Any, memo: Any, step: Any, *, fresh_inputs: bool) -> None:
        assert not fresh_inputs  # a poll reuses the class and its Secrets
        ran.append(body["metadata"]["uid"])

    monkeypatch.setattr(handlers, "_run", fake_run)
    memo = kopf.Memo()
    memo.runtime = Runtime(SETTINGS, FakeKube())
    body = kopf.Body({"metadata": {"name": "w", "namespace": "n", "uid": "uid-1",
                                   "generation": 1}})
    await handlers.workspace_tick(body=body, memo=memo)
    memo.runtime.watch_coverage.reconciled("uid-1")
    await handlers.workspace_tick(body=body, memo=memo)
    assert ran == ["uid-1"]


def test_the_watcher_runs_only_while_status_names_an_agent() -> None:
    def body(status: dict[str, Any], deleting: bool = False) -> kopf.Body:
        meta: dict[str, Any] = {"name": "w", "uid": "u"}
        if deleting:
            meta["deletionTimestamp"] = "2026-12-02T10:00:00Z"
        return kopf.Body({"metadata": meta, "status": status})

    endpoint = {"agentEndpoint": {"url": "https://192.0.2.1:9443"}}
    assert handlers._has_agent(body(endpoint))
    assert not handlers._has_agent(body({}))
    assert not handlers._has_agent(body({"agentEndpoint": None}))
    assert not handlers._has_agent(body(endpoint, deleting=True))
