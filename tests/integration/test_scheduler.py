"""The scheduler service against real NATS and Redis, with stand-in workers on the bus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.protocol import Bus, Keys, route
from libs.protocol.endpoints import (
    SCHED_DEPLOY,
    SCHED_PLACE,
    SCHED_UNDEPLOY,
    WORKER_LOAD,
    WORKER_UNLOAD,
)
from libs.protocol.errors import NotFoundError, UnavailableError
from libs.protocol.events import (
    InstanceIdleEvent,
    PlacementEvent,
    ScaledEvent,
)
from libs.protocol.messages import (
    DemandReport,
    DeploymentSpec,
    DeployRequest,
    ModelDemand,
    PlaceRequest,
    UndeployRequest,
)
from services.scheduler.app import SchedulerService
from services.scheduler.settings import SchedulerSettings

from .probes import until
from .scheduler_stubs import StandInWorker, hosting_worker, mark_ready, running_scheduler

pytestmark = pytest.mark.integration


@pytest.fixture
async def scheduler(nats_server, redis_server, root: str) -> AsyncIterator[SchedulerService]:
    async with running_scheduler(nats_server.url, redis_server.url, root) as svc:
        yield svc


async def _add_worker(
    bus: Bus, state: ClusterState, redis: aioredis.Redis, keys: Keys, wid: str, node: str, **kw
) -> StandInWorker:
    worker = StandInWorker(wid, **kw)
    await state.register_worker(wid, node, "cpu")
    await redis.set(keys.alive("worker", wid), b"{}", px=60_000)
    await bus.serve(
        "worker",
        [
            route(WORKER_LOAD, worker.load, worker_id=wid),
            route(WORKER_UNLOAD, worker.unload, worker_id=wid),
        ],
    )
    return worker


async def _deploy(bus: Bus, name: str = "m") -> None:
    spec = DeploymentSpec(name=name, checkpoint_uri="file:///nowhere")
    reply = await bus.request(SCHED_DEPLOY, DeployRequest(spec=spec))
    assert reply.created


async def test_place_unknown_model_is_not_found(scheduler, bus: Bus) -> None:
    with pytest.raises(NotFoundError):
        await bus.request(SCHED_PLACE, PlaceRequest(model="nope"))


async def test_placement_prefers_dram_then_ssd_then_registry_and_reserves(
    scheduler, bus: Bus, state: ClusterState, redis, keys
) -> None:
    events: list[PlacementEvent] = []

    async def on_event(e: PlacementEvent) -> None:
        events.append(e)

    await bus.subscribe(bus.subjects.event("scheduler.placed"), PlacementEvent, on_event, json=True)
    w_reg = await _add_worker(bus, state, redis, keys, "w-reg", "n-reg")
    w_ssd = await _add_worker(bus, state, redis, keys, "w-ssd", "n-ssd")
    w_dram = await _add_worker(bus, state, redis, keys, "w-dram", "n-dram")
    for model in ("a", "b", "c", "d"):
        await state.set_locality("n-ssd", "ssd", model, 10**9)
        await state.set_locality("n-dram", "dram", model, 10**9)
        await state.set_locality("n-dram", "ssd", model, 10**9)
        await _deploy(bus, model)

    first = await bus.request(SCHED_PLACE, PlaceRequest(model="a"))
    assert (first.worker_id, first.source_tier, first.status) == ("w-dram", "dram", "loading")
    assert [r.model for r in w_dram.loads] == ["a"]
    rec = await state.get_instance(first.instance_id)
    assert rec is not None
    assert rec.status == "loading"
    assert {w.worker_id: w.instance_id for w in await state.workers()}[
        "w-dram"
    ] == first.instance_id

    # A second request while the load runs joins it instead of starting another load.
    again = await bus.request(SCHED_PLACE, PlaceRequest(model="a"))
    assert again.instance_id == first.instance_id
    assert len(w_dram.loads) == 1

    second = await bus.request(SCHED_PLACE, PlaceRequest(model="b"))
    assert (second.worker_id, second.source_tier) == ("w-ssd", "ssd")
    third = await bus.request(SCHED_PLACE, PlaceRequest(model="c"))
    assert (third.worker_id, third.source_tier) == ("w-reg", "registry")
    assert [len(w.loads) for w in (w_dram, w_ssd, w_reg)] == [1, 1, 1]

    with pytest.raises(UnavailableError, match="no free worker"):
        await bus.request(SCHED_PLACE, PlaceRequest(model="d"))

    for _ in range(100):
        if len(events) >= 3:
            break
        await asyncio.sleep(0.02)
    assert events[0].candidates.keys() == {"w-reg", "w-ssd", "w-dram"}
    assert (
        events[0].candidates["w-dram"]
        < events[0].candidates["w-ssd"]
        < events[0].candidates["w-reg"]
    )


async def test_refused_load_frees_the_worker(scheduler, bus: Bus, state, redis, keys) -> None:
    await _add_worker(bus, state, redis, keys, "w0", "n0", refuse=True)
    await _deploy(bus)
    with pytest.raises(UnavailableError, match="did not take the load"):
        await bus.request(SCHED_PLACE, PlaceRequest(model="m"))
    (w,) = await state.workers()
    assert w.instance_id == ""
    assert await state.instances("m") == []


async def test_undeploy_unloads_instances(scheduler, bus: Bus, state, redis, keys) -> None:
    worker = await _add_worker(bus, state, redis, keys, "w0", "n0")
    await _deploy(bus)
    placed = await bus.request(SCHED_PLACE, PlaceRequest(model="m"))
    reply = await bus.request(SCHED_UNDEPLOY, UndeployRequest(name="m"))
    assert reply.stopped_instances == [placed.instance_id]
    assert [u.instance_id for u in worker.unloads] == [placed.instance_id]
    assert await state.get_deployment("m") is None
    with pytest.raises(NotFoundError):
        await bus.request(SCHED_UNDEPLOY, UndeployRequest(name="m"))


async def test_sweep_forgets_instances_of_dead_workers(
    scheduler: SchedulerService, bus: Bus, state, redis, keys
) -> None:
    await _add_worker(bus, state, redis, keys, "w0", "n0")
    await _deploy(bus)
    placed = await bus.request(SCHED_PLACE, PlaceRequest(model="m"))
    await redis.delete(keys.alive("worker", "w0"))  # the worker stops heartbeating
    await scheduler.sweep()
    assert await state.get_instance(placed.instance_id) is None
    (w,) = await state.workers()
    assert w.instance_id == ""


async def test_sweep_forgets_instances_of_a_worker_restarted_free(
    scheduler: SchedulerService, bus: Bus, state, redis, keys
) -> None:
    """`sllm up` restarts a killed worker under the same id before its heartbeat lapses; it
    registers again (a new epoch, free), so its old instance record is stale although the
    worker is alive."""
    await _add_worker(bus, state, redis, keys, "w0", "n0")
    await _deploy(bus)
    placed = await bus.request(SCHED_PLACE, PlaceRequest(model="m"))
    rec = await state.get_instance(placed.instance_id)
    assert rec is not None
    (w,) = await state.workers()
    assert rec.worker_epoch == w.epoch > 0
    await scheduler.sweep()  # same epoch: kept
    assert await state.get_instance(placed.instance_id) is not None
    await state.register_worker("w0", "n0", "cpu")  # the restarted worker comes back free
    await scheduler.sweep()
    assert await state.get_instance(placed.instance_id) is None
    (w,) = await state.workers()
    assert w.instance_id == ""


# --- autoscaling ----------------------------------------------------------------------------


async def _demand(bus: Bus, **models: tuple[int, int]) -> None:
    report = DemandReport(
        router_id="r-test",
        ttl_s=60.0,
        models={m: ModelDemand(requests=r, queued=q) for m, (r, q) in models.items()},
    )
    await bus.publish(bus.subjects.demand, report)


async def _collect_scaled(bus: Bus) -> list[ScaledEvent]:
    seen: list[ScaledEvent] = []

    async def on_event(e: ScaledEvent) -> None:
        seen.append(e)

    await bus.subscribe(bus.subjects.event("scheduler.scaled"), ScaledEvent, on_event, json=True)
    return seen


async def test_demand_scales_from_zero_to_max_and_back_to_zero_after_keep_alive(
    scheduler, bus: Bus, state: ClusterState, redis, keys
) -> None:
    scaled = await _collect_scaled(bus)
    workers = [await hosting_worker(bus, state, redis, keys, f"w{k}") for k in range(4)]
    spec = DeploymentSpec(
        name="m",
        checkpoint_uri="file:///nowhere",
        max_instances=3,
        target_concurrency=2,
        keep_alive_s=0.5,
    )
    await bus.request(SCHED_DEPLOY, DeployRequest(spec=spec))

    await _demand(bus, m=(9, 9))  # wants ceil(9 / 2) = 5 instances, capped at 3

    async def three_loads() -> bool:
        return sum(len(w.loads) for w in workers) == 3

    await until(three_loads, "three loads")
    assert len(await state.instances("m")) == 3
    await asyncio.sleep(0.2)
    assert sum(len(w.loads) for w in workers) == 3  # never beyond max_instances
    ups = [e for e in scaled if e.reason == "demand"]
    assert sorted(e.to_instances for e in ups) == [1, 2, 3]

    for w in workers:
        if w.loads:
            await mark_ready(bus, state, w, "m")
    await _demand(bus)  # the burst is over: no demand

    async def none_left() -> bool:
        return await state.instances("m") == []

    await until(none_left, "scale to zero")

    async def three_downs() -> bool:  # events travel after the state changes
        return len([e for e in scaled if e.reason == "idle"]) == 3

    await until(three_downs, "three scale-down events")
    unloads = [u for w in workers for u in w.unloads]
    assert len(unloads) == 3
    assert all(u.only_if_idle and u.reason == "idle" for u in unloads)
    downs = [e for e in scaled if e.reason == "idle"]
    assert sorted(e.to_instances for e in downs) == [0, 1, 2]
    assert all(w.instance_id == "" for w in await state.workers())


async def test_a_cold_model_preempts_an_idle_instance_and_never_a_busy_one(
    scheduler, bus: Bus, state: ClusterState, redis, keys
) -> None:
    worker = await hosting_worker(bus, state, redis, keys, "w0")
    for name in ("a", "b"):
        spec = DeploymentSpec(name=name, checkpoint_uri="file:///nowhere", keep_alive_s=300)
        await bus.request(SCHED_DEPLOY, DeployRequest(spec=spec))
    await bus.request(SCHED_PLACE, PlaceRequest(model="a"))
    a_iid = await mark_ready(bus, state, worker, "a")
    with pytest.raises(UnavailableError, match="no free worker"):
        await bus.request(SCHED_PLACE, PlaceRequest(model="b"))

    worker.busy.add(a_iid)  # "a" has a request in flight: it must not be preempted
    await _demand(bus, b=(1, 1))

    async def asked() -> bool:
        return bool(worker.unloads)

    await until(asked, "a preemption attempt")
    first = worker.unloads[0]
    assert (first.only_if_idle, first.ignore_keep_alive, first.reason) == (True, True, "preempted")
    assert await state.get_instance(a_iid) is not None  # refused: busy

    worker.busy.clear()  # its request ends: the worker says so
    await bus.emit(
        InstanceIdleEvent(
            instance_id=a_iid, model="a", worker_id="w0", keep_until=time.time() + 300, requests=2
        )
    )

    async def b_started() -> bool:
        return [r.model for r in worker.loads] == ["a", "b"]

    await until(b_started, "model b on the freed worker")
    assert await state.get_instance(a_iid) is None
    (b_rec,) = await state.instances("b")
    assert b_rec.worker_id == "w0"


async def test_a_second_load_starts_only_when_it_beats_the_one_under_way(
    scheduler, bus: Bus, state: ClusterState, redis, keys
) -> None:
    slow = await hosting_worker(bus, state, redis, keys, "w-slow")  # registry: ~2.7 s
    spec = DeploymentSpec(name="m", checkpoint_uri="file:///nowhere", max_instances=2)
    await bus.request(SCHED_DEPLOY, DeployRequest(spec=spec))
    first = await bus.request(SCHED_PLACE, PlaceRequest(model="m"))
    assert first.worker_id == "w-slow"

    async def estimate_known() -> bool:
        return first.instance_id in scheduler.scaler.estimates

    await until(estimate_known, "the placement estimate")
    # No faster worker: wait for the load under way.
    again = await bus.request(SCHED_PLACE, PlaceRequest(model="m"))
    assert again.instance_id == first.instance_id
    assert 0 < again.estimated_startup_s <= first.estimated_startup_s

    fast = await hosting_worker(bus, state, redis, keys, "w-fast")
    await state.set_locality("n-w-fast", "dram", "m", 10**9)  # a DRAM hit: ~0.1 s
    beside = await bus.request(SCHED_PLACE, PlaceRequest(model="m"))
    assert beside.worker_id == "w-fast"
    assert beside.instance_id != first.instance_id
    assert [len(slow.loads), len(fast.loads)] == [1, 1]


async def test_one_scheduler_replica_leads_the_autoscaler(
    nats_server, redis_server, root: str
) -> None:
    """Two replicas: exactly one holds the autoscaler lease; when it stops, the other takes
    over without waiting for the lease to expire."""
    env = {
        "SLLM_NATS_URL": nats_server.url,
        "SLLM_REDIS_URL": redis_server.url,
        "SLLM_ROOT": root,
        "SLLM_HOUSEKEEPING_INTERVAL": "3600",
        # These tests write workers and tiers into the state directly, without the news
        # real ones send: every placement reads its own snapshot.
        "SLLM_SNAPSHOT_MAX_AGE": "0",
    }
    first = SchedulerService(SchedulerSettings.from_env(env))
    second = SchedulerService(SchedulerSettings.from_env(env))
    await first.start()
    await second.start()
    try:

        async def one_leads() -> bool:
            return first.scaler.leader != second.scaler.leader

        await until(one_leads, "one leader")
        leader, follower = (first, second) if first.scaler.leader else (second, first)
        await leader.stop("test")
        follower.scaler.wake()  # any news; it would also check by itself within the lease TTL

        async def took_over() -> bool:
            return follower.scaler.leader

        await until(took_over, "the follower to take over")
    finally:
        for svc in (first, second):
            await svc.stop("test")
