from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from alpaca_operator.api.instructdataset import TokenPricing
from alpaca_operator.cost import budget_deadline_seconds, gpu_hours, hourly_rate, resolve_gpu_price, tighter_deadline, token_cost

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_token_cost_uses_both_prices() -> None:
    pricing = TokenPricing(input_usd_per_million_tokens=0.5, output_usd_per_million_tokens=1.5)
    assert token_cost(2_000_000, 1_000_000, pricing) == pytest.approx(2.5)
    assert token_cost(10, 10, None) == 0.0


def test_gpu_hours_count_only_after_the_start() -> None:
    assert gpu_hours(8, NOW - timedelta(minutes=30), NOW) == pytest.approx(4.0)
    assert gpu_hours(8, None, NOW) == 0.0
    assert gpu_hours(8, NOW + timedelta(hours=1), NOW) == 0.0
    assert gpu_hours(0, NOW - timedelta(hours=1), NOW) == 0.0


def test_spec_price_wins_over_the_table() -> None:
    table = {"a100": 2.0}
    assert resolve_gpu_price(3.0, table, "a100") == 3.0
    assert resolve_gpu_price(None, table, "a100") == 2.0
    assert resolve_gpu_price(None, table, "h100") is None


@pytest.mark.parametrize(
    ("budget", "rate", "expected"),
    [(100.0, 16.0, 22500), (0.0001, 16.0, 1), (None, 16.0, None), (100.0, 0.0, None)],
)
def test_budget_deadline(budget: float | None, rate: float, expected: int | None) -> None:
    assert budget_deadline_seconds(budget, rate) == expected


def test_rates_and_deadlines() -> None:
    assert hourly_rate(4, 2.0, 1.0, pods=2) == 10.0
    assert tighter_deadline(None, 60, 30) == 30
    assert tighter_deadline(None, None) is None
