"""The scheduler's DRAM-tier work against real NATS and Redis: prefetch on deploy, calibration
from load reports, estimate errors, and the round-robin baseline policy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.protocol import Bus, Keys, route
from libs.protocol.endpoints import SCHED_DEPLOY, SCHED_PLACE, STORAGE_ENSURE
from libs.protocol.events import EstimateEvent, LoadReportEvent, PlacementEvent, PrefetchEvent
from libs.protocol.messages import (
    DeploymentSpec,
    DeployRequest,
    EnsureReply,
    EnsureRequest,
    PlaceRequest,
)
from libs.protocol.state import NodeRecord
from services.scheduler.app import SchedulerService
from services.scheduler.settings import SchedulerSettings
from tests.integration.test_scheduler import _add_worker

pytestmark = pytest.mark.integration

GB = 10**9
Start = Callable[..., Awaitable[SchedulerService]]


@pytest.fixture
async def start_scheduler(nats_server: Any, redis_server: Any, root: str) -> AsyncIterator[Start]:
    running: list[SchedulerService] = []

    async def start(**env: str) -> SchedulerService:
        settings = SchedulerSettings.from_env(
            {
                "SLLM_NATS_URL": nats_server.url,
                "SLLM_REDIS_URL": redis_server.url,
                "SLLM_ROOT": root,
                "SLLM_HOUSEKEEPING_INTERVAL": "3600",
                # These tests write workers and tiers into the state directly, without the news
                # real ones send: every placement reads its own snapshot.
                "SLLM_SNAPSHOT_MAX_AGE": "0",
                **env,
            }
        )
        svc = SchedulerService(settings)
        await svc.start()
        running.append(svc)
        return svc

    yield start
    for svc in running:
        await svc.stop("test")


class Seen:
    def __init__(self) -> None:
        self.items: list[Any] = []

    async def add(self, item: Any) -> None:
        self.items.append(item)

    async def wait(self, count: int = 1) -> list[Any]:
        deadline = time.monotonic() + 10
        while len(self.items) < count:
            assert time.monotonic() < deadline, f"only {len(self.items)} of {count}"
            await asyncio.sleep(0.02)
        return self.items


async def _watch(bus: Bus, kind: str, cls: Any) -> Seen:
    seen = Seen()
    await bus.subscribe(bus.subjects.event(kind), cls, seen.add, json=True)
    return seen


async def _deploy(bus: Bus, name: str) -> None:
    spec = DeploymentSpec(name=name, checkpoint_uri="file:///nowhere")
    await bus.request(SCHED_DEPLOY, DeployRequest(spec=spec))


async def test_deploy_prefetches_into_dram_of_the_likely_node(
    start_scheduler: Start, bus: Bus, state: ClusterState, redis: aioredis.Redis, keys: Keys
) -> None:
    await start_scheduler(SLLM_PREFETCH_REPLICAS="1")
    prefetches = await _watch(bus, "scheduler.prefetch", PrefetchEvent)
    asked: list[tuple[str, EnsureRequest]] = []
    for node in ("n-busy", "n-free"):
        await state.register_node(
            NodeRecord(node_id=node, ssd_dir="/s", dram_dir="/d", dram_capacity_bytes=8 * GB)
        )

        async def ensure(req: EnsureRequest, node: str = node) -> EnsureReply:
            asked.append((node, req))
            return EnsureReply(
                model=req.model, path="/d/x", tier="dram", source_tier="ssd", bytes=1, seconds=0
            )

        await bus.serve("storage", [route(STORAGE_ENSURE, ensure, node_id=node)])
    await _add_worker(bus, state, redis, keys, "w-busy", "n-busy")
    await _add_worker(bus, state, redis, keys, "w-free", "n-free")
    assert await state.reserve_worker("w-busy", "i-other")
    await state.set_locality("n-busy", "ssd", "m", GB)  # an SSD copy does not beat a free worker

    await _deploy(bus, "m")
    (ev,) = await prefetches.wait()
    assert (ev.model, ev.node_ids, ev.replicas) == ("m", ["n-free"], 1)
    deadline = time.monotonic() + 10
    while not asked:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert [(n, r.model, r.tier) for n, r in asked] == [("n-free", "m", "dram")]


async def test_no_prefetch_when_disabled(
    start_scheduler: Start, bus: Bus, state: ClusterState, redis: aioredis.Redis, keys: Keys
) -> None:
    await start_scheduler(SLLM_PREFETCH_REPLICAS="0")
    prefetches = await _watch(bus, "scheduler.prefetch", PrefetchEvent)
    await _add_worker(bus, state, redis, keys, "w0", "n0")
    await _deploy(bus, "m")
    await asyncio.sleep(0.3)
    assert prefetches.items == []


async def test_load_reports_calibrate_estimates_and_measure_their_error(
    start_scheduler: Start, bus: Bus, state: ClusterState, redis: aioredis.Redis, keys: Keys
) -> None:
    await start_scheduler(SLLM_PREFETCH_REPLICAS="0")
    placed = await _watch(bus, "scheduler.placed", PlacementEvent)
    estimates = await _watch(bus, "scheduler.estimate", EstimateEvent)
    await _add_worker(bus, state, redis, keys, "w0", "n0")
    await state.set_locality("n0", "ssd", "m", GB)
    await state.set_bandwidth("n0", "ssd", 1 * GB)
    await _deploy(bus, "m")

    first = await bus.request(SCHED_PLACE, PlaceRequest(model="m"))
    assert first.estimated_startup_s == pytest.approx(1.0)  # 1 GB at the measured 1 GB/s
    # The worker reports the real load: 3 s in all, 1 s of it a fresh worker's imports;
    # moving the bytes took 1.5 s, building the model 0.5 s.
    report = LoadReportEvent(
        instance_id=first.instance_id,
        model="m",
        worker_id="w0",
        node_id="n0",
        source_tier="ssd",
        bytes=GB,
        seconds=3.0,
        one_off_s=1.0,
        phases={"ensure": 0.1, "startup": 1.0, "read": 1.4, "build": 0.5},
    )
    await bus.emit(report)
    (err,) = await estimates.wait()
    assert (err.estimated_s, err.actual_s) == (pytest.approx(1.0), pytest.approx(2.0))
    assert err.error_ratio == pytest.approx(-0.5)
    assert await state.estimate_errors() == [pytest.approx(-0.5)]
    ((nbytes, data_s, fixed_s),) = (await state.load_samples(["n0"], ["ssd"]))[("n0", "ssd")]
    assert nbytes == GB
    assert data_s == pytest.approx(1.5)
    assert fixed_s == pytest.approx(0.5)
    await bus.emit(report)  # a duplicate (or a second scheduler's copy) counts once
    await asyncio.sleep(0.2)
    assert len(estimates.items) == 1

    # The next placement of the same size from the same tier is estimated as it went.
    await state.release_worker("w0", first.instance_id)
    rec = await state.get_instance(first.instance_id)
    assert rec is not None
    await state.delete_instance(rec)
    second = await bus.request(SCHED_PLACE, PlaceRequest(model="m"))
    assert second.estimated_startup_s == pytest.approx(2.0)
    await placed.wait(2)


async def test_round_robin_policy_ignores_locality(
    start_scheduler: Start, bus: Bus, state: ClusterState, redis: aioredis.Redis, keys: Keys
) -> None:
    await start_scheduler(SLLM_PLACEMENT_POLICY="round_robin", SLLM_PREFETCH_REPLICAS="0")
    for w in ("w0", "w1", "w2"):
        await _add_worker(bus, state, redis, keys, w, f"n-{w}")
    chosen = []
    for model in ("a", "b", "c"):
        await state.set_locality("n-w0", "dram", model, GB)  # node of w0 holds them all
        await _deploy(bus, model)
        chosen.append((await bus.request(SCHED_PLACE, PlaceRequest(model=model))).worker_id)
    assert sorted(chosen) == ["w0", "w1", "w2"]  # one each, not all on w0
