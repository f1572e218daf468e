"""One request's generation: finding an instance, the worker's token stream, and its accounting.

A `Generation` keeps the prompt's token ids and every generated token id, so that a later
failover or migration can resume it elsewhere with ``generated_token_ids`` and the stream's
next sequence number (see `resume_request`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from libs.protocol import Bus, StreamReader, StreamWriter
from libs.protocol.endpoints import WORKER_GENERATE
from libs.protocol.errors import (
    BusError,
    ConflictError,
    InternalError,
    NoRespondersError,
    NotFoundError,
    OverloadedError,
    UnavailableError,
)
from libs.protocol.events import RequestCompletedEvent
from libs.protocol.messages import GenerateReply, GenerateRequest, TokenChunk, Usage
from libs.protocol.state import InstanceRecord

from .cluster import ClusterView, least_loaded
from .demand import DemandTracker
from .metrics import UNKNOWN_MODEL, RouterMetrics
from .placement import BACKOFF_MAX_S, BACKOFF_MIN_S, ColdStarts
from .settings import RouterSettings

log = logging.getLogger(__name__)

# Answers to a generate request that mean "this instance cannot take it": try another.
INSTANCE_UNUSABLE = (NotFoundError, ConflictError, NoRespondersError, UnavailableError)
# How long an instance that did not answer is left out of the ready list.
SUSPECT_S = 5.0
# Unusable instances tolerated per request before it fails.
MAX_UNUSABLE = 3

Status = Literal["ok", "error", "cancelled"]


@dataclass
class Backend:
    """What every generation shares: the bus, the cluster view, cold starts, metrics."""

    bus: Bus
    view: ClusterView
    starts: ColdStarts
    metrics: RouterMetrics
    settings: RouterSettings
    source: str
    # Generations streaming from each instance, so that the instance's end can end them.
    streaming: dict[str, set[Generation]] = field(default_factory=dict)
    demand: DemandTracker | None = None  # the autoscaler's demand signal

    async def instance_gone(self, instance_id: str, why: str) -> None:
        """End the streams of an instance that stopped or failed, instead of letting each
        wait for the idle timeout (a dead worker sends nothing more)."""
        for gen in list(self.streaming.get(instance_id, ())):
            await gen.abort(UnavailableError(f"instance {instance_id} ended: {why}"))


@dataclass
class Timings:
    arrived: float = field(default_factory=time.monotonic)
    queue_s: float = 0.0
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
        self.instance: InstanceRecord | None = None
        self.prompt_token_ids: list[int] = []
        self.generated_token_ids: list[int] = []
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.error: BaseException | None = None
        self._reader: StreamReader[GenerateReply, TokenChunk] | None = None
        self._finished = False
        self._counted = False  # counted in the demand signal

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def label(self) -> str:
        return self.model if self.deployed else UNKNOWN_MODEL

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
        avoid: set[str] = set()
        unusable = 0
        while True:
            inst = await self._acquire(avoid)
            b.view.begin(inst.instance_id)
            try:
                reader = await self._open(inst)
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
            self.instance = inst
            self._reader = reader
            b.streaming.setdefault(inst.instance_id, set()).add(self)
            self.prompt_token_ids = list(reader.ack.prompt_token_ids)
            b.metrics.in_flight.labels(self.model).inc()
            return

    async def _open(self, inst: InstanceRecord) -> StreamReader[GenerateReply, TokenChunk]:
        b = self.backend
        opening = asyncio.ensure_future(
            b.bus.stream(
                WORKER_GENERATE,
                self.request,
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
        """The next chunk from the worker, or None after the last one."""
        if self._reader is None or self.finish_reason is not None:
            return None
        try:
            chunk = await self._reader.__anext__()
        except StopAsyncIteration:
            # A producer that ends without saying why has nothing more to give.
            self.finish_reason = "stop"
            return None
        self._record(chunk)
        if chunk.finish_reason in ("cancelled", "error"):
            raise UnavailableError(
                f"the worker ended the generation ({chunk.finish_reason})",
                detail={"instance": self.instance.instance_id if self.instance else ""},
            )
        return chunk

    def _record(self, chunk: TokenChunk) -> None:
        now = time.monotonic()
        if chunk.token_ids and self.times.first_token_at is None:
            self.times.first_token_at = now
            self.backend.metrics.ttft.labels(self.model).observe(now - self.times.arrived)
        if chunk.prefill_s is not None:
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
        """The request that continues this generation elsewhere (failover, migration)."""
        if self._reader is None:
            raise InternalError("nothing to resume: the generation never started")
        return self.request.model_copy(
            update={
                "generated_token_ids": list(self.generated_token_ids),
                "inbox": self._reader.inbox,
                "start_seq": self._reader.next_seq,
            }
        )

    async def abort(self, exc: BusError) -> None:
        """End the stream with ``exc`` from outside: an error frame at the next sequence number
        reaches the reader as if the worker had sent it."""
        reader = self._reader
        if reader is None or reader.done:
            return
        await StreamWriter(self.backend.bus.nc, reader.inbox, start_seq=reader.next_seq).fail(exc)

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
        if self.instance is not None:
            iid = self.instance.instance_id
            b.view.end(iid)
            streams = b.streaming.get(iid)
            if streams is not None:
                streams.discard(self)
                if not streams:
                    del b.streaming[iid]
            b.metrics.in_flight.labels(self.model).dec()
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
        await b.bus.emit(
            RequestCompletedEvent(
                source=b.source,
                request_id=self.request.request_id,
                model=self.model,
                instance_id=self.instance.instance_id if self.instance else "",
                worker_id=self.instance.worker_id if self.instance else "",
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
