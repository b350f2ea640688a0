"""The report's contents: one judgement row per task, and the summary with the headline figures.

Both are pure functions of the state, so a resumed job writes the same report as one that was
never interrupted.
"""

from __future__ import annotations

from typing import Any

from alpaca_operator.api.evaluation import Score, Verdict

from . import stats
from .state import CONTESTANTS, EvaluationState

OUTCOME_NAMES = {stats.WIN: Verdict.WIN.value, stats.TIE: Verdict.TIE.value, stats.LOSS: Verdict.LOSS.value}


def judgement_rows(state: EvaluationState) -> list[dict[str, Any]]:
    """Per judged task, in task order: both answers, both verdicts as read and as replied, the outcome."""
    rows = []
    for task in state.judged_tasks:
        first = state.verdicts[(task.key, "candidate_first")]
        second = state.verdicts[(task.key, "baseline_first")]
        rows.append({
            "instruction": task.instruction,
            "input": task.input,
            "candidate_output": state.answers[(task.key, "candidate")],
            "baseline_output": state.answers[(task.key, "baseline")],
            # Letters as the judge saw them: candidate first means the candidate was A.
            "verdict_candidate_first": first.winner,
            "verdict_baseline_first": second.winner,
            "judge_reply_candidate_first": first.reply,
            "judge_reply_baseline_first": second.reply,
            "outcome": OUTCOME_NAMES[state.outcome(task.key)],
        })
    return rows


def score(state: EvaluationState, seed: int) -> tuple[Score, stats.LengthFit] | None:
    """The headline figures over the judged tasks; None when none was judged."""
    judged = state.judged_tasks
    if not judged:
        return None
    outcomes = [state.outcome(task.key) for task in judged]
    low, high = stats.bootstrap_interval(outcomes, seed)
    lengths = {role: [len(state.answers[(task.key, role)]) for task in judged] for role in CONTESTANTS}
    fit = stats.length_controlled_win_rate(outcomes, lengths["candidate"], lengths["baseline"])
    wins, ties, losses = stats.counts(outcomes)
    rate = stats.win_rate(outcomes)
    return Score(
        win_rate=round(rate, 6),
        # The interval is a percentile of resampled means; rounding must not push it past the rate.
        win_rate_low=round(min(low, rate), 6),
        win_rate_high=round(max(high, rate), 6),
        length_controlled_win_rate=round(fit.win_rate, 6),
        wins=wins,
        ties=ties,
        losses=losses,
    ), fit


def summary(state: EvaluationState, *, name: str, labels: dict[str, str], seed: int, stop_reason: str, message: str,
            budget_usd: float | None, structured_output: bool, finished_at: str) -> dict[str, Any]:
    scored = score(state, seed)
    judged = state.judged_tasks
    roles = sorted(set(state.prompt_tokens) | set(state.completion_tokens) | set(state.requests))
    return {
        "name": name,
        "stopReason": stop_reason,
        "message": message,
        "candidate": labels["candidate"],
        "baseline": labels["baseline"],
        "judge": labels["judge"],
        "score": scored[0].to_wire() if scored else None,
        "lengthControl": (
            {"method": "logistic regression on tanh(length difference / its RMS), predicted at zero difference",
             "intercept": round(scored[1].intercept, 6), "slope": round(scored[1].slope, 6),
             "interceptPrecision": stats.INTERCEPT_PRECISION, "slopePrecision": stats.SLOPE_PRECISION}
            if scored else None
        ),
        "bootstrap": {"resamples": stats.BOOTSTRAP_RESAMPLES, "level": 0.95, "seed": seed},
        "tasks": len(state.tasks),
        "judged": len(judged),
        "unparsedVerdicts": state.unparsed_verdicts,
        "judgeStructuredOutput": structured_output,
        "averageLength": {
            role: round(sum(len(state.answers[(t.key, role)]) for t in judged) / len(judged), 1) if judged else None
            for role in ("candidate", "baseline")
        },
        "requests": {role: state.requests[role] for role in roles},
        # Cut by max_tokens: a judge may hold a cut answer against it, and a cut verdict may be unreadable.
        "truncated": {role: state.truncated[role] for role in roles},
        "failedRequests": dict(sorted(state.failed.items())),
        "retries": dict(sorted(state.retries.items())),
        "tokens": {role: {"prompt": state.prompt_tokens[role], "completion": state.completion_tokens[role]} for role in roles},
        "promptTokens": sum(state.prompt_tokens.values()),
        "completionTokens": sum(state.completion_tokens.values()),
        "costUSD": round(state.cost_usd, 9),
        "unrecordedRequests": state.unrecorded_requests,
        "unrecordedCostUSD": round(state.unrecorded_cost_usd, 9),
        "budgetUSD": budget_usd,
        "finishedAt": finished_at,
    }
