"""The figures as pure functions of the per-task outcomes (and the answers' lengths)."""

from __future__ import annotations

import numpy as np
import pytest

from alpaca_jobs.evaluate import stats


@pytest.mark.parametrize(
    ("candidate_first", "baseline_first", "outcome"),
    [
        ("A", "B", stats.WIN),  # the candidate won in both orders
        ("B", "A", stats.LOSS),
        ("A", "A", stats.TIE),  # a judge that always says A: a split verdict
        ("B", "B", stats.TIE),
        ("A", "tie", stats.WIN),  # won one order, tied the other
        ("tie", "B", stats.WIN),
        ("tie", "A", stats.LOSS),
        ("tie", "tie", stats.TIE),
        (None, "B", stats.WIN),  # no verdict counts as a tie
        (None, None, stats.TIE),
    ],
)
def test_both_orders_make_one_outcome(candidate_first: str | None, baseline_first: str | None, outcome: float) -> None:
    assert stats.task_outcome(candidate_first, baseline_first) == outcome  # type: ignore[arg-type]


def test_win_rate_counts_ties_as_half() -> None:
    assert stats.win_rate([1, 1, 0.5, 0]) == pytest.approx(0.625)
    assert stats.counts([1, 1, 0.5, 0]) == (2, 1, 1)
    with pytest.raises(ValueError):
        stats.win_rate([])


def test_the_bootstrap_interval_is_seeded_and_brackets_the_rate() -> None:
    outcomes = [1.0] * 13 + [0.5] * 4 + [0.0] * 7
    low, high = stats.bootstrap_interval(outcomes, seed=3)
    assert (low, high) == stats.bootstrap_interval(outcomes, seed=3)
    assert low < stats.win_rate(outcomes) < high
    # The standard error of a mean of 24 such outcomes is about 0.09: the 95% interval spans about 4 of them.
    sd = float(np.std(outcomes)) / np.sqrt(len(outcomes))
    assert 3 * sd < high - low < 5 * sd
    assert stats.bootstrap_interval([1.0] * 5, seed=0) == (1.0, 1.0)


def test_the_length_feature_keeps_the_sign_of_the_difference() -> None:
    x = stats.length_feature([10, 20, 30], [20, 20, 0])
    assert x[0] < 0 and x[1] == 0 and x[2] > 0 and np.all(np.abs(x) < 1)
    assert np.all(stats.length_feature([5, 7], [5, 7]) == 0)


def test_the_fit_meets_its_first_order_conditions() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 50)
    y = (rng.uniform(size=50) < 1 / (1 + np.exp(-(0.4 + 1.5 * x)))).astype(float)
    fit = stats.fit_length_model(list(y), x)
    p = 1 / (1 + np.exp(-(fit.intercept + fit.slope * x)))
    assert np.sum(y - p) == pytest.approx(stats.INTERCEPT_PRECISION * fit.intercept, abs=1e-6)
    assert np.sum((y - p) * x) == pytest.approx(stats.SLOPE_PRECISION * fit.slope, abs=1e-6)
    assert fit.win_rate == pytest.approx(1 / (1 + np.exp(-fit.intercept)))


def test_a_candidate_that_wins_whether_longer_or_shorter_keeps_its_win_rate() -> None:
    candidate = [30, 10, 40, 12, 50, 8, 35, 15, 45, 9] * 2
    baseline = [20] * 20
    fit = stats.length_controlled_win_rate([1.0] * 20, candidate, baseline)
    # Length explains nothing; the intercept's prior alone holds it back: 0.25 a = 20 (1 - sigmoid(a)) gives a near 3.2.
    assert 0.95 < fit.win_rate < 0.97
    assert abs(fit.slope) < 0.5


def test_ties_everywhere_are_even_at_any_lengths() -> None:
    fit = stats.length_controlled_win_rate([0.5] * 10, list(range(10, 20)), [5] * 10)
    assert fit.win_rate == pytest.approx(0.5, abs=1e-9)


def test_when_only_length_decides_the_controlled_rate_is_even() -> None:
    """Outcomes that follow the sign of the length difference exactly, half each way."""
    candidate = [30, 10] * 10
    baseline = [20] * 20
    outcomes = [1.0 if c > b else 0.0 for c, b in zip(candidate, baseline)]
    assert stats.win_rate(outcomes) == 0.5
    fit = stats.length_controlled_win_rate(outcomes, candidate, baseline)
    assert fit.win_rate == pytest.approx(0.5, abs=1e-6) and fit.slope > 5
