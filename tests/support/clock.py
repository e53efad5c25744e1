"""A monotonic clock a test moves by hand (emulator rate-limit windows and the like)."""

from __future__ import annotations


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
