"""Background workers of the Hetzner emulator: a timer thread that drives simulated state
transitions, and a hook thread that runs user callbacks in order, outside any lock."""

from __future__ import annotations

import copy
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Scheduler:
    """Runs callables after a delay on one daemon thread, in due-time order."""

    def __init__(self, name: str = "hetzner-emulator-timers") -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._seq), fn))
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    wait = (self._heap[0][0] - time.monotonic()) if self._heap else None
                    if wait is not None and wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # a failed transition must not stop the clock
                log.exception("hetzner emulator: scheduled transition failed")


Callback = Callable[[dict[str, Any]], None]


class HookDispatcher:
    """Delivers (event, server snapshot) to registered callbacks on one thread, in the
    order the events happened. A raising callback is logged and the next one still runs.
    The image events carry the image instead (its `created_from` names the server)."""

    EVENTS = ("created", "deleted", "status", "image_created", "image_deleted")

    def __init__(self) -> None:
        self._hooks: dict[str, list[Callback]] = {e: [] for e in self.EVENTS}
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="hetzner-emulator-hooks",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def register(self, event: str, callback: Callback) -> Callback:
        with self._cond:
            self._hooks[event].append(callback)
        return callback

    def unregister(self, event: str, callback: Callback) -> None:
        with self._cond:
            if callback in self._hooks[event]:
                self._hooks[event].remove(callback)

    def emit(self, event: str, server: dict[str, Any]) -> None:
        with self._cond:
            if self._hooks[event] and not self._stopped:
                self._queue.append((event, server))
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """True once every emitted event has been delivered (False on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the callback in progress; undelivered events are dropped."""
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                event, server = self._queue.popleft()
                callbacks = list(self._hooks[event])
                self._busy = True
            for callback in callbacks:
                try:
                    callback(copy.deepcopy(server))
                except Exception:
                    log.exception("hetzner emulator: %s hook %r failed for server %s",
                                  event, callback, server.get("id"))
            with self._cond:
                self._busy = False
                self._cond.notify_all()
