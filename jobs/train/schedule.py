"""Learning rate as a pure function of the step, so a resumed run needs nothing but the step number."""

from __future__ import annotations

import math

from alpaca_operator.api.finetune import Scheduler


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio)


def learning_rate(step: int, *, total_steps: int, peak: float, warmup_ratio: float, kind: Scheduler) -> float:
    """The rate for optimizer step `step` (0-based): linear warmup to `peak`, then the chosen decay to 0.

    Warmup counts from 1, not 0, so the first step already learns something.
    """
    warmup = warmup_steps(total_steps, warmup_ratio)
    if step < warmup:
        return peak * (step + 1) / warmup
    if kind is Scheduler.CONSTANT:
        return peak
    remaining = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / remaining)
    if kind is Scheduler.LINEAR:
        return peak * (1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
