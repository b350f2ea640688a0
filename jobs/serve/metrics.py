"""Prometheus metrics, in a registry of the app's own so that two servers in one process never clash.

HTTP metrics leave out the probes and /metrics itself: they would drown the real traffic. Requests
are labelled by the route that answered them (its template), never by the raw path, so that a scan
of random URLs adds no series.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNTRACKED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "alpaca_serve_requests", "HTTP requests answered, by route and status code.", ["path", "status"], registry=r
        )
        self.latency = Histogram(
            "alpaca_serve_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "alpaca_serve_time_to_first_token_seconds",
            "Time from request to the first generated text.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("alpaca_serve_prompt_tokens", "Prompt tokens processed.", registry=r)
        # prompt_tokens = prefill_tokens + prefix_cache_hit_tokens, once every admitted prompt is prefilled.
        self.prefill_tokens = Counter(
            "alpaca_serve_prefill_tokens", "Prompt tokens computed by prefill forward passes.", registry=r
        )
        self.prefix_cache_hit_tokens = Counter(
            "alpaca_serve_prefix_cache_hit_tokens",
            "Prompt tokens whose keys and values were reused from the prefix cache instead of prefilled.",
            registry=r,
        )
        self.generation_tokens = Counter("alpaca_serve_generation_tokens", "Tokens generated.", registry=r)
        self.rejected = Counter("alpaca_serve_rejected_requests", "Requests refused because the queue was full.", registry=r)
        self.batch_size = Histogram(
            "alpaca_serve_batch_size",
            "Sequences per forward pass.",
            ["phase"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.queue_depth = Gauge("alpaca_serve_queue_depth", "Sequences waiting for a batch slot.", registry=r)
        self.running = Gauge("alpaca_serve_running_sequences", "Sequences being decoded.", registry=r)
        self.abandoned = Histogram(
            "alpaca_serve_abandoned_sequence_forwards",
            "Forward passes a sequence still took part in after its client went away.",
            buckets=(0, 1, 2, 4, 8, 16, 64, 256),
            registry=r,
        )

    def watch_engine(self, waiting: Callable[[], int], running: Callable[[], int]) -> None:
        self.queue_depth.set_function(waiting)
        self.running.set_function(running)

    def observe_step(self, sequences: int, prefill_tokens: int, cached_tokens: int = 0) -> None:
        self.batch_size.labels("prefill" if prefill_tokens else "decode").observe(sequences)
        self.prefill_tokens.inc(prefill_tokens)
        self.prefix_cache_hit_tokens.inc(cached_tokens)


class HttpMetricsMiddleware:
    """Counts and times every response, streamed ones until their last byte."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACKED_PATHS:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = route_label(scope)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def route_label(scope: Scope) -> str:
    """The template of the route that answered ('/v1/models/{model:path}'), or 'unmatched'."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"
