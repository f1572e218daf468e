"""The one instance a hollow worker hosts: the real worker's load and unload protocol
(reservation check, storage ensure, instance record, `LoadNews`, keep-alive, teardown), with
the read from the tier replaced by a sleep of bytes / bandwidth + a fixed overhead."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial

from redis.exceptions import RedisError

from libs.cluster import ClusterState
from libs.protocol import Bus
from libs.protocol.endpoints import STORAGE_ENSURE
from libs.protocol.errors import (
    BusError,
    ConflictError,
    LoadFailedError,
    NotFoundError,
    UnavailableError,
)
from libs.protocol.events import Event, InstanceFailedEvent, InstanceStoppedEvent
from libs.protocol.messages import (
    EnsureRequest,
    LoadReply,
    LoadRequest,
    Tier,
    UnloadReply,
    UnloadRequest,
)
from libs.protocol.state import InstanceRecord
from services.worker import keepalive
from services.worker.hosting import (
    IDLE_NEWS_DELAY_S,
    UNLOADED_DURING_LOAD,
    Hosted,
)
from services.worker.load_news import LoadNews
from services.worker.reservation import check_reservation
from services.worker.teardown import RETIRE_ATTEMPTS, RETIRE_BACKOFF_S, TEARDOWN_WAIT_S

from .sim import NodeSpec

log = logging.getLogger(__name__)


class HollowHost:
    """Loads, tracks and unloads a hollow worker's instance (the shape of `Host`, which
    `ReservationCheck` drives: ``hosted``, ``load``, ``unload``)."""

    def __init__(
        self,
        *,
        bus: Bus,
        state: ClusterState,
        worker_id: str,
        node_id: str,
        spec: NodeSpec,
        load_timeout: float,
    ) -> None:
        self.bus = bus
        self.state = state
        self.worker_id = worker_id
        self.node_id = node_id
        self.spec = spec
        self.load_timeout = load_timeout
        self.hosted: Hosted | None = None
        self.ready_at = 0.0  # wall clock when the hosted instance became ready
        self.load_sim_s = 0.0  # how much of its load was simulated sleep
        self._control = asyncio.Lock()
        self._news = LoadNews(bus, worker_id=worker_id, node_id=node_id)

    def ready(self, model: str) -> Hosted:
        """The ready instance of ``model`` (as `Host.ready`)."""
        h = self.hosted
        if h is None or h.model != model:
            raise NotFoundError(f"worker {self.worker_id} hosts no instance of {model!r}")
        if h.status != "ready":
            raise UnavailableError(f"instance {h.instance_id} of {model!r} is {h.status}")
        return h

    # --- load -------------------------------------------------------------------------------

    async def load(self, req: LoadRequest) -> LoadReply:
        async with self._control:
            cur = self.hosted
            if cur is not None:
                same = (cur.instance_id, cur.model) == (req.instance_id, req.model)
                if same and cur.status != "stopping":
                    return LoadReply(instance_id=req.instance_id, worker_id=self.worker_id)
                raise ConflictError(
                    f"worker {self.worker_id} already hosts instance {cur.instance_id} "
                    f"({cur.model}, {cur.status})"
                )
            await check_reservation(self.state, self.worker_id, req)
            hosted = Hosted(req.instance_id, req.model, "loading", time.perf_counter())
            self.hosted = hosted
            hosted.task = asyncio.create_task(self._load(hosted, req))
            hosted.task.add_done_callback(partial(self._load_ended, hosted))
        return LoadReply(instance_id=req.instance_id, worker_id=self.worker_id)

    async def _load(self, hosted: Hosted, req: LoadRequest) -> None:
        try:
            await self._news.starting(hosted)
            try:
                async with asyncio.timeout(self.load_timeout):
                    source_tier, sim_s = await self._bring_up(hosted, req)
            except TimeoutError:
                raise LoadFailedError(
                    f"load did not finish within {self.load_timeout:g}s"
                ) from None
            load_s = time.perf_counter() - hosted.requested_at
            hosted.status = "ready"
            hosted.idle_since = self.ready_at = time.time()
            self.load_sim_s = sim_s
            rec = await self.state.update_instance(
                hosted.instance_id,
                status="ready",
                ready_at=self.ready_at,
                source_tier=source_tier,
                load_s=load_s,
            )
            if rec is None:
                raise LoadFailedError("the instance record was deleted during the load")
            await self._news.ready(hosted, source_tier, load_s)
            if source_tier != "dram":
                self.bus.spawn(self._promote(req))
        except asyncio.CancelledError:
            self._begin_teardown(hosted, UNLOADED_DURING_LOAD)
            raise
        except Exception as exc:
            reason = str(exc) if isinstance(exc, BusError) else repr(exc)
            await asyncio.wait({self._begin_teardown(hosted, reason)})

    async def _bring_up(self, hosted: Hosted, req: LoadRequest) -> tuple[Tier, float]:
        """Ensure the SSD copy (or better) on this node, then "read" it; returns the source
        tier and the simulated seconds (the storage's copy and the read)."""
        t0 = time.perf_counter()
        reply = await self.bus.request(
            STORAGE_ENSURE,
            EnsureRequest(model=req.model, checkpoint_uri=req.checkpoint_uri, tier="ssd"),
            timeout=self.load_timeout,
            node_id=self.node_id,
        )
        await self._news.phase(
            hosted, "ensure", time.perf_counter() - t0, reply.bytes, reply.source_tier
        )
        read_s = self.spec.load_overhead_s + reply.bytes / self.spec.bandwidth(reply.tier)
        await asyncio.sleep(read_s)
        await self._news.phase(hosted, "read", read_s, reply.bytes, reply.tier)
        return reply.source_tier, reply.seconds + read_s

    async def _promote(self, req: LoadRequest) -> None:
        """As `Host._promote`: have the node keep a DRAM copy, off the critical path."""
        try:
            await self.bus.request(
                STORAGE_ENSURE,
                EnsureRequest(model=req.model, checkpoint_uri=req.checkpoint_uri, tier="dram"),
                timeout=self.load_timeout,
                node_id=self.node_id,
            )
        except BusError as exc:
            log.info("could not promote %s to the DRAM tier: %s", req.model, exc)

    def _load_ended(self, hosted: Hosted, task: asyncio.Task[None]) -> None:
        if hosted.status != "ready":
            self._begin_teardown(hosted, UNLOADED_DURING_LOAD)

    # --- requests in flight (keep-alive) ---------------------------------------------------

    def begin(self, hosted: Hosted) -> None:
        keepalive.begin(hosted)

    def end(self, hosted: Hosted, keep_alive_s: float | None) -> None:
        """As `Host.end`: the last request out announces `instance.idle` a moment later."""
        if keepalive.end(hosted, keep_alive_s, time.time()) and hosted.idle_news is None:
            loop = asyncio.get_running_loop()
            hosted.idle_news = loop.call_later(IDLE_NEWS_DELAY_S, self._announce_idle, hosted)

    def _announce_idle(self, hosted: Hosted) -> None:
        hosted.idle_news = None
        if (event := keepalive.idle_event(hosted, self.worker_id)) is not None:
            self.bus.spawn(self._emit(event))

    # --- unload -----------------------------------------------------------------------------

    async def unload(self, req: UnloadRequest) -> UnloadReply:
        async with self._control:
            hosted = self.hosted
            if hosted is None or hosted.instance_id != req.instance_id:
                raise NotFoundError(f"worker {self.worker_id} has no instance {req.instance_id}")
            refused = keepalive.refusal(hosted, req, time.time()) if req.only_if_idle else None
            if refused is not None:
                return refused
            requests = hosted.requests
            freed = await self._stop(hosted, req.reason or "unloaded")
        return UnloadReply(instance_id=req.instance_id, freed=freed, requests=requests)

    async def shutdown(self) -> None:
        async with self._control:
            if self.hosted is not None:
                await self._stop(self.hosted, "worker stopping")

    async def _stop(self, hosted: Hosted, reason: str) -> bool:
        task = hosted.task
        loading = hosted.teardown is None and task is not None and not task.done()
        if loading:
            assert task is not None
            task.cancel()
            await asyncio.wait({task}, timeout=2.0)
        teardown = self._begin_teardown(hosted, UNLOADED_DURING_LOAD if loading else None)
        await asyncio.wait({teardown}, timeout=TEARDOWN_WAIT_S)
        await self._emit(
            InstanceStoppedEvent(
                instance_id=hosted.instance_id,
                model=hosted.model,
                worker_id=self.worker_id,
                reason=reason,
            )
        )
        return teardown.done()

    # --- teardown ---------------------------------------------------------------------------

    def _begin_teardown(self, hosted: Hosted, failure: str | None) -> asyncio.Task[None]:
        """As `teardown.Teardowns.begin`, without an engine to stop or memory to free (the
        real one runs a full `gc.collect`, which here would stall every hollow worker)."""
        if hosted.teardown is None:
            hosted.status = "stopping"
            hosted.teardown = asyncio.get_running_loop().create_task(
                self._teardown(hosted, failure)
            )
        return hosted.teardown

    async def _teardown(self, hosted: Hosted, failure: str | None) -> None:
        iid = hosted.instance_id
        try:
            with contextlib.suppress(RedisError, OSError):
                if failure is None:
                    await self.state.update_instance(iid, status="stopping")
                else:
                    log.warning("instance %s of %s failed: %s", iid, hosted.model, failure)
                    await self.state.update_instance(iid, status="failed", error=failure)
            if failure is not None:
                await self._emit(
                    InstanceFailedEvent(
                        instance_id=iid, model=hosted.model, worker_id=self.worker_id, error=failure
                    )
                )
        finally:
            try:
                await self._retire(hosted)
            finally:
                if self.hosted is hosted:
                    self.hosted = None

    async def _retire(self, hosted: Hosted) -> None:
        rec = InstanceRecord(
            instance_id=hosted.instance_id,
            model=hosted.model,
            worker_id=self.worker_id,
            node_id=self.node_id,
            status="stopping",
            created_at=0.0,
        )
        for attempt in range(RETIRE_ATTEMPTS):
            try:
                await self.state.retire_instance(rec)
                return
            except (RedisError, OSError) as exc:
                log.warning("retire of %s failed: %r", hosted.instance_id, exc)
                await asyncio.sleep(RETIRE_BACKOFF_S * 2**attempt)

    async def _emit(self, event: Event) -> None:
        await self._news.emit(event)
