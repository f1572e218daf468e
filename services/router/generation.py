"""One request's generation: finding an instance, the worker's token stream, and its accounting.

A `Generation` keeps the prompt's token ids and every generated token id, so that it can be
resumed elsewhere with ``generated_token_ids`` and the stream's next sequence number (see
`resume_request`). Failover: when the instance dies mid-stream (its stop or failure event, a
liveness check of its worker after a silence, see `liveness.py`, or the idle timeout), the
generation goes on on another ready instance, or one started for it, and the client sees one
unbroken stream.
Sampling is a pure function of (seed, position) and the router always sends a seed, so a
resumed sampled generation continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from libs.protocol import Bus, StreamReader
from libs.protocol.endpoints import WORKER_GENERATE
from libs.protocol.errors import (
    BusError,
    BusTimeoutError,
    ConflictError,
    InternalError,
    NoRespondersError,
    NotFoundError,
    OverloadedError,
    UnavailableError,
)
from libs.protocol.events import (
    RequestCompletedEvent,
    RequestFailoverEvent,
)
from libs.protocol.messages import (
    GenerateReply,
    GenerateRequest,
    TokenChunk,
    Usage,
)
from libs.protocol.state import InstanceRecord

from .cluster import ClusterView, least_loaded
from .cold_queue import BACKOFF_MAX_S, BACKOFF_MIN_S, ColdQueue
from .demand import DemandTracker
from .failover import GONE_ERRORS, Pace, may_fail_over
from .liveness import still_serving
from .metrics import UNKNOWN_MODEL, RouterMetrics
from .settings import RouterSettings

log = logging.getLogger(__name__)

# Answers to a generate request that mean "this instance cannot take it": try another.
INSTANCE_UNUSABLE = (NotFoundError, ConflictError, NoRespondersError, UnavailableError)
# How long an instance that did not answer is left out of the ready list.
SUSPECT_S = 5.0
# Unusable instances tolerated per request before it fails.
MAX_UNUSABLE = 3
# How long an instance found dead stays out of the ready list (ids are never reused).
DEAD_S = 600.0

Status = Literal["ok", "error", "cancelled"]


@dataclass
class Backend:
    """What every generation shares: the bus, the cluster view, cold starts, metrics."""

    bus: Bus
    view: ClusterView
    starts: ColdQueue
    metrics: RouterMetrics
    settings: RouterSettings
    source: str
    # Generations streaming from each instance, so that the instance's end can end them.
    streaming: dict[str, set[Generation]] = field(default_factory=dict)
    demand: DemandTracker | None = None  # the autoscaler's demand signal
    # Started generations by request id (a migration names its request).
    by_request: dict[str, Generation] = field(default_factory=dict)

    async def instance_gone(self, instance_id: str, why: str) -> None:
        """End the streams of an instance that stopped or failed, instead of letting each
        wait for the idle timeout (a dead worker sends nothing more); each then fails over."""
        self.view.suspect(instance_id, DEAD_S)
        for gen in list(self.streaming.get(instance_id, ())):
            await gen.abort(UnavailableError(f"instance {instance_id} ended: {why}"))

    async def migrated(
        self,
        request_id: str,
        *,
        inbox: str,
        instance_id: str,
        worker_id: str,
        cancel_subject: str = "",
        stream_id: str = "",
    ) -> None:
        """A hint that a live migration moved a generation's stream (its monitoring event):
        the stream announces the hand-over itself and the generation follows that (see
        `Generation.follow`); the event may only come first. Ignored when the generation has
        since moved on (failover: another inbox)."""
        gen = self.by_request.get(request_id)
        if gen is None or gen.inbox != inbox:
            return
        await gen.follow(instance_id, worker_id, cancel_subject, stream_id)


@dataclass
class Timings:
    arrived: float = field(default_factory=time.monotonic)
    queue_s: float = 0.0  # waiting for an instance, then in the first worker's queue
    worker_queue_s: float | None = None  # the first worker's part of queue_s
    load_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    first_token_at: float | None = None


class Generation:
    """A request's life: instance, stream, tokens, and the `RequestCompletedEvent` at the end."""

    def __init__(self, backend: Backend, request: GenerateRequest) -> None:
        self.backend = backend
        self.request = request
        self.times = Timings()
        self.deadline = self.times.arrived + backend.settings.start_timeout
        self.deployed = False
        self.instance: InstanceRecord | None = None  # the instance streaming now
        self.served_by: InstanceRecord | None = None  # the latest instance that streamed
        self.failovers = 0
        self.last_frame_at = self.times.arrived  # the stream's start or its latest frame
        self.pace = Pace()  # its typical gap between chunks, for the liveness watch
        self.prompt_token_ids: list[int] = []
        self.generated_token_ids: list[int] = []
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.error: BaseException | None = None
        self._reader: StreamReader[GenerateReply, TokenChunk] | None = None
        self._finished = False
        self._counted = False  # counted in the demand signal
        self._in_flight = False  # counted in the in-flight gauge

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def label(self) -> str:
        return self.model if self.deployed else UNKNOWN_MODEL

    @property
    def inbox(self) -> str:
        return self._reader.inbox if self._reader is not None else ""

    # --- start ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Find an instance and have its worker accept the request.

        Before the first token nothing is lost by trying elsewhere: a busy instance sends us
        to another one (or back to waiting), an unreachable one is skipped for a while.
        """
        b = self.backend
        spec = await b.view.deployment(self.model)
        if spec is None:
            raise NotFoundError(
                f"the model {self.model!r} does not exist (no such deployment)",
                detail={"param": "model"},
            )
        self.deployed = True
        if self.request.keep_alive_s is None:
            # The worker keeps the instance loaded this long after the request; the request's
            # own `keep_alive` (Ollama style) was set by the caller when it gave one.
            self.request = self.request.model_copy(update={"keep_alive_s": spec.keep_alive_s})
        if b.demand is not None:
            b.demand.begin(self.model)
            self._counted = True
        reader = await self._connect(self.request, set())
        self.prompt_token_ids = list(reader.ack.prompt_token_ids)
        b.metrics.in_flight.labels(self.model).inc()
        self._in_flight = True
        b.by_request[self.request.request_id] = self

    async def _connect(
        self, request: GenerateRequest, avoid: set[str]
    ) -> StreamReader[GenerateReply, TokenChunk]:
        """Open ``request``'s stream on a ready instance (waiting for one, bounded by the
        deadline) and make it this generation's stream."""
        b = self.backend
        unusable = 0
        while True:
            inst = await self._acquire(avoid)
            b.view.begin(inst.instance_id)
            try:
                reader = await self._open(inst, request)
            except OverloadedError:
                b.view.end(inst.instance_id)
                avoid.add(inst.instance_id)
                continue
            except INSTANCE_UNUSABLE as exc:
                b.view.end(inst.instance_id)
                b.view.suspect(inst.instance_id, SUSPECT_S)
                b.view.changed(self.model)
                unusable += 1
                log.info("instance %s unusable for %s: %s", inst.instance_id, self.model, exc)
                if unusable >= MAX_UNUSABLE:
                    # The worker's own code (not_found...) would mislead the client here.
                    raise UnavailableError(
                        f"no usable instance of {self.model!r}: {exc.message}",
                        detail={"model": self.model},
                    ) from None
                continue
            except BaseException:
                b.view.end(inst.instance_id)
                raise
            self._reader = reader
            self._bind(inst)
            return reader

    def _bind(self, inst: InstanceRecord) -> None:
        """Stream from ``inst`` (already counted in the view's in-flight counts)."""
        self.instance = self.served_by = inst
        self.last_frame_at = time.monotonic()
        self.pace.restart()
        self.backend.streaming.setdefault(inst.instance_id, set()).add(self)

    def _unbind(self) -> None:
        inst, self.instance = self.instance, None
        if inst is None:
            return
        b = self.backend
        b.view.end(inst.instance_id)
        streams = b.streaming.get(inst.instance_id)
        if streams is not None:
            streams.discard(self)
            if not streams:
                del b.streaming[inst.instance_id]

    async def _follow_stream(self, reader: StreamReader[GenerateReply, TokenChunk]) -> None:
        """Follow a hand-over the stream announced in-band (a live migration's new producer)."""
        moved = reader.take_moved()
        if moved is None or reader is not self._reader or not moved.instance_id:
            return  # (the reader itself already sends a cancel to the new producer)
        await self.follow(moved.instance_id, moved.worker_id, moved.cancel_subject, moved.stream_id)

    async def follow(
        self, instance_id: str, worker_id: str, cancel_subject: str = "", stream_id: str = ""
    ) -> None:
        """A live migration moved the stream to ``instance_id``: stream from it, so that the
        old instance's end does not end the stream and a cancel reaches the new producer."""
        old = self.instance
        if old is None or old.instance_id == instance_id:
            return
        try:
            rec = await self.backend.view.instance(instance_id)
        except UnavailableError:
            rec = None
        if self.instance is not old:
            return  # moved on (failover) while the record was read
        if rec is None:
            rec = old.model_copy(update={"instance_id": instance_id, "worker_id": worker_id})
        self.moved(rec, cancel_subject, stream_id)

    def moved(self, inst: InstanceRecord, cancel_subject: str = "", stream_id: str = "") -> None:
        """The stream now comes from ``inst`` (a live migration; same inbox, same numbering)."""
        if self.instance is None or self._reader is None:
            return
        self._unbind()
        self.backend.view.begin(inst.instance_id)
        self._bind(inst)
        if cancel_subject and stream_id:
            self._reader.bind_cancel(cancel_subject, stream_id)

    async def _open(
        self, inst: InstanceRecord, request: GenerateRequest
    ) -> StreamReader[GenerateReply, TokenChunk]:
        b = self.backend
        opening = asyncio.ensure_future(
            b.bus.stream(
                WORKER_GENERATE,
                request,
                worker_id=inst.worker_id,
                timeout=b.settings.request_timeout,
                idle_timeout=b.settings.stream_idle_timeout,
            )
        )
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The client left while the worker was accepting: once the acknowledgement is in,
            # close the stream, which tells the worker to stop.
            opening.add_done_callback(lambda t: _close_later(b.bus, t))
            raise

    async def _acquire(self, avoid: set[str]) -> InstanceRecord:
        """The least loaded ready instance, waiting (bounded by the deadline) when there is none."""
        b = self.backend
        backoff = BACKOFF_MIN_S
        ticket: int | None = None
        while True:
            ready = await b.view.ready(self.model)
            if ready:
                inst = least_loaded(ready, b.view.inflight, avoid)
                if inst is not None:
                    return inst
                # Every ready instance just said it is full: back off, then try them all again.
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    raise OverloadedError(
                        f"every instance of {self.model!r} is busy",
                        detail={"model": self.model},
                    )
                started = time.monotonic()
                await asyncio.sleep(min(backoff, remaining))
                self.times.queue_s += time.monotonic() - started
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                avoid.clear()
                continue
            started = time.monotonic()
            try:
                load_s, ticket = await b.starts.wait(
                    self.model,
                    deadline=self.deadline,
                    ticket=ticket,
                    request_id=self.request.request_id,
                )
            finally:
                self.times.queue_s += time.monotonic() - started
            self.times.load_s += load_s

    # --- tokens ---------------------------------------------------------------------------

    async def next_chunk(self) -> TokenChunk | None:
        """The next chunk from the worker, or None after the last one; resumes the generation
        on another instance when its instance dies (see `_fail_over`)."""
        while True:
            reader = self._reader
            if reader is None or self.finish_reason is not None:
                return None
            try:
                chunk = await reader.__anext__()
            except StopAsyncIteration:
                # A producer that ends without saying why has nothing more to give.
                self.finish_reason = "stop"
                return None
            except GONE_ERRORS as exc:
                await self._follow_stream(reader)  # the instance gone is the latest producer
                await self._fail_over(exc)
                continue
            await self._follow_stream(reader)
            self.last_frame_at = time.monotonic()
            self.pace.frame(self.last_frame_at)
            if chunk.finish_reason in ("cancelled", "error"):
                # The worker gave up on it (stopping): what came with it stands, the rest
                # comes from elsewhere.
                cut = chunk.model_copy(update={"finish_reason": None, "usage": None})
                self._record(cut)
                await self._fail_over(
                    UnavailableError(
                        f"the worker ended the generation ({chunk.finish_reason})",
                        detail={"instance": self.instance.instance_id if self.instance else ""},
                    )
                )
                if cut.token_ids or cut.text:
                    return cut
                continue
            self._record(chunk)
            return chunk

    async def _fail_over(self, exc: BusError) -> None:
        """Resume the generation on another instance from the prompt plus the tokens already
        received, on a fresh inbox (a producer that is not quite dead can never interleave
        with the new one) numbered on from the old stream; raise ``exc`` when not allowed or
        when no instance can take it in time."""
        b = self.backend
        old, reader = self.instance, self._reader
        allowed = may_fail_over(
            done=self.failovers,
            limit=b.settings.failover_attempts,
            finished=self.finish_reason is not None,
            started=old is not None and reader is not None,
        )
        if not allowed or old is None or reader is None:
            raise exc
        self.failovers += 1
        failed_at = time.monotonic()
        # The stream went silent or lost a frame (a bus reconnect drops what was in flight)
        # while its worker still holds the instance: resume there, on a fresh inbox (its
        # prefix cache makes the recompute cheap); a gone instance is left out for good.
        lost_frames = isinstance(exc, BusTimeoutError) and await still_serving(b, old)
        log.warning(
            "request %s: %s after %d tokens (%s); resuming %s",
            self.request.request_id,
            f"stream from {old.instance_id} broke" if lost_frames else f"{old.instance_id} gone",
            len(self.generated_token_ids),
            exc.message,
            "on the same instance" if lost_frames else "elsewhere",
        )
        if not lost_frames:
            b.view.suspect(old.instance_id, DEAD_S)
            b.view.changed(self.model)
        resume = self.resume_request().model_copy(update={"inbox": ""})
        await reader.aclose()
        self._unbind()
        self.deadline = failed_at + b.settings.start_timeout
        try:
            await self._connect(resume, set() if lost_frames else {old.instance_id})
        except BusError as err:
            raise UnavailableError(
                f"{exc.message}; resuming the generation elsewhere failed: {err.message}",
                detail={"instance": old.instance_id, "model": self.model},
            ) from None
        new = self.instance
        if new is None:  # _connect binds an instance or raises
            raise InternalError("failover connected to no instance")
        await b.bus.emit(
            RequestFailoverEvent(
                source=b.source,
                request_id=self.request.request_id,
                model=self.model,
                from_instance_id=old.instance_id,
                from_worker_id=old.worker_id,
                to_instance_id=new.instance_id,
                to_worker_id=new.worker_id,
                tokens=len(self.generated_token_ids),
                attempt=self.failovers,
                reason=exc.message[:1000],
                wait_s=round(time.monotonic() - failed_at, 6),
            )
        )

    def _record(self, chunk: TokenChunk) -> None:
        now = time.monotonic()
        if chunk.token_ids and self.times.first_token_at is None:
            self.times.first_token_at = now
            self.backend.metrics.ttft.labels(self.model).observe(now - self.times.arrived)
        if chunk.queue_s is not None and self.times.worker_queue_s is None and not self.failovers:
            # Once, from the first worker (as prefill_s): what a later producer (failover,
            # migration) reports is not the request's wait for its first token.
            self.times.worker_queue_s = chunk.queue_s
            self.times.queue_s += chunk.queue_s
        if chunk.prefill_s is not None and not self.failovers:
            # After a failover the new worker's "prefill" recomputes the tokens so far too.
            self.times.prefill_s = chunk.prefill_s
        if chunk.decode_s is not None:
            self.times.decode_s = chunk.decode_s
        self.generated_token_ids.extend(chunk.token_ids)
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason

    def final_usage(self) -> Usage:
        return self.usage or Usage(
            prompt_tokens=len(self.prompt_token_ids),
            completion_tokens=len(self.generated_token_ids),
        )

    def resume_request(self) -> GenerateRequest:
        """The request that continues this generation elsewhere (failover, migration): the
        prompt as the token ids the first worker made of it, the tokens generated so far, the
        same sampling (seed included) and the stream's inbox and next sequence number."""
        if self._reader is None:
            raise InternalError("nothing to resume: the generation never started")
        prompt: dict[str, object] = {}
        if self.prompt_token_ids:
            prompt = {"prompt": None, "messages": None, "prompt_token_ids": self.prompt_token_ids}
        return self.request.model_copy(
            update={
                **prompt,
                "generated_token_ids": list(self.generated_token_ids),
                "inbox": self._reader.inbox,
                "start_seq": self._reader.next_seq,
            }
        )

    async def abort(self, exc: BusError) -> None:
        """End the stream with ``exc`` from outside (its instance is gone: a hint from an event
        or the liveness watch), after the frames already received, unless those hand the stream
        over to another producer (a migration; see `StreamReader.interrupt`)."""
        reader = self._reader
        if reader is None or reader.done:
            return
        reader.interrupt(exc)

    # --- end ------------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc

    @property
    def status(self) -> Status:
        if self.error is not None:
            return "error"
        if self.finish_reason is not None:
            return "ok"
        return "cancelled"

    async def finish(self) -> None:
        """Close the stream (a worker still generating is told to stop), count, and emit the
        `RequestCompletedEvent`. Idempotent."""
        if self._finished:
            return
        self._finished = True
        b = self.backend
        if self._counted and b.demand is not None:
            b.demand.end(self.model)
        if self._reader is not None:
            await self._reader.aclose()
        self._unbind()
        if b.by_request.get(self.request.request_id) is self:
            del b.by_request[self.request.request_id]
        if self._in_flight:
            b.metrics.in_flight.labels(self.model).dec()
        if self.failovers and self.times.first_token_at is not None:
            # No worker saw the whole decode: the router's view of it.
            self.times.decode_s = max(self.last_frame_at - self.times.first_token_at, 0.0)
        total_s = time.monotonic() - self.times.arrived
        status = self.status
        code = _code(self.error)
        b.metrics.requests.labels(self.label, status).inc()
        b.metrics.latency.labels(self.label).observe(total_s)
        if status == "error":
            b.metrics.errors.labels(self.label, code).inc()
        if self.deployed:
            b.metrics.queue_wait.labels(self.model).observe(self.times.queue_s)
            b.metrics.tokens.labels(self.model).inc(len(self.generated_token_ids))
        usage = self.final_usage()
        served = self.served_by
        await b.bus.emit(
            RequestCompletedEvent(
                source=b.source,
                request_id=self.request.request_id,
                model=self.model,
                instance_id=served.instance_id if served else "",
                worker_id=served.worker_id if served else "",
                status=status,
                finish_reason=self.finish_reason or "",
                queue_s=round(self.times.queue_s, 6),
                load_s=round(self.times.load_s, 6),
                prefill_s=round(self.times.prefill_s, 6),
                decode_s=round(self.times.decode_s, 6),
                total_s=round(total_s, 6),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                error=_describe(self.error),
                failovers=self.failovers,
            )
        )


def _close_later(bus: Bus, opened: asyncio.Task[StreamReader[GenerateReply, TokenChunk]]) -> None:
    if not opened.cancelled() and opened.exception() is None:
        bus.spawn(opened.result().aclose())


def _code(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    if isinstance(exc, BusError):
        return exc.code.value
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) else "internal"


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    message = getattr(exc, "message", None)
    text = message if isinstance(message, str) else repr(exc)
    return f"{_code(exc)}: {text}"[:1000]
