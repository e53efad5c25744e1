"""What Claude Code's tokens cost: a price table in USD per million tokens, and the
estimate for a usage report.

`DEFAULT_MODEL_PRICES` holds Anthropic's list prices for the Claude API as published on
platform.claude.com (the pricing page and each model's page), read on 2026-12-02;
docs/usage.md lists them with their sources and caveats. Claude Code 2.1.332 records
the same figures in its own estimate (its `cost-state` transcript records). A
WorkspaceClass adds or replaces entries with `spec.pricing.models`, which are looked up
before the defaults. A model takes the entry whose name is its longest prefix, so
`claude-opus-5` does not price `claude-opus-5-5`, which has its own entry.

Cache writes with the one-hour lifetime cost twice the input price (Anthropic's
multiplier for every model); an entry's cache_write is the five-minute price.
Currency: USD, always (Hetzner's prices are another currency and never added here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from agentspaces_vm.contracts import TokenCounts

CURRENCY = "USD"
PRICES_AS_OF = "2026-12-02"
MILLION = Decimal(1_000_000)
ONE_HOUR_WRITE_FACTOR = Decimal(2)


@dataclass(frozen=True)
class ModelPrice:
    """USD per million tokens for the models whose name starts with `prefix`."""

    prefix: str
    input: Decimal
    output: Decimal
    cache_write: Decimal
    """Five-minute cache writes."""
    cache_read: Decimal

    @classmethod
    def of(cls, prefix: str, input: str, output: str, cache_write: str | None = None,
           cache_read: str | None = None) -> ModelPrice:
        """From decimal strings; unset cache prices follow Anthropic's multipliers of the
        input price (1.25x to write for five minutes, 0.1x to read)."""
        base = Decimal(input)
        return cls(prefix, base, Decimal(output),
                   Decimal(cache_write) if cache_write is not None else base * Decimal("1.25"),
                   Decimal(cache_read) if cache_read is not None else base * Decimal("0.1"))

    def cost(self, tokens: TokenCounts) -> Decimal:
        five_minute = tokens.cache_write - tokens.cache_write_1h
        micro = (tokens.input * self.input + tokens.output * self.output
                 + five_minute * self.cache_write
                 + tokens.cache_write_1h * self.input * ONE_HOUR_WRITE_FACTOR
                 + tokens.cache_read * self.cache_read)
        return micro / MILLION


_P = ModelPrice.of
DEFAULT_MODEL_PRICES: tuple[ModelPrice, ...] = (
    # prefix, input, output, 5-minute cache write, cache read
    _P("claude-fable-5-1", "10", "50", "12.50", "0.25"),
    _P("claude-mythos-5-1", "10", "50", "12.50", "0.25"),
    _P("claude-fable-5", "10", "50", "12.50", "1"),
    _P("claude-mythos-5", "10", "50", "12.50", "1"),
    _P("claude-opus-5-5", "4", "20", "5", "0.20"),
    _P("claude-opus-5", "5", "25", "6.25", "0.50"),
    _P("claude-opus-4-8", "5", "25", "6.25", "0.50"),
    _P("claude-opus-4-7", "5", "25", "6.25", "0.50"),
    _P("claude-opus-4-6", "5", "25", "6.25", "0.50"),
    _P("claude-opus-4-5", "5", "25", "6.25", "0.50"),
    _P("claude-opus-4-1", "15", "75", "18.75", "1.50"),
    _P("claude-opus-4", "15", "75", "18.75", "1.50"),
    _P("claude-sonnet-5-5", "2", "10", "2.50", "0.10"),
    _P("claude-sonnet-5", "2", "10", "2.50", "0.20"),
    _P("claude-sonnet-4", "3", "15", "3.75", "0.30"),
    _P("claude-3-7-sonnet", "3", "15", "3.75", "0.30"),
    # Haiku 5.5 costs 5x this for a request whose prompt exceeds 100,000 tokens; usage
    # is summed per model, so the estimate takes the short-prompt price (a lower bound).
    _P("claude-haiku-5-5", "0.10", "0.50", "0.125", "0.01"),
    _P("claude-haiku-4-5", "1", "5", "1.25", "0.10"),
    _P("claude-3-5-haiku", "0.80", "4", "1", "0.08"),
    _P("claude-3-haiku", "0.25", "1.25", "0.30", "0.03"),
)


def price_for(model: str, overrides: Iterable[ModelPrice] = (),
              defaults: Iterable[ModelPrice] = DEFAULT_MODEL_PRICES) -> ModelPrice | None:
    """The entry with the longest prefix of `model`: the class's entries first, then the
    defaults; None when neither table knows the model."""
    for table in (overrides, defaults):
        best = max((p for p in table if model.startswith(p.prefix)),
                   key=lambda p: len(p.prefix), default=None)
        if best is not None:
            return best
    return None


@dataclass(frozen=True)
class Estimate:
    """The cost of a usage report in USD; models no table prices cost nothing here and
    are named in `unpriced`."""

    total: Decimal
    per_model: Mapping[str, Decimal]
    unpriced: tuple[str, ...] = ()


def estimate(models: Mapping[str, TokenCounts],
             overrides: Iterable[ModelPrice] = ()) -> Estimate:
    table = tuple(overrides)
    per_model: dict[str, Decimal] = {}
    unpriced: list[str] = []
    for model, tokens in sorted(models.items()):
        price = price_for(model, table)
        if price is None:
            if tokens.total:
                unpriced.append(model)
            continue
        per_model[model] = price.cost(tokens)
    return Estimate(total=sum(per_model.values(), Decimal(0)), per_model=per_model,
                    unpriced=tuple(unpriced))
