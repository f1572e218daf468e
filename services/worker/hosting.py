"""The one model instance a worker hosts: load it (storage, loader, engine), serve it, unload it.

Every way out of a load (storage error, loader error, timeout, an unload, a cancellation at
any point) ends in the same teardown, run once and to its end (`teardown.Teardowns`): the
engine stops, the memory is returned, the instance record is deleted and the worker's
reservation is released, so nothing is left half-loaded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Literal, cast

from libs.cluster import ClusterState
from libs.protocol import Bus
from libs.protocol.errors import (
    BadRequestError,
    BusError,
    ConflictError,
    LoadFailedError,
    NotFoundError,
    UnavailableError,
)
from libs.protocol.events import Event, InstanceStoppedEvent
from libs.protocol.messages import (
    LoadReply,
    LoadRequest,
    Tier,
    UnloadReply,
    UnloadRequest,
)

from . import keepalive
from .load_news import LoadNews
from .metrics import WorkerMetrics
from .reservation import check_reservation
from .settings import WorkerSettings
from .teardown import (
    DRAIN_S,
    STOP_GRACE_S,
    TEARDOWN_WAIT_S,
    Teardowns,
    close_runtime,
    run_cancellable,
)

if TYPE_CHECKING:
    from libs.loader import HostPool

    from .embedding import EmbedRuntime
    from .fetch import NodeStorage
    from .runtime import AnyRuntime, Runtime

log = logging.getLogger(__name__)

# An instance that went idle says so (`instance.idle`) if it is still idle this much later.
IDLE_NEWS_DELAY_S = 0.1
# Why an instance whose load was cancelled (by an unload, or before it even began) failed.
UNLOADED_DURING_LOAD = "unloaded during the load"


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
    runtime: AnyRuntime | None = None
    task: asyncio.Task[None] | None = None  # the load
    teardown: asyncio.Task[None] | None = None  # the end: once begun, it runs to its end
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
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.bus = bus
        self.state = state
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.worker_id = worker_id
        self.node_id = node_id
        self.hosted: Hosted | None = None
        self._prepared = prepared
        self._control = asyncio.Lock()  # load and unload decisions, one at a time
        self._news = LoadNews(bus, worker_id=worker_id, node_id=node_id)
        self._teardowns = Teardowns(
            bus=bus,
            state=state,
            worker_id=worker_id,
            node_id=node_id,
            torch_ready=self._torch_ready,
            forget=self._forget,
        )

    def ready(self, model: str) -> tuple[Hosted, Runtime]:
        """The instance generating for ``model``: `NotFoundError` if none, `UnavailableError`
        if it is not ready (yet or any more), `BadRequestError` if it is an embedding model."""
        h, rt = self._ready(model, "generate")
        return h, cast("Runtime", rt)

    def ready_embed(self, model: str) -> tuple[Hosted, EmbedRuntime]:
        """`ready` for an embedding model (task "embed")."""
        h, rt = self._ready(model, "embed")
        return h, cast("EmbedRuntime", rt)

    def _ready(self, model: str, task: str) -> tuple[Hosted, AnyRuntime]:
        h = self.hosted
        if h is None or h.model != model:
            raise NotFoundError(f"worker {self.worker_id} hosts no instance of {model!r}")
        if h.status != "ready" or h.runtime is None:
            raise UnavailableError(f"instance {h.instance_id} of {model!r} is {h.status}")
        if h.runtime.task != task:
            raise BadRequestError(f"{model!r} serves task {h.runtime.task!r}, not {task!r}")
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
            await check_reservation(self.state, self.worker_id, req)
            hosted = Hosted(req.instance_id, req.model, "loading", time.perf_counter())
            self.hosted = hosted
            hosted.task = asyncio.create_task(self._load(hosted, req))
            hosted.task.add_done_callback(partial(self._load_ended, hosted))
        return LoadReply(instance_id=req.instance_id, worker_id=self.worker_id)

    async def _load(self, hosted: Hosted, req: LoadRequest) -> None:
        """Bring the instance up and announce it; any failure or cancellation begins its
        teardown (`_load_ended` covers a cancellation before the first line ran)."""
        timeout = self.settings.load_timeout
        try:
            await self._news.starting(hosted)
            try:
                async with asyncio.timeout(timeout):
                    source_tier = await self._bring_up(hosted, req)
            except TimeoutError:
                raise LoadFailedError(f"load did not finish within {timeout:g}s") from None
            if hosted.teardown is not None:
                # Torn down while this load did not heed its cancellation (one is lost when
                # a reply lands at the same moment): what it loaded belongs to nobody.
                runtime, hosted.runtime = hosted.runtime, None
                if runtime is not None:
                    await close_runtime(runtime)
                return
            _honour_lost_cancellation()
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
            self.metrics.loaded(source_tier, load_s)
            await self._news.ready(hosted, source_tier, load_s)
            _honour_lost_cancellation()
            if source_tier != "dram":
                self.bus.spawn(self._promote(req))
        except asyncio.CancelledError:
            self._teardowns.begin(hosted, UNLOADED_DURING_LOAD)
            raise
        except Exception as exc:
            # Awaited without being tied to it: a cancellation of this task from here on
            # (an unload, a shutdown) leaves the teardown running.
            await asyncio.wait({self._teardowns.begin(hosted, _describe(exc))})

    def _load_ended(self, hosted: Hosted, task: asyncio.Task[None]) -> None:
        """However the load task ended, its instance is ready or being torn down: a task
        cancelled before it started never ran its own handlers."""
        if hosted.status != "ready":
            self._teardowns.begin(hosted, UNLOADED_DURING_LOAD)

    async def _promote(self, req: LoadRequest) -> None:
        """After a load from SSD: have the node keep a DRAM copy (`NodeStorage.promote`)."""
        await self.storage().promote(req.model, req.checkpoint_uri)

    def storage(self) -> NodeStorage:
        """This worker's requests to its node's storage service, following its life: one
        killed or restarted mid-fetch fails the request within seconds, and it is asked again
        once restarted."""
        from libs.common.follow import Peers

        from .fetch import NodeStorage

        return NodeStorage(
            self.bus,
            node_id=self.node_id,
            worker_id=self.worker_id,
            timeout=self.settings.load_timeout,
            peers=Peers(self.bus, self.state.redis, self.state.keys, "storage"),
        )

    async def _bring_up(self, hosted: Hosted, req: LoadRequest) -> Tier:
        """Storage ensure, then the loader; returns the tier the bytes came from.

        It asks for the SSD tier, which returns the DRAM copy when there is one: loading
        straight from SSD (parallel direct reads) beats copying into DRAM first and then
        loading; the copy into DRAM happens afterwards (`_promote`). A copy that the load finds
        damaged is reported (the storage service quarantines it) and the load runs once more
        on what the next ensure gives (`fetch.load_with_fallback`).
        """
        from libs.loader import CancelToken
        from libs.protocol.messages import EnsureReply

        from .fetch import load_with_fallback
        from .runtime import EngineSettings, load_for_task

        async def ensured(reply: EnsureReply, seconds: float) -> None:
            log.info(
                "instance %s of %s: %s in %.2fs (from %s); loading it",
                hosted.instance_id,
                hosted.model,
                "the source directory" if reply.hf_source else f"{reply.tier} copy",
                seconds,
                reply.source_tier,
            )
            await self._phase(hosted, "ensure", seconds, reply.bytes, reply.source_tier)

        async def load(reply: EnsureReply) -> None:
            if not self._prepared.done():  # the torch import of a just-started worker
                t0 = time.perf_counter()
                await asyncio.shield(self._prepared)
                await self._phase(hosted, "startup", time.perf_counter() - t0)
            token = CancelToken()
            fn = partial(
                load_for_task,
                req.task,
                reply.path,
                device=self.settings.device,
                pool=self._prepared.result(),
                cancel=token,
                engine=EngineSettings(
                    max_batch=self.settings.max_batch,
                    kv_cache_gb=self.settings.kv_cache_gb,
                    prefill_chunk=self.settings.prefill_chunk,
                    max_queue=self.settings.max_queue,
                ),
                name=f"sllm-engine-{hosted.instance_id}",
                # Every tier's copy is verified (verify=True): chunks are hashed as they load,
                # except DRAM-tier partitions unchanged since the storage service hashed and
                # sealed them (libs/loader/seal.py). Those are mapped without pre-faulting:
                # the storage service writes them once and never truncates them.
                prefault=reply.tier != "dram",
                step_delay=self.settings.decode_delay,
                on_step=self.metrics.stepped,
                hf_source=reply.hf_source,  # the registry's directory: its copy comes later
            )
            runtime, report = await run_cancellable(fn, token.cancel, _dispose_loaded)
            hosted.runtime = runtime
            await self._phase(hosted, "read", report.read_s, report.read_bytes, report.read_tier)
            await self._phase(hosted, "build", report.build_s)
            await self._phase(hosted, "tokenizer", report.tokenizer_s)

        storage = self.storage()
        reply, _ = await load_with_fallback(storage, req.model, req.checkpoint_uri, load, ensured)
        return reply.source_tier

    async def _phase(
        self, hosted: Hosted, phase: str, seconds: float, nbytes: int = 0, tier: str = ""
    ) -> None:
        await self._news.phase(hosted, phase, seconds, nbytes, tier)

    # --- requests in flight (keep-alive) ---------------------------------------------------

    def begin(self, hosted: Hosted) -> None:
        """A request was accepted: the instance is busy until `end`."""
        keepalive.begin(hosted)

    def end(self, hosted: Hosted, keep_alive_s: float | None) -> None:
        """A request finished (see `keepalive.end`). The last one out says so, if the
        instance stays idle a moment: back-to-back requests (a busy instance) cost no event
        each, and the scheduler's keep-alive clock loses nothing that matters."""
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
        loading = hosted.teardown is None and task is not None and not task.done()
        if loading:
            # Cancel it, and give it time to notice (its loader thread stops at the next
            # chunk); its end begins the teardown. A load already failing is not cancelled:
            # its teardown is under way, and is waited for below.
            assert task is not None
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_GRACE_S + DRAIN_S)
        # `asyncio.wait`, not `await`: if this caller is cancelled, the teardown goes on.
        teardown = self._teardowns.begin(hosted, UNLOADED_DURING_LOAD if loading else None)
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

    def _forget(self, hosted: Hosted) -> None:
        """The end of a teardown: the worker takes new loads."""
        if self.hosted is hosted:
            self.hosted = None

    def _torch_ready(self) -> bool:
        p = self._prepared
        return p.done() and not p.cancelled() and p.exception() is None

    async def _emit(self, event: Event) -> None:
        await self._news.emit(event)


def _dispose_loaded(loaded: tuple[AnyRuntime, object]) -> None:
    loaded[0].close(UnavailableError("instance unloaded"), STOP_GRACE_S)


def _honour_lost_cancellation() -> None:
    """Raise `CancelledError` if this task was cancelled and an await swallowed it: in Python
    3.11 `asyncio.wait_for` (under NATS requests) returns its result instead when the reply
    and the cancellation land in the same loop iteration."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BusError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
