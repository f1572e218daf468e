"""A cold model whose best worker is busy, against real NATS and Redis with stand-in workers:
the scheduler weighs waiting, another worker and a live migration, and carries the choice out.

The cluster: worker w0 (node n-w0: "m" and "a" in DRAM) serves "a" and is busy with one
generation; w1 (node n-w1: "a" in DRAM, "m" only in the registry, seconds away) is free.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.protocol import Bus, Keys
from libs.protocol.endpoints import SCHED_DEPLOY, SCHED_PLACE
from libs.protocol.errors import UnavailableError
from libs.protocol.events import ColdStartEvent
from libs.protocol.messages import (
    DeploymentSpec,
    DeployRequest,
    PlaceReply,
    PlaceRequest,
    RunningGeneration,
)
from services.scheduler.app import SchedulerService

from .scheduler_stubs import HostingWorker, hosting_worker, running_scheduler

pytestmark = pytest.mark.integration

GB = 10**9


@pytest.fixture
async def scheduler(nats_server, redis_server, root: str) -> AsyncIterator[SchedulerService]:
    async with running_scheduler(
        nats_server.url, redis_server.url, root, SLLM_PREFETCH_REPLICAS="0"
    ) as svc:
        yield svc


async def _cluster(
    bus: Bus, state: ClusterState, redis: aioredis.Redis, keys: Keys, remaining: int
) -> tuple[HostingWorker, HostingWorker, str]:
    """w0 runs "a" with one generation that has ``remaining`` tokens to go; w1 is free."""
    w0 = await hosting_worker(bus, state, redis, keys, "w0", auto_ready=True)
    for name in ("a", "m"):
        spec = DeploymentSpec(name=name, checkpoint_uri="file:///nowhere", keep_alive_s=300)
        await bus.request(SCHED_DEPLOY, DeployRequest(spec=spec))
    await state.set_locality("n-w0", "dram", "m", GB)
    await state.set_locality("n-w0", "dram", "a", GB)
    await state.set_locality("n-w1", "dram", "a", GB)
    placed = await bus.request(SCHED_PLACE, PlaceRequest(model="a"))
    assert placed.worker_id == "w0"
    w1 = await hosting_worker(bus, state, redis, keys, "w1", auto_ready=True)
    w0.busy.add(placed.instance_id)
    w0.running = [
        RunningGeneration(
            request_id="r1",
            context_tokens=120,
            remaining_tokens=remaining,
            prefill_tokens=100,
            prefill_s=0.1,
            decode_s_per_token=0.02,
        )
    ]
    return w0, w1, placed.instance_id


async def _decisions(bus: Bus) -> list[ColdStartEvent]:
    seen: list[ColdStartEvent] = []

    async def on_event(e: ColdStartEvent) -> None:
        seen.append(e)

    await bus.subscribe(
        bus.subjects.event("scheduler.coldstart"), ColdStartEvent, on_event, json=True
    )
    return seen


async def _place(bus: Bus, model: str, timeout: float = 15.0) -> PlaceReply:
    """Ask until placed, as a router does (the scheduler answers "unavailable" meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await bus.request(SCHED_PLACE, PlaceRequest(model=model), timeout=10.0)
        except UnavailableError:
            assert time.monotonic() < deadline, "never placed"
            await asyncio.sleep(0.05)


async def test_a_long_generation_migrates_away_and_the_cold_model_starts_in_its_place(
    scheduler, bus: Bus, state: ClusterState, redis, keys
) -> None:
    decisions = await _decisions(bus)
    w0, w1, a_iid = await _cluster(bus, state, redis, keys, remaining=2000)  # ~40 s to go

    placed = await _place(bus, "m")

    assert (placed.worker_id, placed.source_tier) == ("w0", "dram")
    (mig,) = w0.migrations
    assert (mig.instance_id, mig.destination_worker_id) == (a_iid, "w1")
    assert [r.model for r in w1.loads] == ["a"]  # "a" went where it loads fast
    assert [r.model for r in w0.loads] == ["a", "m"]
    assert [(u.instance_id, u.reason) for u in w0.unloads] == [(a_iid, "migrated")]
    (a_now,) = await state.instances("a")
    assert a_now.worker_id == "w1"
    (d,) = decisions
    assert (d.chosen.kind, d.chosen.worker_id, d.chosen.destination) == ("migrate", "w0", "w1")
    assert d.moved == ["r1"]
    assert {o.kind for o in d.options} == {"migrate", "wait", "elsewhere"}
    wait = next(o for o in d.options if o.kind == "wait")
    assert wait.startup_s > d.chosen.startup_s
    assert 0 < d.chosen.pause_s <= scheduler.sched.migration_max_pause


async def test_a_generation_about_to_end_is_waited_for(
    scheduler, bus: Bus, state: ClusterState, redis, keys
) -> None:
    decisions = await _decisions(bus)
    w0, w1, a_iid = await _cluster(bus, state, redis, keys, remaining=3)

    async def finish_later() -> None:
        await asyncio.sleep(0.6)
        w0.busy.clear()  # the generation ends

    ending = asyncio.create_task(finish_later())
    placed = await _place(bus, "m")
    await ending

    assert placed.worker_id == "w0"
    assert w0.migrations == []
    assert [r.model for r in w0.loads] == ["a", "m"]
    assert w1.loads == []
    refused = [u for u in w0.unloads if u.instance_id == a_iid]
    assert len(refused) >= 2  # asked while busy (refused), then once it was idle
    assert all(u.only_if_idle and u.ignore_keep_alive for u in refused)
    assert refused[-1].reason == "preempted for m"
    (d,) = decisions
    assert (d.chosen.kind, d.chosen.worker_id) == ("wait", "w0")


async def test_a_busy_worker_that_never_frees_is_waited_for_only_so_long(
    scheduler, bus: Bus, state: ClusterState, redis, keys
) -> None:
    decisions = await _decisions(bus)
    _w0, _w1, a_iid = await _cluster(bus, state, redis, keys, remaining=3)  # but it never ends

    t0 = time.monotonic()
    placed = await _place(bus, "m")

    # The wait's bound: twice its estimate plus 2 s; then the free worker takes it.
    assert time.monotonic() - t0 >= 2.0
    assert (placed.worker_id, placed.source_tier) == ("w1", "registry")
    assert await state.get_instance(a_iid) is not None  # never stopped while busy
    (d,) = decisions
    assert d.chosen.kind == "wait"


async def test_a_worker_without_measured_speeds_is_not_weighed(
    scheduler, bus: Bus, state: ClusterState, redis, keys
) -> None:
    decisions = await _decisions(bus)
    w0, _w1, _ = await _cluster(bus, state, redis, keys, remaining=2000)
    w0.running = [w0.running[0].model_copy(update={"decode_s_per_token": None})]

    placed = await bus.request(SCHED_PLACE, PlaceRequest(model="m"))

    assert placed.worker_id == "w1"
    assert w0.migrations == []
    assert w0.unloads == []
    (d,) = decisions
    assert d.chosen.kind == "elsewhere"
    assert [o.kind for o in d.options] == ["elsewhere"]
