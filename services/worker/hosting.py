"""The one model instance a worker hosts: load it (storage, loader, engine), serve it, unload it.

Every way out of a load (storage error, loader error, timeout, an unload) ends in the same
teardown: the engine stops, the memory is returned, the instance record is deleted and the
worker's reservation is released, so nothing is left half-loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Literal, TypeVar

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
from libs.protocol.events import (
    Event,
    InstanceFailedEvent,
    InstanceIdleEvent,
    InstanceReadyEvent,
    InstanceStartingEvent,
    InstanceStoppedEvent,
    LoadPhaseEvent,
    LoadReportEvent,
)
from libs.protocol.messages import (
    EnsureRequest,
    LoadReply,
    LoadRequest,
    Tier,
    UnloadReply,
    UnloadRequest,
)
from libs.protocol.state import InstanceRecord

from .settings import WorkerSettings

if TYPE_CHECKING:
    from libs.loader import HostPool

    from .runtime import Runtime

log = logging.getLogger(__name__)

# An instance that went idle says so (`instance.idle`) if it is still idle this much later.
IDLE_NEWS_DELAY_S = 0.1

T = TypeVar("T")

# How long an unload waits for the engine's current forward pass, for a cancelled load to
# notice its token, and for in-flight streams to send their error frames.
STOP_GRACE_S = 10.0
DRAIN_S = 2.0


def prepare(torch_threads: int, host_pool_gb: float) -> HostPool | None:
    """Start-up work for a thread: import torch and the loader, set threads, build the pool."""
    from . import runtime

    return runtime.prepare(torch_threads, host_pool_gb)


@dataclass(eq=False)
class Hosted:
    instance_id: str
    model: str
    status: Literal["loading", "ready", "stopping"]
    requested_at: float  # time.perf_counter() when the load request arrived
    runtime: Runtime | None = None
    task: asyncio.Task[None] | None = None
    # Idleness, for keep-alive: requests in flight and taken so far, when the last one
    # finished (wall time), and until when finished requests asked to keep it loaded.
    in_flight: int = 0
    requests: int = 0
    idle_since: float = 0.0
    keep_until: float = 0.0  # math.inf: a request asked to keep it indefinitely
    idle_news: asyncio.TimerHandle | None = None  # the pending `instance.idle` announcement
    phases: dict[str, float] = field(default_factory=dict)  # the load's phases, for its report
    load_bytes: int = 0


class Host:
    """Loads, tracks and unloads this worker's instance; the service's handlers call it."""

    def __init__(
        self,
        *,
        bus: Bus,
        state: ClusterState,
        settings: WorkerSettings,
        worker_id: str,
        node_id: str,
        prepared: asyncio.Future[HostPool | None],
    ) -> None:
        self.bus = bus
        self.state = state
        self.settings = settings
        self.worker_id = worker_id
        self.node_id = node_id
        self.hosted: Hosted | None = None
        self._prepared = prepared
        self._control = asyncio.Lock()  # load and unload decisions, one at a time

    def ready(self, model: str) -> tuple[Hosted, Runtime]:
        """The instance serving ``model``: `NotFoundError` if none, `UnavailableError` if it is
        not ready (yet or any more)."""
        h = self.hosted
        if h is None or h.model != model:
            raise NotFoundError(f"worker {self.worker_id} hosts no instance of {model!r}")
        if h.status != "ready" or h.runtime is None:
            raise UnavailableError(f"instance {h.instance_id} of {model!r} is {h.status}")
        return h, h.runtime

    # --- load -------------------------------------------------------------------------------

    async def load(self, req: LoadRequest) -> LoadReply:
        """Check the reservation, then load in the background; the reply comes at once."""
        async with self._control:
            cur = self.hosted
            if cur is not None:
                same = (cur.instance_id, cur.model) == (req.instance_id, req.model)
                if same and cur.status != "stopping":  # a retried request: already on it
                    return LoadReply(instance_id=req.instance_id, worker_id=self.worker_id)
                raise ConflictError(
                    f"worker {self.worker_id} already hosts instance {cur.instance_id} "
                    f"({cur.model}, {cur.status})"
                )
            await self._check_reservation(req)
            hosted = Hosted(req.instance_id, req.model, "loading", time.perf_counter())
            self.hosted = hosted
            hosted.task = asyncio.create_task(self._load(hosted, req))
        return LoadReply(instance_id=req.instance_id, worker_id=self.worker_id)

    async def _check_reservation(self, req: LoadRequest) -> None:
        try:
            worker = await self.state.get_worker(self.worker_id)
            rec = await self.state.get_instance(req.instance_id)
        except (RedisError, OSError) as exc:
            raise UnavailableError(f"cannot read cluster state: {exc!r}") from None
        held = worker.instance_id if worker is not None else "(unregistered)"
        if held != req.instance_id:
            raise ConflictError(
                f"worker {self.worker_id} is reserved for {held or 'nothing'!r}, "
                f"not for {req.instance_id!r}"
            )
        if rec is None:
            raise NotFoundError(f"instance {req.instance_id} has no record in the cluster state")
        if rec.worker_id != self.worker_id or rec.model != req.model:
            raise ConflictError(
                f"instance {req.instance_id} is recorded as {rec.model!r} on {rec.worker_id}"
            )

    async def _load(self, hosted: Hosted, req: LoadRequest) -> None:
        await self._emit(
            InstanceStartingEvent(
                instance_id=hosted.instance_id,
                model=hosted.model,
                worker_id=self.worker_id,
                node_id=self.node_id,
            )
        )
        timeout = self.settings.load_timeout
        try:
            try:
                async with asyncio.timeout(timeout):
                    source_tier = await self._bring_up(hosted, req)
            except TimeoutError:
                raise LoadFailedError(f"load did not finish within {timeout:g}s") from None
            load_s = time.perf_counter() - hosted.requested_at
            hosted.status = "ready"
            hosted.idle_since = time.time()
            rec = await self.state.update_instance(
                hosted.instance_id,
                status="ready",
                ready_at=time.time(),
                source_tier=source_tier,
                load_s=load_s,
            )
            if rec is None:
                raise LoadFailedError("the instance record was deleted during the load")
            await self._emit(
                InstanceReadyEvent(
                    instance_id=hosted.instance_id,
                    model=hosted.model,
                    worker_id=self.worker_id,
                    node_id=self.node_id,
                    source_tier=source_tier,
                    load_s=load_s,
                )
            )
            log.info("instance %s of %s ready in %.3fs", hosted.instance_id, hosted.model, load_s)
            await self._emit(
                LoadReportEvent(
                    instance_id=hosted.instance_id,
                    model=hosted.model,
                    worker_id=self.worker_id,
                    node_id=self.node_id,
                    source_tier=source_tier,
                    bytes=hosted.load_bytes,
                    seconds=load_s,
                    one_off_s=hosted.phases.get("startup", 0.0),
                    phases=dict(hosted.phases),
                )
            )
            if source_tier != "dram":
                self.bus.spawn(self._promote(req))
        except asyncio.CancelledError:
            await self._fail(hosted, "unloaded during the load")
            raise
        except Exception as exc:
            await self._fail(hosted, _describe(exc))

    async def _promote(self, req: LoadRequest) -> None:
        """After a load from SSD: have the node keep a DRAM copy, so the next cold start of
        this model here is a DRAM hit. Off the critical path; failures only cost speed."""
        try:
            await self.bus.request(
                STORAGE_ENSURE,
                EnsureRequest(model=req.model, checkpoint_uri=req.checkpoint_uri, tier="dram"),
                timeout=self.settings.load_timeout,
                node_id=self.node_id,
            )
        except BusError as exc:
            log.info("could not promote %s to the DRAM tier: %s", req.model, exc)

    async def _bring_up(self, hosted: Hosted, req: LoadRequest) -> Tier:
        """Storage ensure, then the loader; returns the tier the bytes came from.

        It asks for the SSD tier, which returns the DRAM copy when there is one: loading
        straight from SSD (parallel direct reads) beats copying into DRAM first and then
        loading; the copy into DRAM happens afterwards (`_promote`).
        """
        t0 = time.perf_counter()
        reply = await self.bus.request(
            STORAGE_ENSURE,
            EnsureRequest(model=req.model, checkpoint_uri=req.checkpoint_uri, tier="ssd"),
            timeout=self.settings.load_timeout,
            node_id=self.node_id,
        )
        await self._phase(
            hosted, "ensure", time.perf_counter() - t0, reply.bytes, reply.source_tier
        )
        if not self._prepared.done():  # the torch import of a just-started worker
            t0 = time.perf_counter()
            await asyncio.shield(self._prepared)
            await self._phase(hosted, "startup", time.perf_counter() - t0)
        pool = self._prepared.result()
        from libs.loader import CancelToken

        from .runtime import EngineSettings, load_runtime

        token = CancelToken()
        fn = partial(
            load_runtime,
            reply.path,
            device=self.settings.device,
            pool=pool,
            cancel=token,
            engine=EngineSettings(
                max_batch=self.settings.max_batch,
                kv_cache_gb=self.settings.kv_cache_gb,
                prefill_chunk=self.settings.prefill_chunk,
                max_queue=self.settings.max_queue,
            ),
            name=f"sllm-engine-{hosted.instance_id}",
            # The storage service checked every chunk when it wrote the DRAM copy, and its
            # files are written once (atomically) and never truncated: hashing or pre-faulting
            # them again would only cost. An SSD copy is checked on every read (disks rot).
            verify=reply.tier != "dram",
            prefault=reply.tier != "dram",
            step_delay=self.settings.decode_delay,
        )
        runtime, report = await run_cancellable(fn, token.cancel, _dispose_loaded)
        hosted.runtime = runtime
        await self._phase(hosted, "read", report.read_s, report.read_bytes, report.read_tier)
        await self._phase(hosted, "build", report.build_s)
        await self._phase(hosted, "tokenizer", report.tokenizer_s)
        return reply.source_tier

    async def _phase(
        self, hosted: Hosted, phase: str, seconds: float, nbytes: int = 0, tier: str = ""
    ) -> None:
        hosted.phases[phase] = hosted.phases.get(phase, 0.0) + seconds
        hosted.load_bytes = max(hosted.load_bytes, nbytes)
        await self._emit(
            LoadPhaseEvent(
                instance_id=hosted.instance_id,
                model=hosted.model,
                worker_id=self.worker_id,
                phase=phase,
                seconds=seconds,
                bytes=nbytes,
                tier=tier,
            )
        )

    async def _fail(self, hosted: Hosted, error: str) -> None:
        log.warning("instance %s of %s failed: %s", hosted.instance_id, hosted.model, error)
        hosted.status = "stopping"
        with contextlib.suppress(RedisError, OSError):
            await self.state.update_instance(hosted.instance_id, status="failed", error=error)
        await self._emit(
            InstanceFailedEvent(
                instance_id=hosted.instance_id,
                model=hosted.model,
                worker_id=self.worker_id,
                error=error,
            )
        )
        await self._teardown(hosted)

    # --- requests in flight (keep-alive) ---------------------------------------------------

    def begin(self, hosted: Hosted) -> None:
        """A request was accepted: the instance is busy until `end`."""
        hosted.in_flight += 1
        hosted.requests += 1
        if hosted.idle_news is not None:  # it did not stay idle: nothing to announce
            hosted.idle_news.cancel()
            hosted.idle_news = None

    def end(self, hosted: Hosted, keep_alive_s: float | None) -> None:
        """A request finished; it keeps the instance loaded ``keep_alive_s`` more seconds
        (negative: indefinitely; None: no wish of its own). The last one out says so."""
        now = time.time()
        hosted.in_flight = max(hosted.in_flight - 1, 0)
        if keep_alive_s is not None:
            until = math.inf if keep_alive_s < 0 else now + keep_alive_s
            hosted.keep_until = max(hosted.keep_until, until)
        if hosted.in_flight or hosted.status != "ready":
            return
        hosted.idle_since = now
        # Announced only if it stays idle a moment: back-to-back requests (a busy instance)
        # cost no event each, and the scheduler's keep-alive clock loses nothing that matters.
        if hosted.idle_news is None:
            loop = asyncio.get_running_loop()
            hosted.idle_news = loop.call_later(IDLE_NEWS_DELAY_S, self._announce_idle, hosted)

    def _announce_idle(self, hosted: Hosted) -> None:
        hosted.idle_news = None
        if hosted.in_flight or hosted.status != "ready":
            return
        self.bus.spawn(
            self._emit(
                InstanceIdleEvent(
                    instance_id=hosted.instance_id,
                    model=hosted.model,
                    worker_id=self.worker_id,
                    keep_until=hosted.keep_until if math.isfinite(hosted.keep_until) else None,
                    requests=hosted.requests,
                )
            )
        )

    def _refusal(self, hosted: Hosted, req: UnloadRequest) -> UnloadReply | None:
        """Why a conditional unload must not happen now, as the reply; None: it may."""
        if hosted.status == "ready" and not hosted.in_flight:
            left = 0.0 if req.ignore_keep_alive else hosted.keep_until - time.time()
            if left <= 0:
                return None
            retry: float | None = left if math.isfinite(left) else None
        else:
            retry = None
        return UnloadReply(
            instance_id=hosted.instance_id,
            freed=False,
            unloaded=False,
            in_flight=hosted.in_flight,
            retry_after_s=retry,
            requests=hosted.requests,
        )

    # --- unload -----------------------------------------------------------------------------

    async def unload(self, req: UnloadRequest) -> UnloadReply:
        async with self._control:
            hosted = self.hosted
            if hosted is None or hosted.instance_id != req.instance_id:
                raise NotFoundError(f"worker {self.worker_id} has no instance {req.instance_id}")
            if req.only_if_idle and (refused := self._refusal(hosted, req)) is not None:
                return refused
            # No await between the check and `_stop` marking the instance as stopping: a
            # request cannot slip in between (it would find the instance not ready).
            requests = hosted.requests
            freed = await self._stop(hosted, req.reason or "unloaded")
        return UnloadReply(instance_id=req.instance_id, freed=freed, requests=requests)

    async def shutdown(self) -> None:
        """Unload whatever is hosted (the worker is stopping)."""
        async with self._control:
            if self.hosted is not None:
                await self._stop(self.hosted, "worker stopping")

    async def _stop(self, hosted: Hosted, reason: str) -> bool:
        """Stop ``hosted``; returns whether its teardown finished."""
        log.info("stopping instance %s of %s: %s", hosted.instance_id, hosted.model, reason)
        task = hosted.task
        freed = True
        if task is not None and not task.done():
            # Still loading: the load task sees the cancellation and tears down itself.
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_GRACE_S + DRAIN_S)
            freed = task.done()
        else:
            hosted.status = "stopping"
            with contextlib.suppress(RedisError, OSError):
                await self.state.update_instance(hosted.instance_id, status="stopping")
            await self._teardown(hosted)
        await self._emit(
            InstanceStoppedEvent(
                instance_id=hosted.instance_id,
                model=hosted.model,
                worker_id=self.worker_id,
                reason=reason,
            )
        )
        return freed

    async def _teardown(self, hosted: Hosted) -> None:
        """Stop the engine, free the memory, delete the record and release the worker."""
        hosted.status = "stopping"
        runtime, hosted.runtime = hosted.runtime, None
        if runtime is not None:
            engine = runtime.engine
            await asyncio.to_thread(
                runtime.close, UnavailableError("instance unloaded"), STOP_GRACE_S
            )
            # Let in-flight streams send their error frames and give their slots back.
            await engine.drained(DRAIN_S)
            del runtime, engine
        await asyncio.to_thread(self._free_memory)
        rec = InstanceRecord(
            instance_id=hosted.instance_id,
            model=hosted.model,
            worker_id=self.worker_id,
            node_id=self.node_id,
            status="stopping",
            created_at=0.0,
        )
        if self.hosted is hosted:
            self.hosted = None
        try:
            await self.state.retire_instance(rec)
        except (RedisError, OSError) as exc:
            log.error("could not retire instance %s: %r", hosted.instance_id, exc)

    def _free_memory(self) -> None:
        if self._prepared.done():  # torch is imported: let it return cached device memory too
            from .runtime import free_memory

            free_memory()
        else:
            gc.collect()

    async def _emit(self, event: Event) -> None:
        await self.bus.emit(event.model_copy(update={"source": self.worker_id}))


async def run_cancellable(
    fn: Callable[[], T], cancel: Callable[[], None], dispose: Callable[[T], None]
) -> T:
    """Run blocking ``fn`` in a thread; if the caller is cancelled, call ``cancel`` (so that
    the thread stops early), wait a while for the thread, and ``dispose`` of a result that
    arrives anyway (it would otherwise hold memory nobody owns)."""
    fut: asyncio.Future[T] = asyncio.ensure_future(asyncio.to_thread(fn))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        cancel()

        def discard(f: asyncio.Future[T]) -> None:
            if not f.cancelled() and f.exception() is None:
                dispose(f.result())

        fut.add_done_callback(discard)
        await asyncio.wait({fut}, timeout=STOP_GRACE_S)
        raise


def _dispose_loaded(loaded: tuple[Runtime, object]) -> None:
    loaded[0].close(UnavailableError("instance unloaded"), STOP_GRACE_S)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BusError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
