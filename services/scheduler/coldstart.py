"""Cold starts whose best worker is busy: wait for it, start elsewhere, or migrate its running
generations to a worker where their model loads fast and then start here.

`BusyWorkerStarts.start` asks the pure policy (`coldpolicy`, `migration_policy`) only when a
busy worker would start the cold model sooner than every free one; otherwise it places as
usual (`Placer`). A wait or a migration runs in a background task, one per model: placements
of the model that arrive meanwhile join it (the router retries until the instance exists). If
the chosen way fails (the migration aborts, the busy worker never frees, another placement
took the worker) the start falls back to the best free worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from libs.protocol import Bus
from libs.protocol.endpoints import WORKER_RUNNING, WORKER_UNLOAD
from libs.protocol.errors import BusError, NotFoundError, UnavailableError
from libs.protocol.events import ColdStartEvent, ColdStartOption
from libs.protocol.messages import (
    DeploymentSpec,
    MigrateInstanceRequest,
    PlaceReply,
    RunningReply,
    RunningRequest,
    UnloadRequest,
)

from .coldpolicy import Bounds, contenders, weigh
from .metrics import SchedulerMetrics
from .migration import Orchestrator
from .migration_policy import Option
from .placement import Estimate, SourceTier
from .placer import Placer
from .snapshots import Cluster

log = logging.getLogger(__name__)

# How long asking a busy worker what it runs may take (a silent worker is left out).
RUNNING_TIMEOUT_S = 1.0
# A wait for a busy worker asks it this often whether its instance may go now.
WAIT_POLL_S = 0.25
# A wait gives up after twice its estimate plus this (or the configured limit, if sooner).
WAIT_SLACK_S = 2.0


@dataclass(frozen=True)
class ColdStartConfig:
    enabled: bool
    bounds: Bounds
    wait_limit_s: float
    default_bytes: int
    priors: dict[SourceTier, float]
    unload_timeout: float


class BusyWorkerStarts:
    """Starts cold models, weighing a busy best worker against the free ones: waits for it or
    migrates its generations away first, when that starts the model sooner."""

    def __init__(
        self,
        *,
        bus: Bus,
        config: ColdStartConfig,
        placer: Placer,
        migrations: Orchestrator,
        on_done: Callable[[], None] = lambda: None,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self.bus = bus
        self.metrics = metrics or SchedulerMetrics()
        self.config = config
        self.placer = placer
        self.migrations = migrations
        self.on_done = on_done
        self._pending: dict[str, asyncio.Task[PlaceReply | BusError]] = {}

    def starting(self) -> set[str]:
        """The models whose wait or migration is under way."""
        return {m for m, t in self._pending.items() if not t.done()}

    def pending(self, model: str) -> asyncio.Task[PlaceReply | BusError] | None:
        task = self._pending.get(model)
        return task if task is not None and not task.done() else None

    async def start(
        self, spec: DeploymentSpec, request_id: str, cluster: Cluster, ranked: Sequence[Estimate]
    ) -> PlaceReply | asyncio.Task[PlaceReply | BusError]:
        """Place ``spec``'s first instance now, or return the task of a wait or migration
        under way for it (see `outcome`). ``cluster``: the snapshot to decide on, ``ranked``:
        its free workers for ``spec`` (`Placer.rank`). Call with the model's placement lock
        held."""
        task = self.pending(spec.name)
        if task is not None:
            return task
        if not self.config.enabled:
            return await self.placer.place_new(spec, request_id, cluster=cluster, ranked=ranked)
        c = self.config
        busy, best_free = contenders(
            spec.name,
            cluster.workers,
            cluster.nodes,
            default_bytes=c.default_bytes,
            priors=c.priors,
            ranked=ranked,
        )
        if not busy or best_free is None:
            return await self.placer.place_new(spec, request_id, cluster=cluster, ranked=ranked)
        # The placements below keep the decision's snapshot: a worker taken while the busy
        # ones answered fails its (atomic) reservation, and the next best is tried.
        replies = await self._running(busy)
        # What a migration would move is weighed by where its models load fast: their copies
        # as they are now, like the cold model's (the snapshot may be a moment old).
        for moved in sorted({r.model for _, r in replies if r.model and r.model != spec.name}):
            cluster = await self.placer.with_fresh_locality(moved, cluster)
        options = weigh(
            spec.name,
            replies,
            cluster.workers,
            cluster.nodes,
            default_bytes=c.default_bytes,
            priors=c.priors,
            bounds=c.bounds,
            ranked=ranked,
        )
        if not options:
            return await self.placer.place_new(spec, request_id, cluster=cluster, ranked=ranked)
        choice = options[0]
        await self.bus.emit(
            ColdStartEvent(
                model=spec.name,
                chosen=_option(choice),
                options=[_option(o) for o in options],
                moved=list(choice.moved),
            )
        )
        log.info(
            "cold start of %s: %s on %s (est. %.2fs; %d options)",
            spec.name,
            choice.kind,
            choice.worker_id,
            choice.startup_s,
            len(options),
        )
        if choice.kind == "elsewhere":
            return await self.placer.place_new(
                spec, request_id, choice.worker_id, cluster=cluster, ranked=ranked
            )
        self.metrics.decided("migration" if choice.kind == "migrate" else "busy_wait")
        instance = next(r.instance_id for e, r in replies if e.worker_id == choice.worker_id)
        task = self.bus.spawn(self._carry_out(spec, request_id, choice, instance))
        self._pending[spec.name] = task
        task.add_done_callback(lambda t: self._forget(spec.name, t))
        return task

    def _forget(self, model: str, task: asyncio.Task[PlaceReply | BusError]) -> None:
        if self._pending.get(model) is task:
            del self._pending[model]
        self.on_done()

    @staticmethod
    async def outcome(
        model: str, task: asyncio.Task[PlaceReply | BusError], wait_s: float
    ) -> PlaceReply:
        """The placement a wait or migration ends in, if it ends within ``wait_s``; else
        `UnavailableError` (the caller asks again; the start goes on)."""
        done, _ = await asyncio.wait({task}, timeout=wait_s)
        if not done:
            raise UnavailableError(
                f"{model!r} starts once a busy worker is free (a wait or live migration is "
                "under way)",
                detail={"model": model},
            )
        if task.cancelled():
            raise UnavailableError(f"the start of {model!r} was cancelled")
        result = task.result()
        if isinstance(result, BusError):
            raise result
        return result

    async def _running(self, busy: list[Estimate]) -> list[tuple[Estimate, RunningReply]]:
        async def ask(est: Estimate) -> tuple[Estimate, RunningReply] | None:
            try:
                reply = await self.bus.request(
                    WORKER_RUNNING,
                    RunningRequest(),
                    worker_id=est.worker_id,
                    timeout=RUNNING_TIMEOUT_S,
                )
            except BusError as exc:
                log.info("worker %s did not say what it runs: %s", est.worker_id, exc)
                return None
            return est, reply

        answers = await asyncio.gather(*(ask(e) for e in busy))
        return [a for a in answers if a is not None]

    # --- carrying out a wait or a migration -------------------------------------------------

    async def _carry_out(
        self, spec: DeploymentSpec, request_id: str, choice: Option, instance_id: str
    ) -> PlaceReply | BusError:
        """Free ``choice.worker_id`` (wait for, or migrate, ``instance_id``) and place there;
        the best free worker if that fails. Errors are returned, not raised (the caller that
        joins re-raises them; nobody else needs them logged)."""
        try:
            if choice.kind == "migrate":
                freed = await self._migrate_away(spec.name, choice, instance_id)
            else:
                freed = await self._wait_free(spec.name, choice, instance_id)
            # Seconds have passed since the decision: each placement reads a new snapshot.
            if freed:
                try:
                    return await self.placer.place_new(spec, request_id, choice.worker_id)
                except UnavailableError as exc:  # another placement took the worker first
                    log.info("cold start of %s: %s; placing elsewhere", spec.name, exc.message)
            return await self.placer.place_new(spec, request_id)
        except BusError as exc:
            return exc

    async def _migrate_away(self, model: str, choice: Option, instance_id: str) -> bool:
        b = self.config.bounds
        try:
            reply = await self.migrations.migrate(
                MigrateInstanceRequest(
                    instance_id=instance_id,
                    destination_worker_id=choice.destination,
                    # All of them, not only ``choice.moved``: one that began since would
                    # keep the worker busy.
                    free_source=True,
                    max_rounds=b.max_rounds,
                    target_gap=b.target_gap,
                )
            )
        except BusError as exc:
            log.warning("cold start of %s: migrating %s failed: %s", model, instance_id, exc)
            return False
        if not reply.source_freed:
            log.info(
                "cold start of %s: %s was not freed after its migration (%d left on it)",
                model,
                choice.worker_id,
                reply.remaining,
            )
        return reply.source_freed

    async def _wait_free(self, model: str, choice: Option, instance_id: str) -> bool:
        """Ask the busy worker, every `WAIT_POLL_S`, to let its instance go once idle
        (ahead of its keep-alive: a cold model waits for it); False past the wait's bound."""
        limit = min(2 * choice.startup_s + WAIT_SLACK_S, self.config.wait_limit_s)
        deadline = time.monotonic() + limit
        while True:
            try:
                reply = await self.bus.request(
                    WORKER_UNLOAD,
                    UnloadRequest(
                        instance_id=instance_id,
                        only_if_idle=True,
                        ignore_keep_alive=True,
                        reason=f"preempted for {model}",
                    ),
                    worker_id=choice.worker_id,
                    timeout=self.config.unload_timeout,
                )
            except NotFoundError:
                return True  # it went on its own
            except BusError as exc:
                log.info("cold start of %s: waiting for %s: %s", model, choice.worker_id, exc)
                return False
            if reply.unloaded:
                return reply.freed
            if time.monotonic() + WAIT_POLL_S > deadline:
                log.info(
                    "cold start of %s: %s still busy after %.1fs", model, choice.worker_id, limit
                )
                return False
            await asyncio.sleep(WAIT_POLL_S)


def _option(o: Option) -> ColdStartOption:
    return ColdStartOption(
        kind=o.kind,
        worker_id=o.worker_id,
        startup_s=round(o.startup_s, 6),
        destination=o.destination,
        pause_s=round(o.pause_s, 6),
    )
