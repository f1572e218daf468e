"""One request's generation: its instance, the worker's token stream, and its accounting.

A `Generation` keeps the prompt's token ids and every generated token id, so that it can be
resumed elsewhere with ``generated_token_ids`` and the stream's next sequence number (see
`resume_request`). Failover: when the instance dies mid-stream (its stop or failure event, a
liveness check of its worker after a silence, see `liveness.py`, or the idle timeout), the
generation goes on on another ready instance, or one started for it, and the client sees one
unbroken stream (`resume.py`). Finding an instance and opening its stream is `open_stream.py`'s;
what every generation shares, `backend.py`'s.
Sampling is a pure function of (seed, position) and the router always sends a seed, so a
resumed sampled generation continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from libs.protocol import StreamReader
from libs.protocol.errors import (
    BadRequestError,
    BusError,
    DeploymentFailedError,
    InternalError,
    NotFoundError,
    UnavailableError,
)
from libs.protocol.events import RequestCompletedEvent
from libs.protocol.messages import (
    DeploymentSpec,
    GenerateReply,
    GenerateRequest,
    TokenChunk,
    Usage,
)
from libs.protocol.state import InstanceRecord

from .backend import Backend
from .cluster import ClusterView
from .failover import GONE_ERRORS, Pace
from .metrics import UNKNOWN_MODEL
from .open_stream import open_stream
from .resume import fail_over

Status = Literal["ok", "error", "cancelled"]


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
    def reader(self) -> StreamReader[GenerateReply, TokenChunk] | None:
        """The stream being read (None before it starts)."""
        return self._reader

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
        spec = await deployment_or_404(b.view, self.model)
        self.deployed = True
        check_servable(spec)
        if spec.task != "generate":
            raise BadRequestError(
                f"{self.model!r} is an embedding model (task {spec.task!r}): use "
                "POST /v1/embeddings",
                detail={"param": "model"},
            )
        if spec.base:
            # An adapter is served by its base's instances: from here on the request is the
            # base's (its queue, its demand, its failover), naming the adapter to apply.
            base = await b.view.deployment(spec.base)
            if base is None:
                raise DeploymentFailedError(
                    f"the base {spec.base!r} of the adapter {self.model!r} is not deployed",
                    detail={"param": "model"},
                )
            check_servable(base)
            update = {"model": base.name, "adapter": spec.name, "adapter_uri": spec.checkpoint_uri}
            self.request = self.request.model_copy(update=update)
        if self.request.keep_alive_s is None:
            # The worker keeps the instance loaded this long after the request; the request's
            # own `keep_alive` (Ollama style) was set by the caller when it gave one.
            self.request = self.request.model_copy(update={"keep_alive_s": spec.keep_alive_s})
        if b.demand is not None:
            b.demand.begin(self.model)
            self._counted = True
        reader = await self.connect(self.request, set())
        self.prompt_token_ids = list(reader.ack.prompt_token_ids)
        b.metrics.in_flight.labels(self.model).inc()
        self._in_flight = True
        b.by_request[self.request.request_id] = self

    async def connect(
        self, request: GenerateRequest, avoid: set[str]
    ) -> StreamReader[GenerateReply, TokenChunk]:
        """Open ``request``'s stream on a ready instance (waiting for one, bounded by the
        deadline) and make it this generation's stream."""
        inst, reader = await open_stream(
            self.backend, request, avoid, deadline=self.deadline, times=self.times
        )
        self._reader = reader
        self._bind(inst)
        return reader

    def _bind(self, inst: InstanceRecord) -> None:
        """Stream from ``inst`` (already counted in the view's in-flight counts)."""
        self.instance = self.served_by = inst
        self.last_frame_at = time.monotonic()
        self.pace.restart()
        self.backend.streaming.setdefault(inst.instance_id, set()).add(self)

    def unbind(self) -> None:
        """Stop streaming from the instance (no longer counted in its in-flight count)."""
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
        self.unbind()
        self.backend.view.begin(inst.instance_id)
        self._bind(inst)
        if cancel_subject and stream_id:
            self._reader.bind_cancel(cancel_subject, stream_id)

    # --- tokens ---------------------------------------------------------------------------

    async def next_chunk(self) -> TokenChunk | None:
        """The next chunk from the worker, or None after the last one; resumes the generation
        on another instance when its instance dies (see `resume.fail_over`)."""
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
                await fail_over(self, exc)
                continue
            await self._follow_stream(reader)
            self.last_frame_at = time.monotonic()
            self.pace.frame(self.last_frame_at)
            if chunk.finish_reason in ("cancelled", "error"):
                # The worker gave up on it (stopping): what came with it stands, the rest
                # comes from elsewhere.
                cut = chunk.model_copy(update={"finish_reason": None, "usage": None})
                self._record(cut)
                await fail_over(
                    self,
                    UnavailableError(
                        f"the worker ended the generation ({chunk.finish_reason})",
                        detail={"instance": self.instance.instance_id if self.instance else ""},
                    ),
                )
                if cut.token_ids or cut.text:
                    return cut
                continue
            self._record(chunk)
            return chunk

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
        self.unbind()
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


async def deployment_or_404(view: ClusterView, model: str) -> DeploymentSpec:
    """The deployment a request names; `NotFoundError` (404) when there is none."""
    spec = await view.deployment(model)
    if spec is None:
        raise NotFoundError(
            f"the model {model!r} does not exist (no such deployment)",
            detail={"param": "model"},
        )
    return spec


def check_servable(spec: DeploymentSpec) -> None:
    """Refuse a request for a deployment that failed (424, with its reason)."""
    if spec.status == "failed":
        raise DeploymentFailedError(
            f"the deployment of {spec.name!r} failed: {spec.error}",
            detail={"param": "model"},
        )


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
