"""Long waits of a Workspace's reconcile, kept by the poll timer instead of Kopf's retry.

A handler that raises `kopf.TemporaryError(delay=...)` stays pending until the delay is
over, and Kopf runs no later change of that object before then: a user who stops a
workspace whose start was refused (a tampered backup, a taken name: waits of 60 s to
5 min) would wait out the refusal first. So a change handler raises only for short
waits (at most a poll interval, the steps of a create or a backup); a longer one is
recorded here against the spec's generation and the handler returns. The timer skips
the workspace until the wait is over, and a newer generation (any spec change) runs at
once, through the change handler as usual.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class RequeueHolds:
    monotonic: Callable[[], float] = time.monotonic
    _holds: dict[str, tuple[int | None, float]] = field(default_factory=dict)

    def hold(self, uid: str, generation: int | None, seconds: float) -> None:
        self._holds[uid] = (generation, self.monotonic() + seconds)

    def release(self, uid: str) -> None:
        self._holds.pop(uid, None)

    def holding(self, uid: str, generation: int | None) -> bool:
        """True while a wait recorded for this same generation is not over."""
        held = self._holds.get(uid)
        if held is None:
            return False
        if held[0] != generation or self.monotonic() >= held[1]:
            del self._holds[uid]
            return False
        return True
