"""The scheduler service against real NATS and Redis, with stand-in workers on the bus."""

from __future__ import annotations

import asyncio
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
from libs.protocol.errors import ConflictError, NotFoundError, UnavailableError
from libs.protocol.events import PlacementEvent
from libs.protocol.messages import (
    DeploymentSpec,
    DeployRequest,
    LoadReply,
    LoadRequest,
    PlaceRequest,
    UndeployRequest,
    UnloadReply,
    UnloadRequest,
)
from services.scheduler.app import SchedulerService
from services.scheduler.settings import SchedulerSettings

pytestmark = pytest.mark.integration


class StandInWorker:
    """A worker's bus endpoints only: records what the scheduler asks of it."""

    def __init__(self, worker_id: str, *, refuse: bool = False) -> None:
        self.worker_id = worker_id
        self.refuse = refuse
        self.loads: list[LoadRequest] = []
        self.unloads: list[UnloadRequest] = []

    async def load(self, req: LoadRequest) -> LoadReply:
        if self.refuse:
            raise ConflictError("busy")
        self.loads.append(req)
        return LoadReply(instance_id=req.instance_id, worker_id=self.worker_id)

    async def unload(self, req: UnloadRequest) -> UnloadReply:
        self.unloads.append(req)
        return UnloadReply(instance_id=req.instance_id, freed=True)


@pytest.fixture
async def scheduler(nats_server, redis_server, root: str) -> AsyncIterator[SchedulerService]:
    settings = SchedulerSettings.from_env(
        {
            "SLLM_NATS_URL": nats_server.url,
            "SLLM_REDIS_URL": redis_server.url,
            "SLLM_ROOT": root,
            "SLLM_HOUSEKEEPING_INTERVAL": "3600",
        }
    )
    svc = SchedulerService(settings)
    await svc.start()
    yield svc
    await svc.stop("test")


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


@pytest.fixture
def state(redis: aioredis.Redis, keys: Keys) -> ClusterState:
    return ClusterState(redis, keys)


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
