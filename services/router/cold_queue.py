"""The cold-start queue: requests for a model with no ready instance wait here while one task
per model gets an instance placed (by the scheduler) and ready.

For each model with waiting requests, one task asks the scheduler for an instance (retrying
with backoff while it has no free worker), then watches the instance until it is ready
(``instance.*`` events, with a Redis poll as the fallback) and releases the queue. A failed or
vanished instance gets one more placement; the second failure fails the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from libs.protocol import Bus
from libs.protocol.endpoints import SCHED_PLACE
from libs.protocol.errors import (
    BusError,
    BusTimeoutError,
    InternalError,
    LoadFailedError,
    NoRespondersError,
    OverloadedError,
    UnavailableError,
)
from libs.protocol.events import LoadPhaseEvent
from libs.protocol.messages import PlaceRequest

from .cluster import ClusterView
from .metrics import RouterMetrics
from .progress import Placed, Progress, progress_of
from .queue import WaitQueue

log = logging.getLogger(__name__)

# Placement answers worth retrying: the scheduler has no free worker, or is briefly away.
RETRY_PLACEMENT = (UnavailableError, NoRespondersError, BusTimeoutError, OverloadedError)
BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 1.0
# How often the state of a loading instance is read from Redis when no event arrives.
POLL_S = 0.1
# Failed or vanished instances tolerated per cold start before the waiting requests fail.
MAX_FAILED_INSTANCES = 2

Outcome = Literal["ready", "failed", "abandoned"]


@dataclass
class _Waiter:
    joined: float
    future: asyncio.Future[float] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class _ModelStart:
    task: asyncio.Task[None] | None = None
    loading_since: float | None = None  # since when the queue has waited for a loading instance
    instance_id: str = ""  # the instance being waited for
    last_error: BusError | None = None
    placed: Placed | None = None  # the instance being waited for, as placed (progress)
    fetched: bool = False  # its load has its checkpoint copy (a "load.phase" ensure event)


class ColdQueue:
    """The per-model queues of requests waiting for an instance, and the task serving each
    (it asks the scheduler to place one, watches it until ready, then releases the queue)."""

    def __init__(
        self,
        bus: Bus,
        view: ClusterView,
        metrics: RouterMetrics,
        *,
        queue_size: int,
        place_timeout: float,
        retry_after: int,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.bus = bus
        self.view = view
        self.metrics = metrics
        self.queue: WaitQueue[_Waiter] = WaitQueue(queue_size)
        self.place_timeout = place_timeout
        self.retry_after = retry_after
        self._models: dict[str, _ModelStart] = {}
        self._closed = False
        self._on_change = on_change

    def waiting(self) -> dict[str, tuple[int, float]]:
        """Per model: requests waiting for an instance, and when (monotonic) the oldest came."""
        out: dict[str, tuple[int, float]] = {}
        for model in self.queue.models():
            joined = [w.joined for w in self.queue.peek(model)]
            if joined:
                out[model] = (len(joined), min(joined))
        return out

    async def wait(
        self, model: str, *, deadline: float, ticket: int | None = None, request_id: str = ""
    ) -> tuple[float, int]:
        """Queue until an instance of ``model`` is ready, or ``deadline`` (monotonic) passes.

        Returns the part of the wait during which an instance was loading, and the queue
        ticket (pass it back to rejoin in the same place). Raises `OverloadedError` when the
        queue is full, `UnavailableError` at the deadline, or the placement's error.
        """
        if self._closed:
            raise UnavailableError("the router is shutting down")
        waiter = _Waiter(joined=time.monotonic())
        ticket = self.queue.join(model, waiter, ticket=ticket)
        self._gauge(model)
        start = self._models.setdefault(model, _ModelStart())
        if start.task is None:
            start.task = asyncio.create_task(self._run(model, start, request_id))
        try:
            load_s = await asyncio.wait_for(waiter.future, deadline - time.monotonic())
        except TimeoutError:
            raise self._timed_out(model, start) from None
        finally:
            if self.queue.leave(model, ticket):
                self._gauge(model)
        return load_s, ticket

    def progress(self, model: str, waiting_since: float) -> Progress:
        """Where the cold start a request of ``model`` waits for stands (`progress`)."""
        start = self._models.get(model)
        placed = start.placed if start is not None else None
        fetched = start.fetched if start is not None else False
        return progress_of(placed, fetched, waiting_since, time.monotonic())

    def on_phase(self, ev: LoadPhaseEvent) -> None:
        """A phase of an instance's load ended: after "ensure" its checkpoint is on the node."""
        start = self._models.get(ev.model)
        if start is not None and start.instance_id == ev.instance_id and ev.phase == "ensure":
            start.fetched = True

    def _timed_out(self, model: str, start: _ModelStart) -> BusError:
        why = f"; last placement error: {start.last_error.message}" if start.last_error else ""
        return UnavailableError(
            f"no instance of {model!r} became ready in time{why}",
            detail={"model": model, "retry_after": self.retry_after},
        )

    async def close(self) -> None:
        """Stop every placement task and fail the requests still waiting."""
        self._closed = True
        tasks = [s.task for s in self._models.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        for model in list(self.queue.models()):
            self._fail(model, UnavailableError("the router is shutting down"))

    # --- the placement task ---------------------------------------------------------------

    async def _run(self, model: str, start: _ModelStart, request_id: str) -> None:
        try:
            await self._place_until_served(model, start, request_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("cold start of %s failed", model)
            self._fail(model, InternalError(f"cold start of {model!r} failed: {exc!r}"))
        finally:
            start.task = None
            start.loading_since = None
            start.instance_id = ""
            if not self.queue.depth(model):
                self._models.pop(model, None)

    async def _place_until_served(self, model: str, start: _ModelStart, request_id: str) -> None:
        backoff = BACKOFF_MIN_S
        failures = 0
        while self.queue.depth(model):
            # Another router's placement, or an instance that just came back, serves us too.
            if await self._usable(model):
                self._release(model, start)
                continue
            asked = time.perf_counter()
            try:
                reply = await self.bus.request(
                    SCHED_PLACE,
                    PlaceRequest(model=model, request_id=request_id),
                    timeout=self.place_timeout,
                )
            except RETRY_PLACEMENT as exc:
                start.last_error = exc
                log.debug("placement of %s: %s; retrying in %.2fs", model, exc, backoff)
                await self.view.wait_changed(model, backoff)  # a stopped instance frees a worker
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            except BusError as exc:
                self._fail(model, exc)
                return
            self.metrics.placement.observe(time.perf_counter() - asked)
            if reply.status == "loading" and reply.instance_id != start.instance_id:
                start.instance_id = reply.instance_id
                start.placed = Placed(
                    reply.instance_id,
                    reply.source_tier,
                    reply.estimated_startup_s,
                    at=time.monotonic(),
                )
                start.fetched = False
                self.metrics.cold_starts.labels(model).inc()
                if start.loading_since is None:
                    start.loading_since = time.monotonic()
            outcome, why = await self._until_ready(model, reply.instance_id)
            if outcome == "abandoned":
                return
            if outcome == "ready" and await self._usable(model):
                backoff = BACKOFF_MIN_S
                self._release(model, start)
                continue
            if outcome == "ready":
                # The scheduler offers an instance whose worker we found unreachable: wait for
                # its heartbeat to lapse (the scheduler then stops offering it).
                start.last_error = UnavailableError(f"instance {reply.instance_id} is unreachable")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            failures += 1
            start.last_error = LoadFailedError(why, detail={"model": model})
            log.warning("instance %s of %s did not start: %s", reply.instance_id, model, why)
            if failures >= MAX_FAILED_INSTANCES:
                self._fail(
                    model,
                    LoadFailedError(
                        f"no instance of {model!r} could be started: {why}",
                        detail={"model": model, "retry_after": self.retry_after},
                    ),
                )
                return

    async def _usable(self, model: str) -> bool:
        try:
            return bool(await self.view.ready(model, refresh=True))
        except UnavailableError:
            return False

    async def _until_ready(self, model: str, instance_id: str) -> tuple[Outcome, str]:
        """Watch one instance until it is ready, fails or vanishes, or nobody waits any more."""
        while self.queue.depth(model):
            with contextlib.suppress(UnavailableError):  # Redis blinked: poll again
                rec = await self.view.instance(instance_id)
                if rec is None:
                    return "failed", f"instance {instance_id} disappeared while loading"
                if rec.status == "ready":
                    return "ready", ""
                if rec.status in ("failed", "stopping"):
                    return "failed", rec.error or f"instance {instance_id} is {rec.status}"
            await self.view.wait_changed(model, POLL_S)
        return "abandoned", ""

    # --- releasing the queue --------------------------------------------------------------

    def _release(self, model: str, start: _ModelStart) -> None:
        now = time.monotonic()
        for waiter in self.queue.take_all(model):
            if not waiter.future.done():
                since = start.loading_since
                load_s = max(0.0, now - max(waiter.joined, since)) if since is not None else 0.0
                waiter.future.set_result(load_s)
        start.loading_since = None
        start.instance_id = ""
        start.last_error = None
        start.placed = None
        self._gauge(model)

    def _fail(self, model: str, exc: BusError) -> None:
        for waiter in self.queue.take_all(model):
            if not waiter.future.done():
                waiter.future.set_exception(exc)
        self._gauge(model)

    def _gauge(self, model: str) -> None:
        self.metrics.queue_depth.labels(model).set(self.queue.depth(model))
        if self._on_change is not None:
            self._on_change()
