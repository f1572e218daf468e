"""The scheduler service: deployments, placement of instances, and cleanup after dead workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import ClassVar

from libs.cluster import ClusterState
from libs.common.service import Service, ServiceKind
from libs.protocol import BusError, Route, route
from libs.protocol.endpoints import (
    SCHED_DEPLOY,
    SCHED_MIGRATE,
    SCHED_PLACE,
    SCHED_UNDEPLOY,
    WORKER_LOAD,
    WORKER_UNLOAD,
)
from libs.protocol.errors import NotFoundError, UnavailableError
from libs.protocol.events import (
    DeploymentEvent,
    InstanceStoppedEvent,
    LoadReportEvent,
    PlacementEvent,
)
from libs.protocol.messages import (
    DeploymentSpec,
    DeployReply,
    DeployRequest,
    LoadRequest,
    MigrateInstanceReply,
    MigrateInstanceRequest,
    PlaceReply,
    PlaceRequest,
    UndeployReply,
    UndeployRequest,
    UnloadRequest,
)
from libs.protocol.state import InstanceRecord

from .autoscaler import may_take_worker, remaining_load_s, start_beside_loading
from .coldpolicy import Bounds
from .coldstart import ColdStartConfig, ColdStarts
from .deployment_book import DeploymentBook
from .loads import LoadFeedback
from .migration import Orchestrator
from .placement import NodeView, SourceTier, WorkerView, rank, round_robin
from .prefetch import prefetch
from .scaling import ScaleLoop
from .settings import SchedulerSettings

log = logging.getLogger(__name__)

# A reservation without an instance record is stale after this long (the scheduler that made
# it died between reserving and recording).
STALE_RESERVATION_S = 30.0
RESERVE_ATTEMPTS = 8
# How long a placement request waits for a cold start's wait or migration to end before it
# answers "unavailable" (the router asks again).
JOIN_COLD_START_S = 2.0


class SchedulerService(Service):
    kind: ClassVar[ServiceKind] = "scheduler"

    def __init__(self, settings: SchedulerSettings) -> None:
        super().__init__(settings, instance_id=settings.instance_id)
        self.sched = settings
        self.priors: dict[SourceTier, float] = {
            "dram": settings.prior_dram_gbps * 1e9,
            "ssd": settings.prior_ssd_gbps * 1e9,
            "registry": settings.prior_registry_gbps * 1e9,
        }
        self._model_locks: dict[str, asyncio.Lock] = {}
        self._orphans: dict[tuple[str, str], float] = {}
        self.book = DeploymentBook()

    def routes(self) -> list[Route]:
        return [
            *super().routes(),
            route(SCHED_PLACE, self.place),
            route(SCHED_DEPLOY, self.deploy),
            route(SCHED_UNDEPLOY, self.undeploy),
            route(SCHED_MIGRATE, self.migrate_instance),
        ]

    async def migrate_instance(self, req: MigrateInstanceRequest) -> MigrateInstanceReply:
        """Move an instance's running generations to another worker (see `Orchestrator`)."""
        return await self.migrations.migrate(req)

    async def on_start(self) -> None:
        self.state = ClusterState(self.redis, self.keys)
        self.book.refresh(await self.state.deployments(), same_store=True)
        self.feedback = LoadFeedback(self.bus, self.state, window=self.sched.calibration_window)
        await self.bus.subscribe(
            self.bus.subjects.event("load.report"),
            LoadReportEvent,
            self.feedback.on_report,
            queue="scheduler-load-report",
            json=True,
        )
        task = asyncio.create_task(self._housekeeping())
        self._stack.callback(task.cancel)
        self.scaler = ScaleLoop(
            bus=self.bus,
            state=self.state,
            locks=self._model_locks,
            place_new=self._autoscale_start,
            live_instances=self._live_instances,
            forget=self._forget,
            unload_timeout=max(self.settings.request_timeout, 30.0),
            starting=lambda: self.cold.starting(),
        )
        self.migrations = Orchestrator(
            bus=self.bus,
            state=self.state,
            place_new=self._place_new,
            timeout=self.sched.migration_load_timeout,
            unload_timeout=max(self.settings.request_timeout, 30.0),
        )
        s = self.sched
        self.cold = ColdStarts(
            bus=self.bus,
            config=ColdStartConfig(
                enabled=s.cold_start_migration and s.placement_policy == "startup_time",
                bounds=Bounds(max_pause_s=s.migration_max_pause, max_moved=s.migration_max_moved),
                wait_limit_s=s.cold_start_wait_limit,
                default_bytes=int(s.default_model_gb * 1e9),
                priors=self.priors,
                unload_timeout=max(self.settings.request_timeout, 30.0),
            ),
            snapshot=self._snapshot,
            place_new=self._place_new,
            migrations=self.migrations,
            on_done=self.scaler.wake,
        )
        await self.scaler.subscribe()
        scaling = asyncio.create_task(self.scaler.run())
        self._stack.push_async_callback(self.scaler.close)
        self._stack.callback(scaling.cancel)

    # --- deployments ------------------------------------------------------------------------

    async def deploy(self, req: DeployRequest) -> DeployReply:
        existing = await self.state.get_deployment(req.spec.name)
        spec = req.spec.model_copy(
            update={"created_at": existing.created_at if existing else time.time()}
        )
        created = await self.state.put_deployment(spec)
        self.book.put(spec)
        await self.bus.emit(
            DeploymentEvent(name=spec.name, action="created" if created else "updated")
        )
        if existing is None or existing.checkpoint_uri != spec.checkpoint_uri:
            self.bus.spawn(self._prefetch(spec))
        if spec.min_instances:
            self.bus.spawn(self._ensure_min_instances(spec))
        return DeployReply(spec=spec, created=created)

    async def _prefetch(self, spec: DeploymentSpec) -> None:
        s = self.sched
        await prefetch(
            self.bus, self.state, spec, replicas=s.prefetch_replicas, timeout=s.prefetch_timeout
        )

    async def _ensure_min_instances(self, spec: DeploymentSpec) -> None:
        """The scaling loop keeps every deployment at ``min_instances`` or more."""
        self.scaler.wake()

    async def undeploy(self, req: UndeployRequest) -> UndeployReply:
        self.book.delete(req.name)
        if not await self.state.delete_deployment(req.name):
            raise NotFoundError(f"no deployment named {req.name!r}", detail={"model": req.name})
        await self.bus.emit(DeploymentEvent(name=req.name, action="deleted"))
        stopped = await asyncio.gather(
            *(
                self._stop_instance(rec, "undeployed")
                for rec in await self.state.instances(req.name)
            )
        )
        return UndeployReply(name=req.name, stopped_instances=sorted(stopped))

    async def _stop_instance(self, rec: InstanceRecord, reason: str) -> str:
        try:
            await self.bus.request(
                WORKER_UNLOAD,
                UnloadRequest(instance_id=rec.instance_id, reason=reason),
                worker_id=rec.worker_id,
                timeout=max(self.settings.request_timeout, 10.0),
            )
        except BusError as exc:
            # The worker is gone or confused: forget the instance and free the worker ourselves.
            log.warning(
                "unload of %s on %s failed (%s); cleaning up", rec.instance_id, rec.worker_id, exc
            )
            await self._forget(rec, reason)
        return rec.instance_id

    async def _forget(self, rec: InstanceRecord, reason: str) -> None:
        log.info(
            "forgetting instance %s of %s on %s: %s",
            rec.instance_id,
            rec.model,
            rec.worker_id,
            reason,
        )
        await self.state.retire_instance(rec)
        await self.bus.emit(
            InstanceStoppedEvent(
                instance_id=rec.instance_id, model=rec.model, worker_id=rec.worker_id, reason=reason
            )
        )

    # --- placement --------------------------------------------------------------------------

    async def place(self, req: PlaceRequest) -> PlaceReply:
        spec = await self.state.get_deployment(req.model)
        if spec is None:
            raise NotFoundError(f"no deployment named {req.model!r}", detail={"model": req.model})
        lock = self._model_locks.setdefault(req.model, asyncio.Lock())
        async with lock:
            live = await self._live_instances(req.model)
            ready = [i for i in live if i.status == "ready"]
            loading = [i for i in live if i.status == "loading"]
            if ready:
                return _existing(ready[0], 0.0)
            if loading:
                # Waiting for a load under way usually beats starting another; start one
                # beside it only when a free worker would have the model ready sooner.
                remaining = self._remaining_loads(loading)
                if len(live) < spec.max_instances and await self._sooner(spec, remaining):
                    return await self._place_new(spec, req.request_id)
                soonest = min(range(len(loading)), key=lambda k: remaining[k])
                return _existing(loading[soonest], remaining[soonest])
            await self._take_turn(req.model)
            started = await self.cold.start(spec, req.request_id)
        if isinstance(started, PlaceReply):
            return started
        return await self.cold.outcome(req.model, started, JOIN_COLD_START_S)

    async def _autoscale_start(self, spec: DeploymentSpec, reason: str) -> PlaceReply:
        """The scaling loop's start of one more instance (it holds the model's lock): a first
        instance is a cold start; joining a wait or migration under way, it does not wait."""
        if await self._live_instances(spec.name):
            return await self._place_new(spec, reason)
        started = await self.cold.start(spec, reason)
        if isinstance(started, PlaceReply):
            return started
        return await self.cold.outcome(spec.name, started, 0.0)

    def _remaining_loads(self, loading: list[InstanceRecord]) -> list[float]:
        """Expected seconds left of each load (0 where no estimate is known: assume soon)."""
        now = time.time()
        out = []
        for rec in loading:
            placed_at, estimated_s = self.scaler.estimates.get(rec.instance_id, (now, 0.0))
            out.append(remaining_load_s(estimated_s, placed_at, now))
        return out

    async def _sooner(self, spec: DeploymentSpec, remaining: list[float]) -> bool:
        """Whether a new instance on the best free worker beats every load under way (and
        the model may take a worker, see `_take_turn`)."""
        if min(remaining, default=0.0) <= 0.0:
            return False
        workers, nodes = await self._snapshot()
        free = sum(1 for w in workers if w.free)
        demand = self.scaler.demand.get(spec.name)
        if not may_take_worker(spec.name, demand.waiting_since, self.scaler.starved, free):
            return False
        default_bytes = int(self.sched.default_model_gb * 1e9)
        ranked = rank(spec.name, workers, nodes, default_bytes=default_bytes, priors=self.priors)
        return start_beside_loading(remaining, ranked[0].seconds if ranked else None)

    async def _take_turn(self, model: str) -> None:
        """Fairness across models: a free worker goes to the model that has waited longest
        for one; a model whose turn it is not gets `UnavailableError` (its router retries, and
        the scaling loop starts it when its turn comes)."""
        starved = self.scaler.starved
        if not starved or set(starved) == {model}:
            return
        free = sum(1 for w in await self.state.workers() if w.alive and not w.instance_id)
        demand = self.scaler.demand.get(model)
        if not may_take_worker(model, demand.waiting_since, starved, free):
            self.scaler.wake()
            raise UnavailableError(
                f"no free worker for {model!r}: models that waited longer go first",
                detail={"model": model, "waiting_models": len(starved)},
            )

    async def _live_instances(self, model: str) -> list[InstanceRecord]:
        alive = {w.worker_id for w in await self.state.workers() if w.alive}
        return [
            i
            for i in await self.state.instances(model)
            if i.worker_id in alive and i.status in ("ready", "loading")
        ]

    async def _snapshot(self) -> tuple[list[WorkerView], list[NodeView]]:
        workers = await self.state.workers()
        node_ids = sorted({w.node_id for w in workers})
        localities = await asyncio.gather(*(self.state.locality(n) for n in node_ids))
        calibration = await self.feedback.calibration(node_ids)
        nodes = [
            NodeView(
                loc.node_id,
                dram=loc.dram,
                ssd=loc.ssd,
                bandwidth={str(k): v for k, v in loc.bandwidth.items()},
                loads=calibration.get(loc.node_id, ({}, 0.0))[0],
                fixed_s=calibration.get(loc.node_id, ({}, 0.0))[1],
            )
            for loc in localities
        ]
        views = [WorkerView(w.worker_id, w.node_id, w.alive and not w.instance_id) for w in workers]
        return views, nodes

    async def _place_new(
        self, spec: DeploymentSpec, request_id: str, worker_id: str = ""
    ) -> PlaceReply:
        """A new instance on the best free worker (only ``worker_id``, when given)."""
        instance_id = "i-" + uuid.uuid4().hex[:16]
        workers, nodes = await self._snapshot()
        if worker_id:
            workers = [w for w in workers if w.worker_id == worker_id]
        default_bytes = int(self.sched.default_model_gb * 1e9)
        if self.sched.placement_policy == "round_robin":
            turn = await self.state.next_placement_turn()
            ranked = round_robin(
                spec.name, workers, nodes, turn, default_bytes=default_bytes, priors=self.priors
            )
        else:
            ranked = rank(
                spec.name, workers, nodes, default_bytes=default_bytes, priors=self.priors
            )
        for choice in ranked[:RESERVE_ATTEMPTS]:
            epoch = await self.state.reserve(choice.worker_id, instance_id)
            if epoch is not None:
                break
        else:
            raise UnavailableError(
                f"no free worker for {spec.name!r}",
                detail={"model": spec.name, "workers": len(workers)},
            )
        rec = InstanceRecord(
            instance_id=instance_id,
            model=spec.name,
            worker_id=choice.worker_id,
            node_id=choice.node_id,
            status="loading",
            created_at=time.time(),
            worker_epoch=epoch,
        )
        await self.state.put_instance(rec)
        await self.feedback.placed(
            instance_id, spec.name, choice.node_id, choice.tier, choice.seconds
        )
        await self.bus.emit(
            PlacementEvent(
                model=spec.name,
                instance_id=instance_id,
                worker_id=choice.worker_id,
                node_id=choice.node_id,
                source_tier=choice.tier,
                estimated_startup_s=choice.seconds,
                candidates={e.worker_id: round(e.seconds, 6) for e in ranked},
            )
        )
        try:
            await self.bus.request(
                WORKER_LOAD,
                LoadRequest(
                    instance_id=instance_id, model=spec.name, checkpoint_uri=spec.checkpoint_uri
                ),
                worker_id=choice.worker_id,
            )
        except BusError as exc:
            await self._forget(rec, f"load request failed: {exc.code.value}")
            raise UnavailableError(
                f"worker {choice.worker_id} did not take the load of {spec.name!r}: {exc.message}",
                detail={"model": spec.name, "worker": choice.worker_id},
            ) from None
        log.info(
            "placed %s on %s (%s tier, est. %.2fs) for %s",
            spec.name,
            choice.worker_id,
            choice.tier,
            choice.seconds,
            request_id or "-",
        )
        return PlaceReply(
            instance_id=instance_id,
            worker_id=choice.worker_id,
            node_id=choice.node_id,
            status="loading",
            source_tier=choice.tier,
            estimated_startup_s=choice.seconds,
        )

    # --- housekeeping -----------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.sched.housekeeping_interval)
            with contextlib.suppress(Exception):
                await self._read_deployments()
                await self.sweep()

    async def _read_deployments(self) -> None:
        """Keep the book up to date with deployments other schedulers made or deleted."""
        before = await self.state.store_epoch()
        stored = await self.state.deployments()
        after = await self.state.store_epoch()
        self.book.refresh(stored, same_store=before == after == self._store_epoch)

    async def on_store_reset(self) -> None:
        """Write back every deployment this scheduler knows (the instances come back from
        their workers, the tiers from their storage services)."""
        for spec in self.book.specs():
            await self.state.put_deployment(spec)
        self.scaler.wake()  # deployments with min_instances get them again

    async def sweep(self) -> None:
        """Forget instances whose worker died; free reservations nobody recorded."""
        workers = await self.state.workers()
        alive = {w.worker_id for w in workers if w.alive}
        epochs = {w.worker_id: w.epoch for w in workers}
        for dep in await self.state.deployments():
            for rec in await self.state.instances(dep.name):
                if rec.worker_id not in alive:
                    await self._forget(rec, "worker died")
                elif rec.worker_epoch and rec.worker_epoch != epochs.get(rec.worker_id):
                    # Its worker is alive but registered again since the instance was placed:
                    # it was restarted, and came back free, before its heartbeat lapsed.
                    await self._forget(rec, "worker restarted")
        now = time.monotonic()
        for w in workers:
            if not w.instance_id:
                continue
            if await self.state.get_instance(w.instance_id) is not None:
                self._orphans.pop((w.worker_id, w.instance_id), None)
                continue
            first_seen = self._orphans.setdefault((w.worker_id, w.instance_id), now)
            if now - first_seen > STALE_RESERVATION_S:
                await self.state.release_worker(w.worker_id, w.instance_id)
                self._orphans.pop((w.worker_id, w.instance_id), None)


def _existing(rec: InstanceRecord, remaining_s: float) -> PlaceReply:
    return PlaceReply(
        instance_id=rec.instance_id,
        worker_id=rec.worker_id,
        node_id=rec.node_id,
        status=rec.status,
        source_tier=rec.source_tier or "gpu",
        estimated_startup_s=remaining_s,
    )
