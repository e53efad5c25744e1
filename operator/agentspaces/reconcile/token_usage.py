"""The agent's token usage report in status.usage, with its estimated cost.

The agent sums Claude Code's transcripts (agentspaces_vm.usage); the operator prices the
sums with the class's table over the built-in one (api.pricing) and writes them only
once the agent has read every transcript (`complete`): a restored history being read is
partial, and would show a dip. The mapping is pure, so an unchanged report makes no
status write.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from agentspaces.api.pricing import CURRENCY, ModelPrice, estimate
from agentspaces.api.status import ModelUsageStatus, TokenUsageStatus
from agentspaces_vm.contracts import TokenCounts, UsageReport

COST_PLACES = Decimal("0.000001")  # a millionth of a dollar: one output token's order


def money(amount: Decimal) -> str:
    text = format(amount.quantize(COST_PLACES, ROUND_HALF_UP).normalize(), "f")
    return "0" if text in ("-0", "0E-6") else text


def usage_status(report: UsageReport, prices: tuple[ModelPrice, ...]) -> TokenUsageStatus:
    cost = estimate(report.models, prices)
    totals = report.totals

    def counts(tokens: TokenCounts) -> dict[str, int]:
        return {"input_tokens": tokens.input, "output_tokens": tokens.output,
                "cache_read_tokens": tokens.cache_read,
                "cache_write_tokens": tokens.cache_write}

    return TokenUsageStatus(
        sessions=report.sessions, **counts(totals), total_tokens=totals.total,
        last_model=report.last_model, last_time=report.last_time,
        estimated_cost=money(cost.total), currency=CURRENCY,
        unpriced_models=list(cost.unpriced),
        models=[ModelUsageStatus(model=model, **counts(tokens),
                                 estimated_cost=money(cost.per_model[model])
                                 if model in cost.per_model else None)
                for model, tokens in sorted(report.models.items())])


def record(status_usage: TokenUsageStatus | None, report: UsageReport | None,
           prices: tuple[ModelPrice, ...]) -> TokenUsageStatus | None:
    """What status.usage becomes: the report's, once complete; else what it was."""
    if report is None or not report.complete:
        return status_usage
    return usage_status(report, prices)
