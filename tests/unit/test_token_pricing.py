"""Token prices and the cost estimate (api.pricing), the class's override
(spec.pricing.models), and status.usage as the operator writes it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from agentspaces.api.pricing import DEFAULT_MODEL_PRICES, ModelPrice, estimate, price_for
from agentspaces.reconcile import token_usage
from agentspaces_vm.contracts import TokenCounts, UsageReport
from tests.unit.vmconfig_inputs import make_klass

M = 1_000_000


def test_each_default_prefix_is_unique_and_prices_are_positive() -> None:
    prefixes = [p.prefix for p in DEFAULT_MODEL_PRICES]
    assert len(prefixes) == len(set(prefixes))
    for p in DEFAULT_MODEL_PRICES:
        assert p.input > 0 and p.output > p.input and p.cache_read < p.input < p.cache_write


@pytest.mark.parametrize(("model", "prefix"), [
    ("claude-opus-5-5", "claude-opus-5-5"),
    ("claude-opus-5", "claude-opus-5"),          # not the 5.5 entry
    ("claude-opus-5-20260724", "claude-opus-5"),
    ("claude-opus-4-20250514", "claude-opus-4"),  # the $15 tier, not 4.5's
    ("claude-opus-4-5-20251101", "claude-opus-4-5"),
    ("claude-sonnet-5-5[1m]", "claude-sonnet-5-5"),
    ("claude-sonnet-4-20250514", "claude-sonnet-4"),
    ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
    ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
])
def test_the_longest_matching_prefix_prices_a_model(model: str, prefix: str) -> None:
    price = price_for(model)
    assert price is not None and price.prefix == prefix


def test_a_model_nobody_prices_is_named_and_costs_nothing() -> None:
    result = estimate({"gpt-oss": TokenCounts(input=M), "claude-opus-5-5": TokenCounts()})
    assert price_for("gpt-oss") is None
    assert result.unpriced == ("gpt-oss",)
    assert result.total == 0


def test_cost_of_each_kind_of_token_per_million() -> None:
    opus = price_for("claude-opus-5-5")
    assert opus is not None
    assert opus.cost(TokenCounts(input=M)) == 4
    assert opus.cost(TokenCounts(output=M)) == 20
    assert opus.cost(TokenCounts(cache_write=M)) == 5        # five-minute writes
    assert opus.cost(TokenCounts(cache_write=M, cache_write_1h=M)) == 8  # 2x input
    assert opus.cost(TokenCounts(cache_read=M)) == Decimal("0.2")


def test_the_golden_session_costs_what_claude_code_recorded() -> None:
    """tests/unit/golden/claude-transcript.jsonl: Claude Code 2.1.332's own cost-state
    for those answers says 0.02594 USD."""
    tokens = TokenCounts(input=1500, output=52, cache_read=4500, cache_write=3000,
                         cache_write_1h=1000)
    assert estimate({"claude-opus-5-5": tokens}).total == Decimal("0.02594")


def test_class_entries_come_before_the_defaults_even_when_shorter() -> None:
    cheap = ModelPrice.of("claude-opus", "1", "2")
    result = estimate({"claude-opus-5-5": TokenCounts(input=M, cache_read=M,
                                                      cache_write=M)}, [cheap])
    # Unset cache prices follow the input price: 1.25x to write, 0.1x to read.
    assert result.total == Decimal("1") + Decimal("1.25") + Decimal("0.1")
    assert price_for("claude-sonnet-5-5", [cheap]) == price_for("claude-sonnet-5-5")


def test_the_class_spec_becomes_exact_decimal_prices() -> None:
    klass = make_klass(pricing={"models": [
        {"model": "claude-opus-5-5", "input": 3.3, "output": 16.5, "cacheRead": 0.1},
        {"model": "my-gateway-model", "input": 0, "output": 0}]})
    (opus, gateway) = klass.token_prices
    assert (opus.input, opus.output, opus.cache_write, opus.cache_read) == \
        (Decimal("3.3"), Decimal("16.5"), Decimal("4.125"), Decimal("0.1"))
    assert gateway.cost(TokenCounts(input=M, output=M)) == 0


def test_negative_prices_are_refused() -> None:
    with pytest.raises(ValueError, match="pricing"):
        make_klass(pricing={"models": [{"model": "x", "input": -1, "output": 1}]})


# --- status.usage -------------------------------------------------------------------------

REPORT = UsageReport(
    sessions=2,
    models={"claude-opus-5-5": TokenCounts(input=1500, output=52, cache_read=4500,
                                           cache_write=3000, cache_write_1h=1000),
            "local-model": TokenCounts(input=10)},
    last_model="claude-opus-5-5", last_time=datetime(2026, 12, 2, 9, tzinfo=UTC))


def test_status_usage_sums_and_prices_the_report() -> None:
    usage = token_usage.usage_status(REPORT, ()).model_dump(by_alias=True, mode="json",
                                                             exclude_none=True)
    assert usage == {
        "sessions": 2, "inputTokens": 1510, "outputTokens": 52, "cacheReadTokens": 4500,
        "cacheWriteTokens": 3000, "totalTokens": 9062, "lastModel": "claude-opus-5-5",
        "lastTime": "2026-12-02T09:00:00Z", "estimatedCost": "0.02594", "currency": "USD",
        "unpricedModels": ["local-model"],
        "models": [
            {"model": "claude-opus-5-5", "inputTokens": 1500, "outputTokens": 52,
             "cacheReadTokens": 4500, "cacheWriteTokens": 3000, "estimatedCost": "0.02594"},
            {"model": "local-model", "inputTokens": 10, "outputTokens": 0,
             "cacheReadTokens": 0, "cacheWriteTokens": 0}]}


def test_a_partial_report_keeps_what_status_had() -> None:
    before = token_usage.usage_status(REPORT, ())
    partial = UsageReport(sessions=1, models={"claude-opus-5-5": TokenCounts(input=1)},
                          complete=False)
    assert token_usage.record(before, partial, ()) is before
    assert token_usage.record(before, None, ()) is before  # an agent without usage
    assert token_usage.record(None, REPORT, ()) == before


def test_money_is_a_plain_decimal_string() -> None:
    assert token_usage.money(Decimal("0.0259400")) == "0.02594"
    assert token_usage.money(Decimal("12")) == "12"
    assert token_usage.money(Decimal("0")) == "0"
    assert token_usage.money(Decimal("0.0000004")) == "0"
    assert token_usage.money(Decimal("1E+2")) == "100"
