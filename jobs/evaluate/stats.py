"""The figures of an evaluation, as pure functions of the per-task outcomes.

A task's outcome is the candidate's score on it: 1 (won), 0.5 (tie) or 0 (lost), after both
orders were judged. Every figure here is a function of those outcomes (and, for the
length-controlled one, of the answers' lengths), so the report can be recomputed from
judgements.jsonl alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .verdicts import Winner

WIN, TIE, LOSS = 1.0, 0.5, 0.0
BOOTSTRAP_RESAMPLES = 2000
# Prior precisions of the length-controlled regression (see length_controlled_win_rate).
INTERCEPT_PRECISION = 0.25
SLOPE_PRECISION = 1e-4


def order_score(winner: Winner | None, candidate_first: bool) -> float:
    """The candidate's score in one order; no verdict counts as a tie."""
    if winner is None or winner == "tie":
        return TIE
    candidate_letter = "A" if candidate_first else "B"
    return WIN if winner == candidate_letter else LOSS


def task_outcome(candidate_first: Winner | None, baseline_first: Winner | None) -> float:
    """Both orders together: won in both, or in one with a tie in the other, is a win; a split is a tie.

    `candidate_first` is the verdict with the candidate shown as A, `baseline_first` with it shown as B.
    """
    total = order_score(candidate_first, True) + order_score(baseline_first, False)
    return WIN if total > 1 else LOSS if total < 1 else TIE


def win_rate(outcomes: Sequence[float]) -> float:
    """Wins plus half the ties, over the tasks judged."""
    if not outcomes:
        raise ValueError("no judged tasks")
    return float(np.mean(outcomes))


def bootstrap_interval(outcomes: Sequence[float], seed: int, resamples: int = BOOTSTRAP_RESAMPLES,
                       level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of the win rate: tasks resampled with replacement."""
    values = np.asarray(outcomes, dtype=float)
    if values.size == 0:
        raise ValueError("no judged tasks")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def length_feature(candidate_lengths: Sequence[int], baseline_lengths: Sequence[int]) -> np.ndarray:
    """tanh of each length difference over the differences' root mean square (0 when all are equal).

    The scale makes the feature independent of the unit (characters); tanh keeps a few very long
    answers from dominating the fit. Not centred: a candidate that is always longer must stay
    positive, or the regression could not see the bias at all.
    """
    diff = np.asarray(candidate_lengths, dtype=float) - np.asarray(baseline_lengths, dtype=float)
    scale = float(np.sqrt(np.mean(diff**2))) if diff.size else 0.0
    return np.tanh(diff / scale) if scale > 0 else np.zeros_like(diff)


@dataclass(frozen=True)
class LengthFit:
    intercept: float
    slope: float
    win_rate: float  # predicted at equal lengths


def fit_length_model(outcomes: Sequence[float], feature: np.ndarray, *, intercept_precision: float = INTERCEPT_PRECISION,
                     slope_precision: float = SLOPE_PRECISION, iterations: int = 100) -> LengthFit:
    """Penalised logistic regression of the outcome on the length feature, by Newton's method.

    Minimises  sum_i [ -y_i log p_i - (1 - y_i) log(1 - p_i) ] + intercept_precision * a^2 / 2
    + slope_precision * b^2 / 2, with p_i = sigmoid(a + b x_i). The outcomes y may be 0, 0.5 or 1
    (a tie is half a win), which the logistic likelihood takes as it is. The objective is strictly
    convex, so Newton's method from zero converges; steps are halved until the objective drops.
    """
    y = np.asarray(outcomes, dtype=float)
    x = np.asarray(feature, dtype=float)
    design = np.column_stack([np.ones_like(x), x])
    penalty = np.array([intercept_precision, slope_precision])

    def objective(theta: np.ndarray) -> float:
        z = design @ theta
        # log(1 + e^z) - y z, computed without overflow.
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(penalty * theta**2))

    theta = np.zeros(2)
    current = objective(theta)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        gradient = design.T @ (p - y) + penalty * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while size > 1e-10:
            trial = theta - size * step
            if (value := objective(trial)) <= current:
                break
            size /= 2
        else:
            break
        theta, previous, current = trial, current, value
        if previous - current < 1e-12:
            break
    intercept, slope = float(theta[0]), float(theta[1])
    return LengthFit(intercept, slope, float(1.0 / (1.0 + np.exp(-intercept))))


def length_controlled_win_rate(outcomes: Sequence[float], candidate_lengths: Sequence[int],
                               baseline_lengths: Sequence[int]) -> LengthFit:
    """The win rate the candidate would have if its answers were as long as the baseline's.

    Judges, model or human, tend to prefer longer answers, so a model can raise its win rate by
    talking more. As in alpaca_eval's length-controlled figure, the per-task outcome is regressed
    on the answers' length difference (a logistic model, `fit_length_model`, of
    x = tanh(difference / its root mean square)), and the figure reported is the model's
    prediction at zero difference: sigmoid(intercept).

    The two coefficients get different priors. The intercept is the figure reported, so it must be
    earned: a Gaussian prior of precision 0.25 (standard deviation 2 in log-odds, which still
    lets a clean sweep of 20 tasks reach about 0.96). The slope is nearly free (precision 1e-4,
    there only to keep it finite): whatever the lengths can explain, they explain. So when the
    candidate is always longer and always wins, the data cannot tell skill from length, and the
    length-controlled win rate falls back to about even rather than crediting the length; when
    the candidate wins whether it is longer or shorter, the slope explains nothing and the
    figure follows the win rate.
    """
    if not outcomes:
        raise ValueError("no judged tasks")
    return fit_length_model(outcomes, length_feature(candidate_lengths, baseline_lengths))


def counts(outcomes: Sequence[float]) -> tuple[int, int, int]:
    """(wins, ties, losses)."""
    return (sum(1 for o in outcomes if o == WIN), sum(1 for o in outcomes if o == TIE),
            sum(1 for o in outcomes if o == LOSS))
