"""The router's Prometheus metrics, in a registry of its own (several routers may share a
process in tests; the global registry would mix them)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from libs.common.metrics_server import LATENCY_BUCKETS

# A placement is a few milliseconds of the scheduler's, unless it waits for a busy worker.
PLACEMENT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Quantiles of the scheduler's absolute relative estimate error that /metrics shows.
ERROR_QUANTILES = (0.5, 0.9)

# Requests for models that are not deployed share one label value, so that a client cannot
# create a time series per made-up model name.
UNKNOWN_MODEL = "(unknown)"


class RouterMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "sllm_router_requests",
            "inference requests finished, by model and outcome (ok, error, cancelled)",
            ["model", "status"],
            registry=r,
        )
        self.errors = Counter(
            "sllm_router_request_errors",
            "inference requests that failed, by model and error code",
            ["model", "code"],
            registry=r,
        )
        self.ttft = Histogram(
            "sllm_router_time_to_first_token_seconds",
            "from the request's arrival to its first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "sllm_router_request_duration_seconds",
            "from the request's arrival to its end",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.placement = Histogram(
            "sllm_router_placement_seconds",
            "from a placement request to the scheduler's answer (an instance ready, loading "
            "or placed now), as this router waited for it",
            buckets=PLACEMENT_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "sllm_router_queue_wait_seconds",
            "time a request waited for a ready instance",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "sllm_router_queue_depth",
            "requests waiting for an instance of the model to start",
            ["model"],
            registry=r,
        )
        self.in_flight = Gauge(
            "sllm_router_requests_in_flight",
            "requests being generated right now",
            ["model"],
            registry=r,
        )
        self.cold_starts = Counter(
            "sllm_router_cold_starts",
            "instances this router waited for while they loaded (cold starts)",
            ["model"],
            registry=r,
        )
        self.tokens = Counter(
            "sllm_router_generated_tokens",
            "tokens generated and forwarded to clients",
            ["model"],
            registry=r,
        )

        self.estimate_error = Gauge(
            "sllm_scheduler_estimate_error_ratio",
            "|estimated - actual| / actual startup time of recent placements, by quantile",
            ["quantile"],
            registry=r,
        )
        self.estimate_bias = Gauge(
            "sllm_scheduler_estimate_bias_ratio",
            "median of (estimated - actual) / actual startup time of recent placements "
            "(> 0: pessimistic)",
            registry=r,
        )
        self.estimate_samples = Gauge(
            "sllm_scheduler_estimate_samples",
            "recent placements the estimate error statistics cover",
            registry=r,
        )

    def set_estimate_errors(self, errors: Sequence[float]) -> None:
        """Show the scheduler's recent relative estimate errors (from the cluster state)."""
        self.estimate_samples.set(len(errors))
        for q, value in error_quantiles(errors).items():
            self.estimate_error.labels(quantile=str(q)).set(value)
        self.estimate_bias.set(statistics.median(errors) if errors else 0.0)

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data


def error_quantiles(errors: Sequence[float]) -> dict[float, float]:
    """`ERROR_QUANTILES` of the absolute errors (nearest rank; 0 without errors)."""
    ordered = sorted(abs(e) for e in errors)
    if not ordered:
        return dict.fromkeys(ERROR_QUANTILES, 0.0)
    n = len(ordered)
    return {q: ordered[max(0, min(n, math.ceil(q * n)) - 1)] for q in ERROR_QUANTILES}
