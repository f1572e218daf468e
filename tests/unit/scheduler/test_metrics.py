"""The scheduler's metrics: the cluster's instances and workers by state, decisions, estimate
errors (absolute) and scale events."""

from __future__ import annotations

import pytest

from libs.protocol.state import InstanceRecord, WorkerRecord
from services.scheduler.metrics import SchedulerMetrics

pytestmark = pytest.mark.unit


def value(m: SchedulerMetrics, name: str, **labels: str) -> float:
    found = m.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def _instance(iid: str, status: str) -> InstanceRecord:
    return InstanceRecord(
        instance_id=iid,
        model="m",
        worker_id="w",
        node_id="n",
        status=status,  # type: ignore[arg-type]
        created_at=0.0,
    )


def test_a_pass_sets_the_instances_and_workers_by_state() -> None:
    m = SchedulerMetrics()
    workers = [
        WorkerRecord(worker_id="w0", node_id="n", device="cpu", alive=True),
        WorkerRecord(worker_id="w1", node_id="n", device="cpu", alive=True, instance_id="i1"),
        WorkerRecord(worker_id="w2", node_id="n", device="cpu", alive=False),
    ]
    m.cluster(workers, [_instance("i1", "ready"), _instance("i2", "loading")])
    assert value(m, "sllm_scheduler_instances", state="ready") == 1
    assert value(m, "sllm_scheduler_instances", state="loading") == 1
    assert value(m, "sllm_scheduler_workers", state="free") == 1
    assert value(m, "sllm_scheduler_workers", state="busy") == 1
    assert value(m, "sllm_scheduler_workers", state="dead") == 1
    m.cluster(workers[:1], [])  # states that emptied go to 0, not stale
    assert value(m, "sllm_scheduler_instances", state="ready") == 0
    assert value(m, "sllm_scheduler_workers", state="dead") == 0


def test_decisions_errors_and_scaling() -> None:
    m = SchedulerMetrics()
    m.decided("cold")
    m.decided("warm")
    m.decided("warm")
    m.load_reported("ssd", -0.4)  # an optimistic estimate: its size counts
    m.scale("up")
    assert value(m, "sllm_scheduler_placement_decisions_total", decision="warm") == 2
    assert value(m, "sllm_scheduler_load_estimate_error_ratio_sum", tier="ssd") == 0.4
    assert value(m, "sllm_scheduler_scale_events_total", direction="up") == 1
