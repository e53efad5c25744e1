"""A long wait is kept for the timer against the spec's generation: the same spec waits
it out, any newer spec runs at once."""

from __future__ import annotations

from agentspaces.requeue_holds import RequeueHolds


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_same_generation_waits_until_the_wait_is_over() -> None:
    clock = Clock()
    holds = RequeueHolds(clock)
    holds.hold("u", 3, 60)
    assert holds.holding("u", 3)
    clock.now += 59.9
    assert holds.holding("u", 3)
    clock.now += 0.1
    assert not holds.holding("u", 3)
    assert not holds.holding("u", 3)  # over: forgotten


def test_a_newer_generation_is_never_held() -> None:
    clock = Clock()
    holds = RequeueHolds(clock)
    holds.hold("u", 3, 300)
    assert not holds.holding("u", 4)
    assert not holds.holding("u", 3)  # the spec moved on: the old wait is gone


def test_release_and_other_workspaces() -> None:
    holds = RequeueHolds(Clock())
    holds.hold("u", 1, 60)
    assert not holds.holding("v", 1)
    holds.release("u")
    assert not holds.holding("u", 1)
