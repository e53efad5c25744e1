"""Clocks a test moves by hand (emulator rate-limit windows, the runtime's wall time)."""

from __future__ import annotations

from datetime import datetime, timedelta


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class WallClock:
    """Wall time (UTC) and a monotonic reading that a test moves together, by hand: the
    runtime's `clock` and `monotonic` in unit tests."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.elapsed = 0.0

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.elapsed

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.elapsed += seconds
