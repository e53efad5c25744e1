"""Token checks and the failure limiter (with an injected clock)."""

from __future__ import annotations

import hashlib

import pytest

from agentspaces_vm.auth import FailureLimiter, bearer_token, token_matches


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


TOKEN = "tok-123"
DIGEST = hashlib.sha256(TOKEN.encode()).hexdigest()


@pytest.mark.parametrize(("header", "expected"), [
    (f"Bearer {TOKEN}", True),
    (f"bearer   {TOKEN}  ", True),
    (f"Bearer {TOKEN}x", False),
    (f"Basic {TOKEN}", False),
    ("Bearer", False),
    ("Bearer ", False),
    ("", False),
    (None, False),
])
def test_token_matches(header: str | None, expected: bool) -> None:
    assert token_matches(header, DIGEST) is expected
    assert token_matches(header, DIGEST.upper()) is expected


def test_an_empty_token_never_matches_the_hash_of_nothing() -> None:
    empty = hashlib.sha256(b"").hexdigest()
    assert token_matches("Bearer ", empty) is False
    assert token_matches(None, empty) is False


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("Token abc") is None


def test_ten_failures_a_minute_are_allowed_the_eleventh_blocks() -> None:
    clock = Clock()
    limiter = FailureLimiter(clock, limit=10, window=60)
    for _ in range(10):
        assert limiter.retry_after("a") is None
        limiter.record_failure("a")
        clock.now += 1
    assert limiter.retry_after("a") is None   # exactly ten: still allowed
    limiter.record_failure("a")               # the eleventh (t=1010)
    # Blocked until the first failure (t=1000) leaves the window at t=1060.
    assert limiter.retry_after("a") == 50
    assert limiter.retry_after("b") is None   # other addresses are unaffected
    clock.now = 1059.5
    assert limiter.retry_after("a") == 1
    clock.now = 1060.0
    assert limiter.retry_after("a") is None


def test_failures_age_out_of_the_window() -> None:
    clock = Clock()
    limiter = FailureLimiter(clock, limit=2, window=10)
    for _ in range(3):
        limiter.record_failure("a")
    assert limiter.retry_after("a") == 10
    clock.now += 10
    assert limiter.retry_after("a") is None
    limiter.record_failure("a")
    assert limiter.retry_after("a") is None


def test_the_table_is_bounded() -> None:
    clock = Clock()
    limiter = FailureLimiter(clock, limit=0, window=60, max_addresses=3)
    for addr in ("a", "b", "c", "d"):
        limiter.record_failure(addr)
    assert limiter.retry_after("a") is None   # evicted, oldest first
    assert all(limiter.retry_after(x) == 60 for x in ("b", "c", "d"))
