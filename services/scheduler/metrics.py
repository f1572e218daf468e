"""The scheduler's Prometheus metrics, in a registry of its own (several schedulers may share a
process in tests), served on its metrics port (`libs.common.metrics_server`).

Cluster-wide gauges (instances, workers) are what this replica's last housekeeping pass read:
every replica shows the same numbers, so a dashboard takes their ``max``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from libs.protocol.state import InstanceRecord, WorkerRecord

# A placement is a few milliseconds, unless it reserves against a busy cluster or waits.
PLACEMENT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# |estimated - actual| / actual load time: 0.1 is a good estimate, 1 one off by the load itself.
ERROR_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
INSTANCE_STATES = ("loading", "ready", "stopping", "failed")
WORKER_STATES = ("free", "busy", "dead")

# How a placement was answered (`PlaceHandler`, `BusyWorkerStarts`):
# - warm: a ready instance; loading: a load under way (the request waits for it);
# - scale_out: another instance beside loads under way (it would be ready sooner);
# - wait_turn: "not yet", other cold models waited longer for a free worker;
# - cold: a cold start on a free worker; busy_wait / migration: a cold start on a busy worker,
#   waiting for it or migrating its generations away first; pending: a request that joined
#   such a start under way.
Decision = Literal[
    "warm", "loading", "scale_out", "wait_turn", "cold", "busy_wait", "migration", "pending"
]


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.placement = Histogram(
            "sllm_scheduler_placement_seconds",
            "time the scheduler took to answer a placement request (sched.place)",
            buckets=PLACEMENT_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "sllm_scheduler_placement_decisions",
            "placement answers by decision (warm, loading, scale_out, wait_turn, cold, "
            "busy_wait, migration, pending)",
            ["decision"],
            registry=r,
        )
        self.estimate_error = Histogram(
            "sllm_scheduler_load_estimate_error_ratio",
            "|estimated - actual| / actual load time of placed instances, by source tier",
            ["tier"],
            buckets=ERROR_BUCKETS,
            registry=r,
        )
        self.scaled = Counter(
            "sllm_scheduler_scale_events",
            "instances the autoscaler started (up) or stopped (down)",
            ["direction"],
            registry=r,
        )
        self.instances = Gauge(
            "sllm_scheduler_instances",
            "model instances in the cluster state, by state",
            ["state"],
            registry=r,
        )
        self.workers = Gauge(
            "sllm_scheduler_workers",
            "registered workers: free, busy (reserved for an instance) or dead (silent)",
            ["state"],
            registry=r,
        )

    def decided(self, decision: Decision) -> None:
        self.decisions.labels(decision=decision).inc()

    def load_reported(self, tier: str, error_ratio: float) -> None:
        self.estimate_error.labels(tier=tier).observe(abs(error_ratio))

    def scale(self, direction: Literal["up", "down"]) -> None:
        self.scaled.labels(direction=direction).inc()

    def cluster(self, workers: Iterable[WorkerRecord], instances: Iterable[InstanceRecord]) -> None:
        """The instances by state and the workers by state, as a pass read them."""
        by_state = dict.fromkeys(INSTANCE_STATES, 0)
        for i in instances:
            by_state[i.status] = by_state.get(i.status, 0) + 1
        for state, n in by_state.items():
            self.instances.labels(state=state).set(n)
        counts = dict.fromkeys(WORKER_STATES, 0)
        for w in workers:
            counts["dead" if not w.alive else "busy" if w.instance_id else "free"] += 1
        for state, n in counts.items():
            self.workers.labels(state=state).set(n)
