"""The request budget's policy (clouds/budget.py) on an injected clock."""

from __future__ import annotations

import pytest

from agentspaces import metrics
from agentspaces.api.enums import ConditionStatus, ConditionType, Reason
from agentspaces.clouds.budget import (
    PRIORITIES,
    Budget,
    BudgetExhausted,
    Priority,
    Reading,
    caller,
    cloudflare_reading,
    hetzner_reading,
    priority_of,
    teardown,
)
from agentspaces.clouds.errors import ErrorKind
from agentspaces.reconcile import server_step
from tests.support.scope_builder import ScopeBuilder


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hetzner(clock: Clock, limit: int = 60) -> Budget:
    budget = Budget("hetzner", limit=3600, period=3600.0, continuous=True, clock=clock)
    budget.observe(Reading(remaining=limit, limit=limit, reset_after=0.0))
    return budget


def spend(budget: Budget, operation: str, n: int) -> None:
    for _ in range(n):
        with budget.call(operation):
            pass


def test_headers_of_both_providers_are_read() -> None:
    reading = hetzner_reading({"RateLimit-Limit": "3600", "RateLimit-Remaining": "3500",
                               "RateLimit-Reset": "1100"}, now_unix=1000.0)
    assert reading == Reading(remaining=3500, limit=3600, reset_after=100.0)
    assert hetzner_reading({}, 0.0) is None
    reading = cloudflare_reading({"Ratelimit": '"default";r=50;t=30',
                                  "Ratelimit-Policy": '"default";q=1200;w=300'})
    assert reading == Reading(remaining=50, limit=1200, reset_after=30.0)
    assert cloudflare_reading({"Ratelimit-Policy": '"default";q=1200;w=300'}) is None


def test_priorities_come_from_one_table_and_teardown_raises_them() -> None:
    assert priority_of("hetzner.create") is Priority.LOW
    assert priority_of("hetzner.delete") is Priority.HIGH
    assert priority_of("cloudflare.create_record") is Priority.LOW
    assert priority_of("hetzner.find_by_uid") is Priority.LOW
    with teardown():
        assert priority_of("hetzner.find_by_uid") is Priority.HIGH
        assert priority_of("cloudflare.list_records") is Priority.HIGH
    assert priority_of("hetzner.find_by_uid") is Priority.LOW
    assert all(op.split(".")[0] in ("hetzner", "cloudflare") for op in PRIORITIES)


def test_low_priority_calls_keep_the_reserve_high_ones_spend_it_all() -> None:
    clock = Clock()
    budget = hetzner(clock)  # 60, reserve 6: LOW keeps 6, NORMAL 3, HIGH 0
    assert (budget.keep(Priority.LOW), budget.keep(Priority.NORMAL),
            budget.keep(Priority.HIGH)) == (6, 3, 0)
    spend(budget, "hetzner.create", 54)
    with pytest.raises(BudgetExhausted) as refused:
        budget.admit("hetzner.create")
    err = refused.value
    assert err.kind is ErrorKind.RATE_LIMITED and err.provider == "hetzner"
    assert err.retry_after == 1.0  # one refill at 1/s
    assert "keep 6 of its 60" in err.message
    spend(budget, "hetzner.get", 3)
    with pytest.raises(BudgetExhausted):
        budget.admit("hetzner.get")
    spend(budget, "hetzner.delete", 3)
    assert budget.remaining() == 0
    with pytest.raises(BudgetExhausted):
        budget.admit("hetzner.delete")


def test_the_budget_refills_at_the_provider_rate_between_responses() -> None:
    clock = Clock()
    budget = hetzner(clock)
    spend(budget, "hetzner.delete", 60)
    clock.now += 3.5
    assert budget.remaining() == 3
    clock.now += 3.5
    spend(budget, "hetzner.create", 1)  # 7 left: one create may go, leaving 6
    with pytest.raises(BudgetExhausted):
        budget.admit("hetzner.create")


def test_a_reading_replaces_the_estimate_and_counts_calls_in_flight() -> None:
    clock = Clock()
    budget = hetzner(clock)
    with budget.call("hetzner.get"), budget.call("hetzner.get"):
        # Someone else spent the project's budget; the other call is not counted yet.
        budget.observe(Reading(remaining=20, limit=60, reset_after=40.0))
        assert budget.remaining() == 19
    assert budget.limit == 60
    assert budget.rate == pytest.approx(1.0)  # (60 - 20) over 40 s


def test_the_refill_rate_is_learned_from_the_reset_time() -> None:
    clock = Clock()
    budget = hetzner(clock)
    budget.observe(Reading(remaining=3000, limit=7200, reset_after=2100.0))
    assert budget.rate == pytest.approx(2.0)
    budget.observe(Reading(remaining=7195, limit=7200, reset_after=3.0))  # too coarse
    assert budget.rate == pytest.approx(2.0)


def test_refused_callers_are_staggered_one_refill_apart() -> None:
    clock = Clock()
    budget = hetzner(clock)
    spend(budget, "hetzner.create", 54)
    waits = []
    for _ in range(4):
        with pytest.raises(BudgetExhausted) as refused:
            budget.admit("hetzner.create")
        waits.append(refused.value.retry_after)
    assert waits == [1.0, 2.0, 3.0, 4.0]
    clock.now += 1.0  # the first comes back and is let in
    spend(budget, "hetzner.create", 1)


def test_a_caller_back_before_its_time_keeps_its_place() -> None:
    clock = Clock()
    budget = hetzner(clock)
    spend(budget, "hetzner.create", 54)

    def refused_after(key: str) -> float | None:
        with caller(key), pytest.raises(BudgetExhausted) as refused:
            budget.admit("hetzner.create")
        return refused.value.retry_after

    assert [refused_after(k) for k in ("a", "b", "c")] == [1.0, 2.0, 3.0]
    clock.now += 0.5  # "c" is back early (a timer): same slot, the queue does not grow
    assert refused_after("c") == 2.5
    assert refused_after("d") == 3.5
    clock.now += 0.5
    with caller("a"):
        spend(budget, "hetzner.create", 1)  # its turn: admitted and out of the queue
    assert refused_after("e") == 4.0  # behind b, c, d; after its refill


def test_a_429_blocks_every_priority_until_the_provider_says() -> None:
    clock = Clock()
    budget = Budget.cloudflare(clock)
    budget.observe(Reading(remaining=500, limit=1200, reset_after=100.0))
    budget.observe(Reading(remaining=0, limit=1200, reset_after=100.0), 429, retry_after=90.0)
    with pytest.raises(BudgetExhausted) as refused:
        budget.admit("cloudflare.delete_record")
    assert refused.value.retry_after == 90.0
    clock.now += 90.0
    assert budget.remaining() == 1200  # the window ended: whole again
    spend(budget, "cloudflare.create_record", 1)


def test_a_429_whose_headers_show_budget_left_blocks_but_does_not_empty_it() -> None:
    clock = Clock()
    budget = hetzner(clock)
    budget.observe(Reading(remaining=60, limit=60, reset_after=0.0), 429)
    with pytest.raises(BudgetExhausted) as refused:
        budget.admit("hetzner.create")
    assert refused.value.retry_after == 1.0  # a second, not a refill of the reserve
    clock.now += 1.0
    spend(budget, "hetzner.create", 1)
    budget.observe(None, 429)  # no headers: taken as spent
    assert budget.remaining() == 0


def test_a_window_comes_back_whole_at_its_end() -> None:
    clock = Clock()
    budget = Budget.cloudflare(clock)
    budget.observe(Reading(remaining=130, limit=1200, reset_after=60.0))
    spend(budget, "cloudflare.create_record", 10)  # keeps 120
    with pytest.raises(BudgetExhausted) as refused:
        budget.admit("cloudflare.create_record")
    assert refused.value.retry_after == 60.0
    spend(budget, "cloudflare.delete_record", 5)
    clock.now += 60.0
    spend(budget, "cloudflare.create_record", 1000)


def test_before_any_response_only_a_few_probes_go() -> None:
    clock = Clock()
    budget = Budget.hetzner(clock)
    with budget.call("hetzner.create"), budget.call("hetzner.create"):
        with pytest.raises(BudgetExhausted) as refused:
            budget.admit("hetzner.delete")
        assert refused.value.retry_after == Budget.LEARN_WAIT


def test_the_gauge_shows_the_lowest_budget_per_provider() -> None:
    clock = Clock()
    low, high = hetzner(clock, limit=60), hetzner(clock, limit=60)
    spend(low, "hetzner.delete", 50)
    spend(high, "hetzner.delete", 5)
    book = metrics.BudgetBook()
    book.track(low)
    book.track(high)
    samples = {(m.name, s.labels["provider"]): s.value
               for m in book.collect() for s in m.samples}
    assert samples == {("agentspaces_cloud_budget_remaining", "hetzner"): 10,
                       ("agentspaces_cloud_budget_limit", "hetzner"): 60}
    assert low in metrics.BUDGETS.budgets()  # every budget registers itself


async def test_a_create_held_back_by_the_budget_says_so_and_comes_back_at_its_slot(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    b.servers.fail_next("create", BudgetExhausted("hetzner", "hetzner.create", Priority.LOW,
                                                  7.5, 4, 60, 6))
    scope = b.scope()
    outcome = await server_step.reconcile(scope)

    assert b.servers.ids() == []
    server = next(c for c in scope.status.conditions if c.type == ConditionType.SERVER_READY)
    assert (server.status, server.reason) == (ConditionStatus.FALSE,
                                              Reason.WAITING_FOR_CLOUD_BUDGET)
    assert server.message == ("server: waiting for the hetzner API request budget: "
                              "low-priority calls keep 6 of its 60 requests")
    assert outcome is not None and outcome.requeue == 7.5
    assert not b.reasons()  # waiting is not worth a Warning event


def test_a_low_caller_back_at_its_turn_is_not_starved_by_busier_reads() -> None:
    """Reads of running workspaces (NORMAL) spend each refill as it comes; a create
    (LOW) back at its slot competes with them as NORMAL instead of waiting for good."""
    clock = Clock()
    budget = hetzner(clock)
    spend(budget, "hetzner.get", 54)  # the level sits at the LOW reserve (6)

    def create(key: str) -> float | None:
        with caller(key):
            try:
                budget.admit("hetzner.create")
            except BudgetExhausted as refused:
                return refused.retry_after
        return None

    assert create("w1") == 1.0
    for _ in range(3):
        clock.now += 1.0
        spend(budget, "hetzner.get", 1)  # the refill goes to a read first
        retry = create("w1")
        if retry is None:
            break
    assert retry is None  # admitted at its turn with the level above NORMAL's keep (3)
    assert create("w2") is not None  # a newcomer still keeps the LOW reserve


def test_a_caller_late_for_its_turn_goes_first_not_last() -> None:
    clock = Clock()
    budget = hetzner(clock)
    spend(budget, "hetzner.create", 54)
    spend(budget, "hetzner.get", 3)  # level 3: at NORMAL's keep, nothing admitted

    def refused_after(key: str) -> float:
        with caller(key), pytest.raises(BudgetExhausted) as refused:
            budget.admit("hetzner.create")
        return refused.value.retry_after

    assert [refused_after(k) for k in ("a", "b", "c")] == [4.0, 5.0, 6.0]
    clock.now += 4.5
    spend(budget, "hetzner.get", 4)  # the refill went to reads while "a" was late
    assert refused_after("a") == 1.0  # the next refill, ahead of "b" and "c"
