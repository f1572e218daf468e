"""Test helpers for the scheduler: stand-in workers that answer its requests on the real bus
and keep the real Redis state as workers do."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.protocol import Bus, Keys, route
from libs.protocol.endpoints import WORKER_LOAD, WORKER_MIGRATE, WORKER_RUNNING, WORKER_UNLOAD
from libs.protocol.errors import ConflictError
from libs.protocol.events import InstanceReadyEvent, InstanceStoppedEvent
from libs.protocol.messages import (
    LoadReply,
    LoadRequest,
    MigratedGeneration,
    MigrateReply,
    MigrateRequest,
    RunningGeneration,
    RunningReply,
    RunningRequest,
    UnloadReply,
    UnloadRequest,
)
from services.scheduler.app import SchedulerService
from services.scheduler.settings import SchedulerSettings


@contextlib.asynccontextmanager
async def running_scheduler(
    nats_url: str, redis_url: str, root: str, **env: str
) -> AsyncIterator[SchedulerService]:
    """A scheduler service on the test's NATS and Redis (no periodic sweep; ``env``: more
    ``SLLM_*`` settings)."""
    settings = SchedulerSettings.from_env(
        {
            "SLLM_NATS_URL": nats_url,
            "SLLM_REDIS_URL": redis_url,
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
    try:
        yield svc
    finally:
        await svc.stop("test")


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


class HostingWorker(StandInWorker):
    """A stand-in that, like a real worker, frees itself on unload (record deleted, worker
    released, `instance.stopped` with the reason), unless its instance is "busy".

    It also says what it runs (``running``: the generations it reports while busy), moves
    them on ``migrate`` (they are then gone: it is idle), and, with ``auto_ready``, reports
    every load ready at once."""

    def __init__(
        self, worker_id: str, bus: Bus, state: ClusterState, *, auto_ready: bool = False
    ) -> None:
        super().__init__(worker_id)
        self.bus = bus
        self.state = state
        self.auto_ready = auto_ready
        self.busy: set[str] = set()
        self.running: list[RunningGeneration] = []
        self.migrations: list[MigrateRequest] = []

    async def load(self, req: LoadRequest) -> LoadReply:
        reply = await super().load(req)
        if self.auto_ready:
            await mark_ready(self.bus, self.state, self, req.model)
        return reply

    async def unload(self, req: UnloadRequest) -> UnloadReply:
        self.unloads.append(req)
        if req.only_if_idle and req.instance_id in self.busy:
            return UnloadReply(
                instance_id=req.instance_id, freed=False, unloaded=False, in_flight=1, requests=1
            )
        rec = await self.state.get_instance(req.instance_id)
        assert rec is not None
        await self.state.retire_instance(rec)
        await self.bus.emit(
            InstanceStoppedEvent(
                instance_id=rec.instance_id,
                model=rec.model,
                worker_id=self.worker_id,
                reason=req.reason or "unloaded",
            )
        )
        return UnloadReply(instance_id=req.instance_id, freed=True)

    async def describe(self, req: RunningRequest) -> RunningReply:
        (w,) = [w for w in await self.state.workers() if w.worker_id == self.worker_id]
        rec = await self.state.get_instance(w.instance_id) if w.instance_id else None
        if rec is None:
            return RunningReply(worker_id=self.worker_id)
        gens = self.running if rec.instance_id in self.busy else []
        return RunningReply(
            worker_id=self.worker_id,
            instance_id=rec.instance_id,
            model=rec.model,
            status=rec.status,
            generations=gens,
        )

    async def migrate(self, req: MigrateRequest) -> MigrateReply:
        self.migrations.append(req)
        moved = [
            MigratedGeneration(request_id=g.request_id, outcome="committed", rounds=1)
            for g in self.running
        ]
        self.running = []
        self.busy.discard(req.instance_id)
        return MigrateReply(instance_id=req.instance_id, generations=moved, remaining=0)


async def hosting_worker(
    bus: Bus,
    state: ClusterState,
    redis: aioredis.Redis,
    keys: Keys,
    wid: str,
    *,
    auto_ready: bool = False,
) -> HostingWorker:
    """A `HostingWorker` registered (alive) on node ``n-<wid>`` and serving its endpoints."""
    worker = HostingWorker(wid, bus, state, auto_ready=auto_ready)
    await state.register_worker(wid, "n-" + wid, "cpu")
    await redis.set(keys.alive("worker", wid), b"{}", px=60_000)
    await bus.serve(
        "worker",
        [
            route(WORKER_LOAD, worker.load, worker_id=wid),
            route(WORKER_UNLOAD, worker.unload, worker_id=wid),
            route(WORKER_RUNNING, worker.describe, worker_id=wid),
            route(WORKER_MIGRATE, worker.migrate, worker_id=wid),
        ],
    )
    return worker


async def mark_ready(bus: Bus, state: ClusterState, worker: StandInWorker, model: str) -> str:
    """Mark the instance the worker was last asked to load as ready, as a worker does."""
    iid = worker.loads[-1].instance_id
    rec = await state.update_instance(iid, status="ready", ready_at=time.time())
    assert rec is not None
    await bus.emit(
        InstanceReadyEvent(
            instance_id=iid,
            model=model,
            worker_id=worker.worker_id,
            node_id=rec.node_id,
            source_tier="ssd",
            load_s=0.1,
        )
    )
    return iid
