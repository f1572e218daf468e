"""The worker's metrics as the engine drives them: one report per forward step (prefill, then
decode), every generated token counted, the gauges read off the hosted engine when scraped."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from libs.protocol.errors import UnavailableError
from services.worker.batch_policy import Limits
from services.worker.engine import Engine, Job
from services.worker.metrics import WorkerMetrics
from services.worker.sampling import Sampling

from .engine_jobs import collect

pytestmark = pytest.mark.unit


def value(m: WorkerMetrics, name: str, **labels: str) -> float:
    found = m.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_each_step_reports_its_batch_tokens_and_phase(tiny_model: Any) -> None:
    metrics = WorkerMetrics()
    engine = Engine(
        tiny_model, eos_ids=frozenset(), limits=Limits(4, 1 << 16, 64), on_step=metrics.stepped
    )
    engine.start()
    try:
        loop = asyncio.get_running_loop()
        handles = [
            engine.submit(Job([1, 77, 78, 79, 80], 6, Sampling(temperature=0.0)), loop)
            for _ in range(2)
        ]
        results = await asyncio.gather(*(collect(h) for h in handles))
    finally:
        await asyncio.to_thread(engine.stop, UnavailableError("test over"), 10.0)
    assert [len(r) for r in results] == [6, 6]
    assert value(metrics, "sllm_worker_generation_tokens_total") == 12
    prefill = value(metrics, "sllm_worker_forward_step_seconds_count", phase="prefill")
    decode = value(metrics, "sllm_worker_forward_step_seconds_count", phase="decode")
    steps = value(metrics, "sllm_worker_batch_size_count")
    assert prefill >= 1
    assert decode >= 5  # five more tokens each, after the first
    assert steps == prefill + decode
    # Both sequences in most steps: the batch size adds up to more than the steps.
    assert value(metrics, "sllm_worker_batch_size_sum") > steps


def test_gauges_follow_the_hosted_instance() -> None:
    metrics = WorkerMetrics()
    host = SimpleNamespace(hosted=None)
    metrics.watch(host)  # type: ignore[arg-type]
    assert value(metrics, "sllm_worker_kv_cache_usage_perc") == 0
    assert value(metrics, "sllm_worker_instances", state="ready") == 0
    engine = SimpleNamespace(
        sequences=3, waiting=2, kv_reserved=250, limits=SimpleNamespace(kv_tokens=1000)
    )
    host.hosted = SimpleNamespace(status="loading", runtime=None)
    assert value(metrics, "sllm_worker_instances", state="loading") == 1
    host.hosted = SimpleNamespace(
        status="ready", runtime=SimpleNamespace(engine=engine, task="generate")
    )
    assert value(metrics, "sllm_worker_instances", state="ready") == 1
    assert value(metrics, "sllm_worker_instances", state="loading") == 0
    assert value(metrics, "sllm_worker_num_requests_running") == 3
    assert value(metrics, "sllm_worker_num_requests_waiting") == 2
    assert value(metrics, "sllm_worker_kv_cache_usage_perc") == 0.25


def test_requests_and_loads() -> None:
    metrics = WorkerMetrics()
    metrics.request(7)
    metrics.first_token(0.2)
    metrics.finished(1.5)
    metrics.loaded("dram", 0.8)
    metrics.loaded("registry", 12.0)
    assert value(metrics, "sllm_worker_prompt_tokens_total") == 7
    assert value(metrics, "sllm_worker_time_to_first_token_seconds_count") == 1
    assert value(metrics, "sllm_worker_e2e_request_latency_seconds_sum") == 1.5
    assert value(metrics, "sllm_worker_load_seconds_count", tier="dram") == 1
    assert value(metrics, "sllm_worker_load_seconds_sum", tier="registry") == 12.0
