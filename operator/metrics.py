"""Prometheus metrics of the operator: reconciles and errors by kind, resources by phase, cost so far."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter as PromCounter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

Key = tuple[str, str, str]


class Metrics(Collector):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._reconciles = PromCounter("alpaca_reconciles", "Reconciles run, by kind.", ["kind"], registry=self.registry)
        self._errors = PromCounter("alpaca_reconcile_errors", "Reconciles that raised, by kind.", ["kind"], registry=self.registry)
        self._lock = threading.Lock()
        self._resources: dict[Key, tuple[str, float]] = {}
        self.registry.register(self)

    def reconciled(self, kind: str) -> None:
        self._reconciles.labels(kind).inc()

    def error(self, kind: str) -> None:
        self._errors.labels(kind).inc()

    def observed(self, key: Key, phase: str | None, cost_usd: float | None) -> None:
        with self._lock:
            self._resources[key] = (phase or "Unknown", float(cost_usd or 0.0))

    def forget(self, key: Key) -> None:
        with self._lock:
            self._resources.pop(key, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            snapshot = dict(self._resources)
        by_phase: Counter[tuple[str, str]] = Counter()
        cost: Counter[str] = Counter()
        for (kind, _, _), (phase, usd) in snapshot.items():
            by_phase[(kind, phase)] += 1
            cost[kind] += usd
        resources = GaugeMetricFamily("alpaca_resources", "Resources by kind and phase.", labels=["kind", "phase"])
        for (kind, phase), count in sorted(by_phase.items()):
            resources.add_metric([kind, phase], count)
        yield resources
        spent = GaugeMetricFamily("alpaca_cost_usd", "Cost so far of the existing resources, US dollars.", labels=["kind"])
        for kind, usd in sorted(cost.items()):
            spent.add_metric([kind], usd)
        yield spent

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
