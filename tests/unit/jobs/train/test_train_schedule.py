from __future__ import annotations

import pytest

from alpaca_operator.api.finetune import Scheduler
from alpaca_jobs.train.schedule import learning_rate, warmup_steps


def rates(kind: Scheduler, total: int = 100, warmup: float = 0.1) -> list[float]:
    return [learning_rate(s, total_steps=total, peak=1.0, warmup_ratio=warmup, kind=kind) for s in range(total)]


def test_warmup_rises_linearly_from_the_first_step() -> None:
    assert warmup_steps(100, 0.03) == 3
    assert rates(Scheduler.COSINE)[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])


def test_cosine_starts_at_peak_and_decays_to_near_zero() -> None:
    r = rates(Scheduler.COSINE)
    assert r[10] == pytest.approx(1.0)
    assert r[55] == pytest.approx(0.5, abs=0.02)
    assert 0 < r[-1] < 0.002
    assert all(a >= b for a, b in zip(r[10:], r[11:]))


def test_linear_and_constant() -> None:
    assert rates(Scheduler.LINEAR)[55] == pytest.approx(0.5, abs=0.02)
    assert set(rates(Scheduler.CONSTANT)[10:]) == {1.0}


def test_no_warmup() -> None:
    assert rates(Scheduler.COSINE, warmup=0.0)[0] == 1.0
