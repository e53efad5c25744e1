"""Status that follows the agent: one long-poll per workspace that has an agent.

With only the poll timer, a hook shows in status up to a poll interval late. So while a
Workspace's status names an agent endpoint, a watcher (a Kopf daemon, handlers.py) keeps
one `GET /v1/status` long-poll open on the workspace's pinned client. The agent answers
as soon as its document's ETag changes (a hook, a boot stage, a backup ending) or when
the wait ends. Either way the watcher runs the normal level-based reconcile and hands it
the document it just received (`prime`), so the reconcile asks for nothing again. While
a watcher reconciles at least once per poll interval the timer skips the workspace: at
steady state that is one agent request per workspace per interval, and a hook reaches
status within a second.

The watcher is only a faster trigger for the same reconcile; when it fails, the timer
takes over. It ends when its daemon is stopped (the endpoint left status, the Workspace
is being deleted, the operator exits); when the runtime replaces the workspace's client
(a new server or credentials), the old client's close ends the long-poll and the watcher
continues on the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from agentspaces.agent_client import (
    AgentCertificateMismatch,
    AgentClientClosed,
    AgentError,
    AgentUnreachable,
    StatusWatchPort,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_WAIT = 1.0
"""The shortest wait a long-poll asks for, even when a reconcile wants to run sooner."""
MIN_GAP = 1.0
"""Long-polls start at least this far apart, also after a change: a container firing
hooks in a loop costs at most one reconcile a second."""
RECHECK = 1.0
"""How often a waiting watcher looks (in memory) for a client, or for an answer the
agent gave someone else: right after an operator restart there is no client until a
reconcile makes one; after a failed long-poll (an agent still booting) the watcher
retries as soon as the normal reconcile got an answer, else after the poll interval."""


class Stopping(Protocol):
    """Kopf's daemon `stopped` flag (or an asyncio.Event in tests)."""

    def is_set(self) -> bool: ...

    def wait(self) -> Awaitable[object]: ...


@dataclass
class WatchCoverage:
    """Which workspaces a watcher keeps reconciled, so the poll timer can skip them.

    A workspace is covered while its watcher's last reconcile is younger than the poll
    interval plus `slack` (the long-poll's round trip and the reconcile itself).
    """

    interval: float
    slack: float
    monotonic: Callable[[], float] = time.monotonic
    _last: dict[str, float] = field(default_factory=dict)

    def reconciled(self, uid: str) -> None:
        self._last[uid] = self.monotonic()

    def end(self, uid: str) -> None:
        self._last.pop(uid, None)

    def covers(self, uid: str) -> bool:
        last = self._last.get(uid)
        return last is not None and self.monotonic() - last < self.interval + self.slack


def next_wait(bound: float, requeue: float | None) -> float:
    """The wait to ask for: the poll interval, or less when the reconcile asked to run
    again sooner (a server or agent booting, a backup running)."""
    return bound if requeue is None else max(MIN_WAIT, min(bound, requeue))


def pause_before_next(changed: bool, elapsed: float, wait: float) -> float:
    """How long to hold off the next long-poll, `elapsed` seconds after this one started.

    After a change, only up to MIN_GAP. Otherwise the next one starts no sooner than
    `wait` after this one did, so an agent that answers at once (one without long-polls,
    such as the VM's loader; its long-poll slots taken; shutting down) is polled once per
    interval, never in a tight loop.
    """
    return max(0.0, (MIN_GAP if changed else wait) - elapsed)


class _Stopped(Exception):
    pass


async def _until_stopped(awaitable: Awaitable[T], stopped: Stopping) -> T:
    """`awaitable`'s result, or _Stopped (with `awaitable` cancelled) once `stopped`."""
    work = asyncio.ensure_future(awaitable)
    stop = asyncio.ensure_future(stopped.wait())
    try:
        done, _ = await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
    if work not in done:
        raise _Stopped
    return work.result()


async def _sleep(stopped: Stopping, seconds: float) -> None:
    if seconds > 0 and not stopped.is_set():
        with contextlib.suppress(TimeoutError):  # not wait_for: it can swallow a cancel
            async with asyncio.timeout(seconds):
                await stopped.wait()


async def _sleep_unless(stopped: Stopping, seconds: float, wake: Callable[[], bool],
                        monotonic: Callable[[], float]) -> None:
    """Sleep `seconds`, ending early once `wake()` (checked every RECHECK)."""
    deadline = monotonic() + seconds
    while not stopped.is_set() and not wake():
        left = deadline - monotonic()
        if left <= 0:
            return
        await _sleep(stopped, min(RECHECK, left))


def _recovered(client: StatusWatchPort, since: float,
               agent: Callable[[], StatusWatchPort | None]) -> Callable[[], bool]:
    """True once the agent answered a request on `client` after `since` (a reconcile's
    poll), or the workspace has another client."""
    return lambda: client.last_answer > since or agent() is not client


async def watch(uid: str, *, agent: Callable[[], StatusWatchPort | None],
                reconcile: Callable[[], Awaitable[float | None]], coverage: WatchCoverage,
                bound: float, stopped: Stopping,
                monotonic: Callable[[], float] = time.monotonic) -> None:
    """Hold one long-poll on the workspace's agent and reconcile on every answer, until
    `stopped`. `agent()` is the workspace's current client (None before a reconcile made
    one); `reconcile()` runs the normal reconcile and returns its requeue delay, if any;
    `bound` is the poll interval."""
    etag: str | None = None
    wait = bound
    try:
        while not stopped.is_set():
            client = agent()
            if client is None:
                coverage.end(uid)
                await _sleep(stopped, RECHECK)
                continue
            started = monotonic()
            try:
                answer = await _until_stopped(client.watch_status(etag, wait), stopped)
            except _Stopped:
                return
            except AgentClientClosed:
                etag = None  # replaced: the next round takes the new client at once
                continue
            except (AgentUnreachable, AgentError, AgentCertificateMismatch) as err:
                # The timer polls meanwhile, and records the failure in status.
                log.info("agent watch for %s: %s", uid, err)
                coverage.end(uid)
                etag = None
                await _sleep_unless(stopped, bound, _recovered(client, monotonic(), agent),
                                    monotonic)
                continue
            if stopped.is_set():
                return
            changed = answer.etag != etag
            etag = answer.etag
            client.prime(answer.status)
            try:
                requeue = await reconcile()
            except Exception:
                log.exception("reconcile after an agent status change failed (%s)", uid)
                coverage.end(uid)
                await _sleep(stopped, bound)
                continue
            coverage.reconciled(uid)
            wait = next_wait(bound, requeue)
            await _sleep(stopped, pause_before_next(changed, monotonic() - started, wait))
    finally:
        coverage.end(uid)
