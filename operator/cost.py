"""What the work costs: tokens x teacher price, GPU-hours x GPU price, and budgets as deadlines.

Prices are data (spec or operator settings), never constants here. Every function is pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from .api.instructdataset import TokenPricing

SECONDS_PER_HOUR = 3600.0


def token_cost(prompt_tokens: int, completion_tokens: int, pricing: TokenPricing | None) -> float:
    if pricing is None:
        return 0.0
    return (
        prompt_tokens * pricing.input_usd_per_million_tokens
        + completion_tokens * pricing.output_usd_per_million_tokens
    ) / 1e6


def resolve_gpu_price(spec_price: float | None, table: dict[str, float], gpu_type: str) -> float | None:
    """The spec's price wins; then the operator's table for the GPU type; None when neither knows."""
    return spec_price if spec_price is not None else table.get(gpu_type)


def gpu_hours(gpus: int, start: datetime | None, end: datetime) -> float:
    """GPU-hours of `gpus` devices held from start to end (0 before the start)."""
    if start is None or gpus <= 0:
        return 0.0
    return gpus * max(0.0, (end - start).total_seconds()) / SECONDS_PER_HOUR


def hourly_rate(gpus: int, gpu_hour_usd: float | None, pod_hour_usd: float | None = None, pods: int = 1) -> float:
    """US dollars per hour of `pods` pods holding `gpus` GPUs in total."""
    return gpus * (gpu_hour_usd or 0.0) + pods * (pod_hour_usd or 0.0)


def budget_deadline_seconds(budget_usd: float | None, rate_usd_per_hour: float) -> int | None:
    """How long the budget pays for at the rate; None when there is no budget or nothing is priced.

    Rounded down (never spend past the budget) but at least one second, the API's minimum.
    """
    if budget_usd is None or rate_usd_per_hour <= 0:
        return None
    return max(1, math.floor(budget_usd / rate_usd_per_hour * SECONDS_PER_HOUR))


def tighter_deadline(*deadlines: int | None) -> int | None:
    present = [d for d in deadlines if d is not None]
    return min(present) if present else None


def round_usd(value: float) -> float:
    # Status is compared before it is written: rounding keeps sub-cent drift from causing writes.
    return round(value, 4)


@dataclass(frozen=True)
class Ledger:
    """Time-priced work kept in a resource's status: what was counted, and up to when.

    Restarts, a new leader, a deleted or suspended child: each reconcile only adds the time after
    `until`, so nothing is counted twice and nothing counted is lost.
    """

    hours: float = 0.0  # GPU-hours (or teacher-hours)
    usd: float = 0.0
    until: datetime | None = None


def accrue(ledger: Ledger, *, since: datetime | None, end: datetime, units: float, usd_per_hour: float) -> Ledger:
    """The ledger advanced to `end` for work running since `since` (None: not running; only the clock moves).

    `units` are GPUs (for GPU-hours), `usd_per_hour` the price of all of them together. Time before
    the ledger's `until` is never counted; a ledger moving backwards is left as it is.
    """
    begin = since if ledger.until is None or (since is not None and since > ledger.until) else ledger.until
    if ledger.until is not None and end <= ledger.until:
        return ledger
    if since is None or begin is None or end <= begin:
        return Ledger(ledger.hours, ledger.usd, end)
    elapsed_h = (end - begin).total_seconds() / SECONDS_PER_HOUR
    return Ledger(ledger.hours + units * elapsed_h, ledger.usd + usd_per_hour * elapsed_h, end)
