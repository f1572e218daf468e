"""The scheduler service: its wiring and handler table. Placement is `place_handler` and
`placer`, autoscaling `scaling`, migration `migration`, repairs `repairs`."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import ClassVar

from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from libs.cluster import ClusterState
from libs.common.service import Service, ServiceKind
from libs.protocol import BusError, Route, route
from libs.protocol.endpoints import (
    SCHED_DEPLOY,
    SCHED_ESTIMATE,
    SCHED_MIGRATE,
    SCHED_PATCH,
    SCHED_PLACE,
    SCHED_UNDEPLOY,
)
from libs.protocol.errors import NotFoundError
from libs.protocol.events import (
    DeploymentEvent,
    EvictedEvent,
    FetchDoneEvent,
    InstanceFailedEvent,
    InstanceStoppedEvent,
    LoadReportEvent,
    ServiceStartedEvent,
)
from libs.protocol.messages import (
    MigrateInstanceReply,
    MigrateInstanceRequest,
    UndeployReply,
    UndeployRequest,
)

from .adapter_rules import check_undeploy
from .coldpolicy import Bounds
from .coldstart import BusyWorkerStarts, ColdStartConfig
from .deployer import DeployConfig, Deployer
from .deployment_book import DeploymentBook
from .estimator import Estimator
from .loads import LoadFeedback
from .metrics import SchedulerMetrics
from .migration import Orchestrator
from .place_handler import PlaceHandler
from .placement import SourceTier
from .placer import Placer
from .repairs import Reconciler
from .scaling import ScaleLoop
from .settings import SchedulerSettings

log = logging.getLogger(__name__)


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
        self.book = DeploymentBook()
        self.metrics = SchedulerMetrics()

    def metrics_registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def routes(self) -> list[Route]:
        return [
            *super().routes(),
            route(SCHED_PLACE, self.places.place),
            route(SCHED_DEPLOY, lambda req: self.deployer.deploy(req)),
            route(SCHED_PATCH, lambda req: self.deployer.patch(req)),
            route(SCHED_ESTIMATE, lambda req: self.estimator.estimate(req)),
            route(SCHED_UNDEPLOY, self.undeploy),
            route(SCHED_MIGRATE, self.migrate_instance),
        ]

    async def migrate_instance(self, req: MigrateInstanceRequest) -> MigrateInstanceReply:
        """Move an instance's running generations to another worker (see `Orchestrator`)."""
        return await self.migrations.migrate(req)

    async def on_start(self) -> None:
        self.state = ClusterState(self.redis, self.keys)
        self.reconciler = Reconciler(self.bus, self.state, metrics=self.metrics)
        self.book.refresh(await self.state.deployments(), same_store=True)
        self.feedback = LoadFeedback(
            self.bus, self.state, window=self.sched.calibration_window, metrics=self.metrics
        )
        await self.bus.subscribe(
            self.bus.subjects.event("load.report"),
            LoadReportEvent,
            self.feedback.on_report,
            queue="scheduler-load-report",
            json=True,
        )
        self.tasks.loop("housekeeping", self._housekeeping)
        s = self.sched
        self.placer = Placer(
            bus=self.bus,
            state=self.state,
            feedback=self.feedback,
            policy=s.placement_policy,
            default_bytes=int(s.default_model_gb * 1e9),
            priors=self.priors,
            unload_timeout=max(self.settings.request_timeout, 10.0),
            snapshot_max_age_s=s.snapshot_max_age,
        )
        await self._hint_snapshots()
        self.scaler = ScaleLoop(
            bus=self.bus,
            state=self.state,
            locks=self._model_locks,
            place_new=lambda spec, reason: self.places.autoscale_start(spec, reason),
            live_instances=self.placer.live_instances,
            cluster=self.placer.snapshot,
            forget=self.placer.forget,
            unload_timeout=max(self.settings.request_timeout, 30.0),
            starting=lambda: self.cold.starting(),
            metrics=self.metrics,
        )
        self.migrations = Orchestrator(
            bus=self.bus,
            state=self.state,
            place_new=self.placer.place_new,
            timeout=self.sched.migration_load_timeout,
            unload_timeout=max(self.settings.request_timeout, 30.0),
        )
        self.cold = BusyWorkerStarts(
            bus=self.bus,
            config=ColdStartConfig(
                enabled=s.cold_start_migration and s.placement_policy == "startup_time",
                bounds=Bounds(max_pause_s=s.migration_max_pause, max_moved=s.migration_max_moved),
                wait_limit_s=s.cold_start_wait_limit,
                default_bytes=int(s.default_model_gb * 1e9),
                priors=self.priors,
                unload_timeout=max(self.settings.request_timeout, 30.0),
            ),
            placer=self.placer,
            migrations=self.migrations,
            on_done=self.scaler.wake,
            metrics=self.metrics,
        )
        self.places = PlaceHandler(
            state=self.state,
            placer=self.placer,
            cold=self.cold,
            scaler=self.scaler,
            locks=self._model_locks,
            metrics=self.metrics,
        )
        self.estimator = Estimator(self.state, self.placer)
        self.deployer = Deployer(
            self.bus,
            self.state,
            self.book,
            DeployConfig(
                prefetch_replicas=s.prefetch_replicas,
                prefetch_timeout=s.prefetch_timeout,
                inspect_timeout=max(self.settings.request_timeout, 60.0),
            ),
            wake_scaler=self.scaler.wake,
        )
        await self.scaler.subscribe()
        self._stack.push_async_callback(self.scaler.close)
        self.tasks.loop("scaling", self.scaler.run)

    async def _hint_snapshots(self) -> None:
        """News that changes what a placement decides on (a worker freed or new, a copy made
        or evicted, a load that calibrates) marks the cached snapshot stale (`Snapshots`)."""
        snapshots = self.placer.snapshots

        async def stale(_: object) -> None:
            snapshots.stale()

        for kind, cls in (
            ("instance.stopped", InstanceStoppedEvent),
            ("instance.failed", InstanceFailedEvent),
            ("load.report", LoadReportEvent),
            ("storage.fetched", FetchDoneEvent),
            ("storage.evicted", EvictedEvent),
            ("service.started", ServiceStartedEvent),
        ):
            await self.bus.subscribe(self.bus.subjects.event(kind), cls, stale, json=True)

    # --- deployments ------------------------------------------------------------------------

    async def undeploy(self, req: UndeployRequest) -> UndeployReply:
        check_undeploy(req.name, await self.state.deployments())
        self.book.delete(req.name)
        if not await self.state.delete_deployment(req.name):
            raise NotFoundError(f"no deployment named {req.name!r}", detail={"model": req.name})
        await self.bus.emit(DeploymentEvent(name=req.name, action="deleted"))
        stopped = await asyncio.gather(
            *(self.placer.stop(rec, "undeployed") for rec in await self.state.instances(req.name))
        )
        return UndeployReply(name=req.name, stopped_instances=sorted(stopped))

    # --- housekeeping -----------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        # Under the service's supervisor: an unreachable store or bus is expected (logged,
        # retried next round); anything else is a bug, logged with its traceback by the
        # supervisor, which restarts the loop after a backoff.
        while True:
            await asyncio.sleep(self.sched.housekeeping_interval)
            try:
                await self._read_deployments()
                await self.deployer.resume_stuck(self.book.specs(), time.monotonic())
                await self.sweep()
            except (RedisError, OSError, BusError) as exc:
                log.warning("housekeeping round failed: %r", exc)

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
        """Repair records that contradict each other: forget instances whose worker died,
        restarted or does not hold them, free reservations nobody recorded (`reconcile`)."""
        await self.reconciler.run()
