from __future__ import annotations

from prometheus_client import generate_latest

from alpaca_operator.metrics import Metrics


def test_resources_by_phase_cost_and_counters() -> None:
    metrics = Metrics()
    metrics.observed(("FineTune", "a", "x"), "Running", 3.5)
    metrics.observed(("FineTune", "a", "y"), "Running", 1.0)
    metrics.observed(("ModelServer", "a", "z"), "Ready", 2.0)
    metrics.reconciled("FineTune")
    metrics.error("FineTune")
    metrics.forget(("FineTune", "a", "y"))

    text = generate_latest(metrics.registry).decode()
    assert 'alpaca_resources{kind="FineTune",phase="Running"} 1.0' in text
    assert 'alpaca_cost_usd{kind="FineTune"} 3.5' in text
    assert 'alpaca_reconciles_total{kind="FineTune"} 1.0' in text
    assert 'alpaca_reconcile_errors_total{kind="FineTune"} 1.0' in text
