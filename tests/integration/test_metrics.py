"""Prometheus metrics through real services: a router (uvicorn), a scheduler, a storage service
and a worker with the tiny demo model, on real NATS and Valkey, in this process. Real traffic
(a deployment, a cold start fetched from the registry, completions), then every service's own
``/metrics`` port is scraped and its counters have moved; the router's ``/metrics/targets``
(Prometheus' HTTP service discovery) lists each of them, and each answers there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.common.embedded import EmbeddedNats, EmbeddedRedis
from libs.common.service import Service
from libs.protocol import Bus
from libs.protocol.endpoints import SCHED_DEPLOY
from libs.protocol.messages import DeploymentSpec, DeployRequest
from services.scheduler.app import SchedulerService
from services.scheduler.settings import SchedulerSettings
from services.storage.app import StorageService
from services.storage.settings import StorageSettings
from services.worker.app import WorkerService
from services.worker.settings import WorkerSettings

from .router_stubs import RunningRouter, router_settings, running_router
from .service_processes import FAST_HEARTBEAT, service_env, storage_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

MODEL = "tiny"
NODE = "n-metrics"
KEY = "k-metrics"
AUTH = {"Authorization": f"Bearer {KEY}"}
WAIT_S = 120.0
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Cluster:
    router: RunningRouter
    scheduler: SchedulerService
    storage: StorageService
    worker: WorkerService
    http: httpx.AsyncClient

    def services(self) -> dict[str, Service]:
        return {"scheduler": self.scheduler, "storage": self.storage, "worker": self.worker}


@pytest.fixture
async def cluster(
    nats_server: EmbeddedNats,
    redis_server: EmbeddedRedis,
    root: str,
    checkpoint: Path,
    tmp_path: Path,
) -> AsyncIterator[Cluster]:
    common = {"SLLM_METRICS_KEYS": KEY, **FAST_HEARTBEAT}
    env = service_env(nats_server.url, redis_server.url, root, **common)
    async with AsyncExitStack() as stack:
        storage = StorageService(
            StorageSettings.from_env(
                storage_env(
                    nats_server.url,
                    redis_server.url,
                    root,
                    node=NODE,
                    ssd=tmp_path / "ssd",
                    dram=tmp_path / "dram",
                    allow=str(checkpoint.parent),
                    **common,
                )
            )
        )
        worker = WorkerService(
            WorkerSettings.from_env({**env, "SLLM_INSTANCE_ID": "w-metrics", "SLLM_NODE_ID": NODE})
        )
        # No prefetch on deploy: the first load fetches from the registry itself.
        scheduler = SchedulerService(
            SchedulerSettings.from_env({**env, "SLLM_PREFETCH_REPLICAS": "0"})
        )
        for svc in (storage, worker, scheduler):
            await svc.start()
            stack.push_async_callback(svc.stop, "test over")
        settings = router_settings(
            nats_server.url,
            redis_server.url,
            root,
            SLLM_START_TIMEOUT=str(WAIT_S),
            SLLM_REGISTRY_ALLOW=str(checkpoint.parent),
            SLLM_METRICS_KEYS=KEY,
        )
        router = await stack.enter_async_context(running_router(settings))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=router.url, timeout=httpx.Timeout(WAIT_S))
        )
        yield Cluster(router, scheduler, storage, worker, http)


async def scrape(addr: str, *, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.get(
            f"http://{addr}/metrics", headers=AUTH if headers is None else headers
        )


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(seen: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s series that have ``labels`` (0 when there is none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in seen.items() if n == name and want <= set(ls))


async def metrics_of(svc: Service) -> Samples:
    resp = await scrape(svc.metrics_addr)
    assert resp.status_code == 200, resp.text
    return samples(resp.text)


async def eventually(svc: Service, check: Any, what: str) -> Samples:
    """``svc``'s metrics once ``check(samples)`` holds (the news may still be on its way)."""
    deadline = time.monotonic() + 15
    while True:
        seen = await metrics_of(svc)
        if check(seen):
            return seen
        assert time.monotonic() < deadline, f"{what}: {sorted(k for k in seen if 'sllm' in k[0])}"
        await asyncio.sleep(0.1)


async def test_every_service_counts_real_traffic_and_is_discovered(
    cluster: Cluster, bus: Bus, checkpoint: Path
) -> None:
    spec = DeploymentSpec(name=MODEL, checkpoint_uri=checkpoint.as_uri(), keep_alive_s=300)
    await bus.request(SCHED_DEPLOY, DeployRequest(spec=spec), timeout=10)
    for i in range(3):  # the first one is a cold start; the others find the instance warm
        resp = await cluster.http.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": f"Once upon a time {i}", "max_tokens": 8},
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] > 0

    # The worker: tokens, prompt tokens, engine steps, latency, a load from the registry.
    worker = await eventually(
        cluster.worker,
        lambda s: value(s, "sllm_worker_e2e_request_latency_seconds_count") >= 3,
        "three finished requests",
    )
    assert value(worker, "sllm_worker_generation_tokens_total") >= 3
    assert value(worker, "sllm_worker_prompt_tokens_total") > 0
    assert value(worker, "sllm_worker_batch_size_count") > 0
    assert value(worker, "sllm_worker_forward_step_seconds_count", phase="prefill") >= 3
    assert value(worker, "sllm_worker_forward_step_seconds_count", phase="decode") > 0
    assert value(worker, "sllm_worker_time_to_first_token_seconds_count") == 3
    assert value(worker, "sllm_worker_load_seconds_count", tier="registry") == 1
    assert value(worker, "sllm_worker_load_seconds_sum", tier="registry") > 0
    assert value(worker, "sllm_worker_instances", state="ready") == 1
    assert value(worker, "sllm_worker_instances", state="loading") == 0
    assert value(worker, "sllm_worker_num_requests_running") == 0  # all done
    assert 0 <= value(worker, "sllm_worker_kv_cache_usage_perc") <= 1

    # The scheduler: the cold start's placement, and its estimate against the load's report.
    sched = await eventually(
        cluster.scheduler,
        lambda s: value(s, "sllm_scheduler_load_estimate_error_ratio_count", tier="registry") >= 1,
        "the load's estimate error",
    )
    assert value(sched, "sllm_scheduler_placement_seconds_count") > 0
    assert value(sched, "sllm_scheduler_placement_decisions_total", decision="cold") == 1

    # The storage service: the registry fetch into the SSD tier, and its tiers' use.
    storage = await metrics_of(cluster.storage)
    assert value(storage, "sllm_storage_fetched_bytes_total", tier="ssd") > 0
    assert value(storage, "sllm_storage_fetch_duration_seconds_count", source_tier="registry") == 1
    assert value(storage, "sllm_storage_ensure_requests_total", source_tier="registry") == 1
    assert value(storage, "sllm_storage_used_bytes", tier="ssd") > 0
    assert value(storage, "sllm_storage_capacity_bytes", tier="dram") > 0

    # The router's own /metrics still counts its side.
    router = samples((await cluster.http.get("/metrics", headers=AUTH)).text)
    assert value(router, "sllm_router_requests_total", status="ok") == 3


async def test_the_router_serves_http_service_discovery_of_every_metrics_port(
    cluster: Cluster,
) -> None:
    assert (await cluster.http.get("/metrics/targets")).status_code == 401  # keyed
    deadline = time.monotonic() + 10
    while True:  # each service's heartbeat carries its address (every 0.2 s here)
        resp = await cluster.http.get("/metrics/targets", headers=AUTH)
        assert resp.status_code == 200, resp.text
        groups = resp.json()
        found = {g["labels"]["service"]: g for g in groups}
        if {"router", "scheduler", "worker", "storage"} <= set(found):
            break
        assert time.monotonic() < deadline, groups
        await asyncio.sleep(0.1)
    for kind, svc in cluster.services().items():
        group = next(g for g in groups if g["labels"]["instance"] == svc.instance_id)
        assert group["labels"]["service"] == kind
        assert group["targets"] == [svc.metrics_addr]
        if kind != "scheduler":
            assert group["labels"]["node"] == NODE
        answer = await scrape(group["targets"][0])
        assert answer.status_code == 200
        assert f"sllm_{kind}_" in answer.text
        # Scrape ports ask for the metrics key too.
        assert (await scrape(group["targets"][0], headers={})).status_code == 401
    # Every group is in the http_sd_configs format.
    for g in groups:
        assert set(g) == {"targets", "labels"}
        assert all(isinstance(t, str) and ":" in t for t in g["targets"])
