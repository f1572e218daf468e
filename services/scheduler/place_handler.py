"""Answers ``sched.place`` and the autoscaler's starts: under the model's lock, reads one
snapshot (`Placer.snapshot`), ranks the free workers once, asks the pure decision
(`place_policy.decide`) and carries it out (`Placer`, `BusyWorkerStarts`)."""

from __future__ import annotations

import asyncio
import time

from libs.cluster import ClusterState
from libs.protocol.errors import BadRequestError, NotFoundError, UnavailableError
from libs.protocol.messages import DeploymentSpec, PlaceReply, PlaceRequest
from libs.protocol.state import InstanceRecord

from .autoscaler import remaining_load_s
from .coldstart import BusyWorkerStarts
from .metrics import SchedulerMetrics
from .place_policy import Loading, PlaceView, StartBeside, UseInstance, WaitTurn, decide
from .placer import Placer
from .scaling import ScaleLoop

# How long a placement request waits for a cold start's wait or migration to end before it
# answers "unavailable" (the router asks again).
JOIN_COLD_START_S = 2.0


class PlaceHandler:
    """Places instances for the routers (``sched.place``) and for the scaling loop."""

    def __init__(
        self,
        *,
        state: ClusterState,
        placer: Placer,
        cold: BusyWorkerStarts,
        scaler: ScaleLoop,
        locks: dict[str, asyncio.Lock],
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self.state = state
        self.metrics = metrics or SchedulerMetrics()
        self.placer = placer
        self.cold = cold
        self.scaler = scaler
        self.locks = locks  # per model, shared with the scaling loop

    async def place(self, req: PlaceRequest) -> PlaceReply:
        with self.metrics.placement.time():  # answered or refused
            return await self._place(req)

    async def _place(self, req: PlaceRequest) -> PlaceReply:
        spec = await self.state.get_deployment(req.model)
        if spec is None:
            raise NotFoundError(f"no deployment named {req.model!r}", detail={"model": req.model})
        if spec.base:
            raise BadRequestError(
                f"{req.model!r} is an adapter of {spec.base!r}: place its base",
                detail={"model": req.model},
            )
        lock = self.locks.setdefault(req.model, asyncio.Lock())
        async with lock:
            cluster = await self.placer.snapshot()
            live = await self.placer.live_instances(req.model, cluster)
            ready = [i for i in live if i.status == "ready"]
            # Nothing to rank when a ready instance answers.
            if not ready:
                cluster = await self.placer.with_fresh_locality(req.model, cluster)
            ranked = [] if ready else self.placer.rank(req.model, cluster)
            demand = self.scaler.demand.get(req.model)
            view = PlaceView(
                model=req.model,
                max_instances=spec.max_instances,
                ready=[i.instance_id for i in ready],
                loading=self._loading(live),
                free_workers=cluster.free_workers,
                waiting_since=demand.waiting_since,
                starved=dict(self.scaler.starved),
                best_new_s=ranked[0].seconds if ranked else None,
            )
            decision = decide(view)
            if isinstance(decision, UseInstance):
                rec = next(i for i in live if i.instance_id == decision.instance_id)
                self.metrics.decided("warm" if rec.status == "ready" else "loading")
                return _existing(rec, decision.remaining_s)
            if isinstance(decision, StartBeside):
                self.metrics.decided("scale_out")
                return await self.placer.place_new(
                    spec, req.request_id, cluster=cluster, ranked=ranked
                )
            if isinstance(decision, WaitTurn):
                self.metrics.decided("wait_turn")
                self.scaler.wake()
                raise UnavailableError(
                    f"no free worker for {req.model!r}: models that waited longer go first",
                    detail={"model": req.model, "waiting_models": decision.waiting_models},
                )
            joins = self.cold.pending(req.model) is not None
            started = await self.cold.start(spec, req.request_id, cluster, ranked)
        if isinstance(started, PlaceReply):
            self.metrics.decided("cold")
            return started
        if joins:  # (a new wait or migration counted itself)
            self.metrics.decided("pending")
        return await self.cold.outcome(req.model, started, JOIN_COLD_START_S)

    async def autoscale_start(self, spec: DeploymentSpec, reason: str) -> PlaceReply:
        """The scaling loop's start of one more instance (it holds the model's lock): a first
        instance is a cold start; joining a wait or migration under way, it does not wait."""
        cluster = await self.placer.with_fresh_locality(spec.name, await self.placer.snapshot())
        ranked = self.placer.rank(spec.name, cluster)
        if await self.placer.live_instances(spec.name, cluster):
            return await self.placer.place_new(spec, reason, cluster=cluster, ranked=ranked)
        started = await self.cold.start(spec, reason, cluster, ranked)
        if isinstance(started, PlaceReply):
            return started
        return await self.cold.outcome(spec.name, started, 0.0)

    def _loading(self, live: list[InstanceRecord]) -> list[Loading]:
        """The loads under way, with the seconds each is expected to take still (0 where no
        estimate is known: assume soon)."""
        now = time.time()
        out = []
        for rec in live:
            if rec.status == "loading":
                placed_at, estimated_s = self.scaler.estimates.get(rec.instance_id, (now, 0.0))
                out.append(Loading(rec.instance_id, remaining_load_s(estimated_s, placed_at, now)))
        return out


def _existing(rec: InstanceRecord, remaining_s: float) -> PlaceReply:
    return PlaceReply(
        instance_id=rec.instance_id,
        worker_id=rec.worker_id,
        node_id=rec.node_id,
        status=rec.status,
        source_tier=rec.source_tier or "gpu",
        estimated_startup_s=remaining_s,
    )
