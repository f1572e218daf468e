"""The scaling loop: wakes on news (demand reports, instance and deployment events, a worker
joining) and on exact keep-alive deadlines, builds a snapshot, and carries out the policy's
plan (`autoscaler.plan`). Nothing polls on a fixed interval.

A step reads every deployment and instance (the workers come from the placements' cached
snapshot, `Snapshots`): at 1,000 workers and 200 models, some milliseconds. Under constant
news (every request's demand report, every load), a step follows the last one no sooner than
`STEP_SPACING` times its read and plan took, so the loop takes at most about 1/`STEP_SPACING`
of the scheduler's time and placements keep the rest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from libs.cluster import ClusterState
from libs.protocol import Bus
from libs.protocol.endpoints import WORKER_UNLOAD
from libs.protocol.errors import BusError, NotFoundError
from libs.protocol.events import (
    DeploymentEvent,
    InstanceFailedEvent,
    InstanceIdleEvent,
    InstanceReadyEvent,
    InstanceStoppedEvent,
    PlacementEvent,
    ScaledEvent,
    ServiceStartedEvent,
)
from libs.protocol.messages import DemandReport, DeploymentSpec, PlaceReply, UnloadRequest
from libs.protocol.state import InstanceRecord

from .autoscaler import (
    InstanceView,
    ModelView,
    Plan,
    Scaling,
    Snapshot,
    Stop,
    desired_instances,
    plan,
)
from .demand import ActivityBook, DemandBook
from .metrics import SchedulerMetrics
from .snapshots import Cluster

log = logging.getLogger(__name__)

PlaceNew = Callable[[DeploymentSpec, str], Awaitable[PlaceReply]]
LiveInstances = Callable[[str], Awaitable[list[InstanceRecord]]]
Forget = Callable[[InstanceRecord, str], Awaitable[None]]
Starting = Callable[[], set[str]]
ReadCluster = Callable[[], Awaitable[Cluster]]

# After a failed step (Redis away...) or an unload that got no answer: try again after this.
RETRY_S = 1.0
# Only one scheduler replica runs the loop: the holder of this lease, renewed every third of
# its TTL (a follower checks as often whether the leader is gone).
LEASE = "autoscaler"
LEASE_TTL_S = 6.0
# A demand change that only moves a model's desired instance count (no request waits, none
# stops waiting) is acted on after this long, so that steady traffic whose in-flight count
# swings between 0 and 1 with every request does not re-plan the cluster each time.
DEMAND_SETTLE_S = 0.5
# A step follows the last one no sooner than this many times that one's read and plan took.
STEP_SPACING = 10.0


def scaling_of(spec: DeploymentSpec) -> Scaling:
    return Scaling(
        min_instances=spec.min_instances,
        max_instances=spec.max_instances,
        target_concurrency=spec.target_concurrency,
        keep_alive_s=spec.keep_alive_s,
    )


class ScaleLoop:
    """The scheduler's autoscaler: one task, woken by events and timers."""

    def __init__(
        self,
        *,
        bus: Bus,
        state: ClusterState,
        locks: dict[str, asyncio.Lock],
        place_new: PlaceNew,
        live_instances: LiveInstances,
        cluster: ReadCluster,
        forget: Forget,
        unload_timeout: float,
        starting: Starting = set,
        lease_ttl_s: float = LEASE_TTL_S,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self.bus = bus
        self.metrics = metrics or SchedulerMetrics()
        self.lease_ttl_s = lease_ttl_s
        self.leader = False
        self.state = state
        self.locks = locks
        self.place_new = place_new
        self.live_instances = live_instances
        self.cluster = cluster
        self.forget = forget
        self.unload_timeout = unload_timeout
        self.starting = starting
        self.demand = DemandBook()
        self.activity = ActivityBook()
        # instance -> (placed at, estimated startup seconds), from `scheduler.placed` events.
        self.estimates: dict[str, tuple[float, float]] = {}
        # Cold models the last step could not give a worker: model -> waiting since.
        self.starved: dict[str, float] = {}
        self._scaling: dict[str, Scaling] = {}
        self._surplus: set[str] = set()  # models with more live instances than desired
        self._stopping: dict[str, asyncio.Task[None]] = {}
        self._last_demand: dict[str, tuple[int, bool]] = {}
        self._wake = asyncio.Event()
        self.decide_s = 0.0  # how long the last step's read and plan took (not its orders)
        self._settle: asyncio.TimerHandle | None = None

    # --- news -----------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def wake_soon(self) -> None:
        """Wake after `DEMAND_SETTLE_S` (once, however many calls come meanwhile)."""
        if self._settle is None:
            self._settle = asyncio.get_running_loop().call_later(DEMAND_SETTLE_S, self._settled)

    def _settled(self) -> None:
        self._settle = None
        self.wake()

    async def subscribe(self) -> None:
        bus, sub = self.bus, self.bus.subjects
        await bus.subscribe(sub.demand, DemandReport, self._on_demand)
        await bus.subscribe(sub.event("instance.idle"), InstanceIdleEvent, self._on_idle, json=True)
        for kind, cls in (
            ("instance.ready", InstanceReadyEvent),
            ("instance.stopped", InstanceStoppedEvent),
            ("instance.failed", InstanceFailedEvent),
            ("deployment.changed", DeploymentEvent),
        ):
            await bus.subscribe(sub.event(kind), cls, self._on_change, json=True)
        await bus.subscribe(
            sub.event("service.started"), ServiceStartedEvent, self._on_service, json=True
        )
        await bus.subscribe(
            sub.event("scheduler.placed"), PlacementEvent, self._on_placed, json=True
        )

    async def _on_demand(self, report: DemandReport) -> None:
        changed = self.demand.apply(report, time.time())
        matters = [self._matters(m) for m in changed]
        if "now" in matters:
            self.wake()
        elif "soon" in matters:
            self.wake_soon()

    def _matters(self, model: str) -> str:
        """Whether a demand change of ``model`` can change a decision: "now" when requests
        start or stop waiting for it (a cold start, fairness, preemption), "soon" when only
        its desired count moved, else ""."""
        scaling = self._scaling.get(model)
        if scaling is None:
            return "now"
        d = self.demand.get(model)
        desired, queued = self._last_demand.get(model, (0, False))
        if (d.queued > 0) != queued:
            return "now"
        return "soon" if desired_instances(d.requests, scaling) != desired else ""

    async def _on_idle(self, ev: InstanceIdleEvent) -> None:
        if self.activity.idle(
            ev.instance_id, requests=ev.requests, at=ev.ts, keep_until=ev.keep_until
        ) and (ev.model in self._surplus or self.starved):
            self.wake()

    async def _on_change(self, ev: object) -> None:
        if isinstance(ev, InstanceStoppedEvent | InstanceFailedEvent):
            self.activity.forget(ev.instance_id)
            self.estimates.pop(ev.instance_id, None)
        self.wake()

    async def _on_service(self, ev: ServiceStartedEvent) -> None:
        if ev.service == "worker":  # a new worker is capacity for whoever waits
            self.wake()

    async def _on_placed(self, ev: PlacementEvent) -> None:
        self.estimates[ev.instance_id] = (ev.ts, ev.estimated_startup_s)

    # --- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        wake_at: float | None = time.time()  # a first round at start: take the lease, catch up
        spaced_until = 0.0  # no step before this (perf_counter), see `STEP_SPACING`
        while True:
            timeout = None if wake_at is None else max(wake_at - time.time(), 0.0)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            # News that comes during the spacing joins this step.
            await asyncio.sleep(max(spaced_until - time.perf_counter(), 0.0))
            self._wake.clear()
            renew_at = time.time() + self.lease_ttl_s / 3
            try:
                if not await self._lead():
                    wake_at = renew_at
                    continue
                wake_at = _earliest(await self.step(), renew_at)
                spaced_until = time.perf_counter() + STEP_SPACING * self.decide_s
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("autoscaling step failed; retrying in %.1fs", RETRY_S)
                wake_at = time.time() + RETRY_S

    async def _lead(self) -> bool:
        """Take or renew the autoscaler lease; whether this replica leads now."""
        try:
            held = await self.state.hold_lease(LEASE, self.bus.instance_id, self.lease_ttl_s)
        except (RedisError, OSError) as exc:
            log.warning("cannot renew the autoscaler lease: %r", exc)
            held = False
        if held != self.leader:
            log.info("autoscaler: %s", "leading" if held else "following another scheduler")
            self.leader = held
        return held

    async def close(self) -> None:
        """Hand the lease over at once (a clean stop), instead of letting it expire."""
        if self._settle is not None:
            self._settle.cancel()
            self._settle = None
        if self.leader:
            with contextlib.suppress(RedisError, OSError):
                await self.state.drop_lease(LEASE, self.bus.instance_id)
            self.leader = False

    async def step(self) -> float | None:
        """One decision round; returns when the next one is due without news (None: never)."""
        began = time.perf_counter()
        snap, specs, records = await self._snapshot()
        decided = plan(snap)
        self.decide_s = time.perf_counter() - began
        self.starved = decided.starved
        self._surplus = {
            m.name for m in snap.models if len(m.live) > decided.desired.get(m.name, 0)
        }
        live = {m.name: len(m.live) for m in snap.models}
        for stop in decided.stops:
            self._begin_stop(stop, records[stop.instance_id], live[stop.model])
            live[stop.model] -= 1
        await self._starts(decided, specs)
        return _earliest(decided.wake_at, self.demand.next_expiry())

    async def _snapshot(
        self,
    ) -> tuple[Snapshot, dict[str, DeploymentSpec], dict[str, InstanceRecord]]:
        now = time.time()
        self.demand.expire(now)
        # Adapters have no instances: their demand counts as their base's (the routers report
        # an adapter's requests under the base that serves them).
        specs = {s.name: s for s in await self.state.deployments() if not s.base}
        cluster = await self.cluster()
        alive, free = cluster.alive, cluster.free_workers
        instances = await self.state.instances_of(list(specs))
        per_model = [instances[name] for name in specs]
        models: list[ModelView] = []
        records: dict[str, InstanceRecord] = {}
        self._scaling = {name: scaling_of(spec) for name, spec in specs.items()}
        self._last_demand = {}
        starting = self.starting()
        for (name, spec), recs in zip(specs.items(), per_model, strict=True):
            views = []
            for rec in recs:
                if rec.worker_id not in alive or rec.status not in ("loading", "ready"):
                    continue
                records[rec.instance_id] = rec
                views.append(self._view(rec, spec))
            if name in starting and not views:
                # A cold start under way (waiting for a busy worker, or migrating its
                # generations away) counts as a loading instance: nothing else starts the
                # model, and it preempts nobody meanwhile.
                views.append(InstanceView("starting:" + name, "loading"))
            d = self.demand.get(name)
            scaling = self._scaling[name]
            self._last_demand[name] = (desired_instances(d.requests, scaling), d.queued > 0)
            models.append(ModelView(name, scaling, d.requests, d.queued, d.waiting_since, views))
        self.activity.keep_only(set(records))
        return Snapshot(now, models, free), specs, records

    def _view(self, rec: InstanceRecord, spec: DeploymentSpec) -> InstanceView:
        stopping = rec.instance_id in self._stopping
        if rec.status == "loading":
            return InstanceView(rec.instance_id, "loading", stopping=stopping)
        act = self.activity.get(rec.instance_id)
        if act is None:  # no news since it became ready
            since = rec.ready_at or rec.created_at
            return InstanceView(
                rec.instance_id,
                "ready",
                idle_since=since,
                keep_until=since + spec.keep_alive_s,
                stopping=stopping,
            )
        keep_until = max(act.keep_until, act.retry_at)
        if act.keep_until == 0.0:
            # No finished request asked for a keep-alive of its own (the instance never served
            # one, or only generations that moved in or out): the deployment's applies.
            keep_until = max(keep_until, act.idle_since + spec.keep_alive_s)
        return InstanceView(
            rec.instance_id,
            "ready",
            busy=act.busy,
            idle_since=act.idle_since,
            keep_until=keep_until,
            stopping=stopping,
        )

    # --- carrying out a plan ---------------------------------------------------------------

    async def _starts(self, decided: Plan, specs: dict[str, DeploymentSpec]) -> None:
        for start in decided.starts:
            spec = specs[start.model]
            lock = self.locks.setdefault(start.model, asyncio.Lock())
            async with lock:
                # A direct placement may have started one since the snapshot.
                if len(await self.live_instances(start.model)) >= start.target:
                    continue
                try:
                    reply = await self.place_new(spec, "autoscaler")
                except BusError as exc:
                    log.info("autoscaler could not start %s: %s", start.model, exc)
                    continue
            self.estimates.setdefault(reply.instance_id, (time.time(), reply.estimated_startup_s))
            self.metrics.scale("up")
            await self.bus.emit(
                ScaledEvent(
                    model=start.model,
                    from_instances=start.target - 1,
                    to_instances=start.target,
                    reason=start.reason,
                    instance_ids=[reply.instance_id],
                )
            )

    def _begin_stop(self, stop: Stop, rec: InstanceRecord, live: int) -> None:
        if stop.instance_id in self._stopping:
            return
        task = self.bus.spawn(self._stop(stop, rec, live))
        self._stopping[stop.instance_id] = task

    async def _stop(self, stop: Stop, rec: InstanceRecord, live: int) -> None:
        try:
            reply = await self.bus.request(
                WORKER_UNLOAD,
                UnloadRequest(
                    instance_id=stop.instance_id,
                    only_if_idle=True,
                    ignore_keep_alive=stop.reason == "preempted",
                    reason=stop.reason,
                ),
                worker_id=rec.worker_id,
                timeout=self.unload_timeout,
            )
        except NotFoundError:
            # The worker does not host it: the record is a leftover.
            await self.forget(rec, "not on its worker")
        except BusError as exc:
            log.warning("unload of idle %s failed: %s", stop.instance_id, exc)
            self.activity.refused(
                stop.instance_id, requests=0, in_flight=0, retry_after_s=RETRY_S, now=time.time()
            )
        else:
            if reply.unloaded:
                self.activity.forget(stop.instance_id)
                self.metrics.scale("down")
                why = stop.reason if not stop.for_model else f"{stop.reason} for {stop.for_model}"
                await self.bus.emit(
                    ScaledEvent(
                        model=stop.model,
                        from_instances=live,
                        to_instances=live - 1,
                        reason=why,
                        instance_ids=[stop.instance_id],
                    )
                )
            else:
                self.activity.refused(
                    stop.instance_id,
                    requests=reply.requests,
                    in_flight=reply.in_flight,
                    retry_after_s=reply.retry_after_s,
                    now=time.time(),
                )
        finally:
            self._stopping.pop(stop.instance_id, None)
            self.wake()


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None and math.isfinite(t)]
    return min(known, default=None)
