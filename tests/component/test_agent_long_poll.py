"""Long-polls of GET /v1/status against the real agent process, through the operator's
AgentClient: a hook ends a held poll at once, an unchanged one ends at its bound, held
polls never take the slots other calls need, and neither a closed client nor a stopping
agent leaves one behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentspaces.agent_client import AgentClient, AgentClientClosed, AgentUnreachable
from tests.component.agent_harness import AgentProcess, running_agent

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    with running_agent(tmp_path) as proc:
        yield proc


def _client(agent: AgentProcess) -> AgentClient:
    return AgentClient(agent.base_url, agent.creds.token, agent.creds.cert_pem, timeout=5)


def _hook(agent: AgentProcess, event: str, session: str = "s1") -> None:
    token = (agent.state / "hook-token").read_text().strip()
    response = httpx.post(f"{agent.local_url}/hooks",
                          json={"hook_event_name": event, "session_id": session},
                          headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert response.status_code == 204


async def _hook_async(agent: AgentProcess, event: str) -> float:
    """Post the hook from a thread; when it was answered (monotonic)."""
    await asyncio.to_thread(_hook, agent, event)
    return time.monotonic()


async def test_a_hook_ends_a_held_long_poll_at_once(agent: AgentProcess) -> None:
    async with _client(agent) as client:
        first = await client.watch_status(None, 30)  # no ETag yet: answered at once
        assert first.etag and first.waited
        assert first.status.activity is not None
        assert first.status.activity.agent_state == "absent"
        lags = []
        etag = first.etag
        for event, state in (("UserPromptSubmit", "working"), ("Stop", "waiting"),
                             ("PreToolUse", "working")):
            held = asyncio.create_task(client.watch_status(etag, 30))
            await asyncio.sleep(0.3)
            assert not held.done()
            posted = await _hook_async(agent, event)
            answer = await asyncio.wait_for(held, 5)
            lags.append(time.monotonic() - posted)
            assert answer.status.activity is not None
            assert answer.status.activity.agent_state == state
            assert answer.etag != etag
            etag = answer.etag
        assert max(lags) < 0.5, lags


async def test_an_unchanged_long_poll_ends_at_its_bound(agent: AgentProcess) -> None:
    async with _client(agent) as client:
        first = await client.watch_status(None, 30)
        started = time.monotonic()
        again = await client.watch_status(first.etag, 1.5)
        took = time.monotonic() - started
        assert again.etag == first.etag and again.waited
        assert 1.4 <= took < 3.0
        # A hook that changes nothing the operator acts on does not end it early.
        _hook(agent, "SessionStart")
        waiting = (await client.watch_status(None, 1)).etag
        started = time.monotonic()
        held = asyncio.create_task(client.watch_status(waiting, 1.5))
        await asyncio.sleep(0.3)
        await _hook_async(agent, "SessionStart")
        assert (await held).etag == waiting and time.monotonic() - started >= 1.4


async def test_held_long_polls_never_take_the_slots_other_calls_need(
        agent: AgentProcess) -> None:
    clients = [_client(agent) for _ in range(4)]
    try:
        etag = (await clients[0].watch_status(None, 1)).etag
        held = [asyncio.create_task(c.watch_status(etag, 60)) for c in clients[:2]]
        await asyncio.sleep(0.5)
        assert not any(h.done() for h in held)
        # Over the agent's per-address long-poll cap: answered at once, not held.
        started = time.monotonic()
        third = await clients[2].watch_status(etag, 60)
        assert not third.waited and time.monotonic() - started < 2
        # Plain calls still get through (the connection caps are not used up).
        await clients[3].agent_status()
        await clients[3].put_config([])
        # A change ends both held polls at once.
        await _hook_async(agent, "UserPromptSubmit")
        answers = await asyncio.wait_for(asyncio.gather(*held), 5)
        assert all(a.etag != etag for a in answers)
    finally:
        for client in clients:
            await client.aclose()


async def test_a_closed_client_ends_its_poll_and_frees_the_agents_slot(
        agent: AgentProcess) -> None:
    first, second = _client(agent), _client(agent)
    etag = (await first.watch_status(None, 1)).etag
    held = [asyncio.create_task(c.watch_status(etag, 60)) for c in (first, second)]
    await asyncio.sleep(0.5)
    await first.aclose()
    await second.aclose()
    for task in held:
        with pytest.raises(AgentClientClosed):
            await asyncio.wait_for(task, 5)
    # The agent noticed both hang-ups within its recheck: both slots are free again.
    await asyncio.sleep(1.5)
    fresh = [_client(agent), _client(agent)]
    try:
        polls = [asyncio.create_task(c.watch_status(etag, 1)) for c in fresh]
        assert all(a.waited for a in await asyncio.wait_for(asyncio.gather(*polls), 10))
    finally:
        for client in fresh:
            await client.aclose()


async def test_a_stopping_agent_answers_its_held_polls(agent: AgentProcess) -> None:
    async with _client(agent) as client:
        etag = (await client.watch_status(None, 1)).etag
        held = asyncio.create_task(client.watch_status(etag, 60))
        await asyncio.sleep(0.5)
        assert agent.proc is not None
        started = time.monotonic()
        os.kill(agent.proc.pid, signal.SIGTERM)
        with contextlib.suppress(AgentUnreachable):  # answered or cut, not held 60 s
            await asyncio.wait_for(held, 10)
        assert time.monotonic() - started < 5
        assert await asyncio.to_thread(agent.proc.wait, 10) == 0
