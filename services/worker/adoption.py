"""Live migration, destination side: adopt a generation another worker is producing.

``adopt`` prefills a *shadow* job with the prompt and the tokens so far (it holds a slot and
produces nothing); ``adopt_delta`` extends its KV cache with the tokens the source produced
meanwhile; ``adopt_commit`` adds the final delta and releases it: from then on this worker
produces the stream, into the same inbox, from the sequence number the source stopped at.
``adopt_abort`` drops the shadow (or stops a stream whose commit answer the source never saw).

A shadow nobody talks to for the migration timeout is dropped: the source died or gave up
(if the source died, the router's failover resumes the request from what the client got).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from libs.protocol import Bus
from libs.protocol.endpoints import WORKER_GENERATE
from libs.protocol.errors import (
    BadRequestError,
    BusError,
    BusTimeoutError,
    CancelledError,
    ConflictError,
    NotFoundError,
    StreamHandedOver,
)
from libs.protocol.events import Event, MigrationAbortedEvent, MigrationCommittedEvent
from libs.protocol.messages import (
    AdoptAbortReply,
    AdoptAbortRequest,
    AdoptCommitRequest,
    AdoptDeltaRequest,
    AdoptReply,
    AdoptRequest,
    GenerateRequest,
    TokenChunk,
)

from .detok import IncrementalDetokenizer
from .engine import Failed, Handle, Held, Job
from .generation import GenerationStream
from .hosting import Host, Hosted
from .migration import Running
from .sampling import Sampling
from .validate import check_sampling

if TYPE_CHECKING:
    from .adapters import WorkerAdapters
    from .runtime import Runtime

log = logging.getLogger(__name__)

Prepare = Callable[["Runtime", GenerateRequest], tuple[list[int], IncrementalDetokenizer]]


@dataclass(eq=False)
class Shadow:
    """A generation being adopted: its held engine job and what it holds so far."""

    req: AdoptRequest
    hosted: Hosted
    runtime: Runtime
    handle: Handle
    prompt_ids: list[int]
    detok: IncrementalDetokenizer
    generated: list[int]
    rounds: int = 0
    busy: bool = False  # a message is being handled: one at a time
    watchdog: asyncio.TimerHandle | None = None
    stream: _Adopted | None = None  # once committed


class Adoptions:
    """The destination's handlers, and its shadows by migration id."""

    def __init__(
        self,
        *,
        bus: Bus,
        host: Host,
        worker_id: str,
        timeout: float,
        token_timeout: float,
        prepare: Prepare,
        running: dict[str, Running],
        adapters: WorkerAdapters | None = None,
    ) -> None:
        self.adapters = adapters
        self.bus = bus
        self.host = host
        self.worker_id = worker_id
        self.timeout = timeout
        self.token_timeout = token_timeout
        self.prepare = prepare
        self.running = running
        self.shadows: dict[str, Shadow] = {}

    # --- handlers -----------------------------------------------------------------------------

    async def adopt(self, req: AdoptRequest) -> AdoptReply:
        request = req.request
        hosted, rt = self.host.ready(request.model)
        if hosted.instance_id != req.instance_id:
            raise ConflictError(
                f"worker {self.worker_id} hosts instance {hosted.instance_id}, "
                f"not {req.instance_id}"
            )
        if req.migration_id in self.shadows:
            raise ConflictError(f"migration {req.migration_id} is already under way here")
        if not request.inbox:
            raise BadRequestError("an adopted generation needs the inbox it streams to")
        p = request.params
        if p.seed is None and p.temperature > 0:
            raise BadRequestError("a sampled generation moves with the seed it was started with")
        if len(request.generated_token_ids) >= p.max_tokens:
            raise BadRequestError("the generation has no tokens left to produce")
        prompt_ids, detok = await asyncio.to_thread(self.prepare, rt, request)
        sampling = Sampling.of(p, p.seed or 0)
        check_sampling(sampling, rt.vocab_size)
        generated = len(request.generated_token_ids)
        ids = [*prompt_ids, *request.generated_token_ids]
        # The shadow reserves KV for the whole generation: what it holds and what is left.
        grammar = await asyncio.to_thread(rt.grammar, p.grammar) if p.grammar else None
        adapter = None
        if request.adapter and self.adapters is not None:
            adapter = await self.adapters.get(
                hosted.instance_id, rt, request.adapter, request.adapter_uri
            )
        job = Job(
            ids,
            p.max_tokens - generated,
            sampling,
            hold=True,
            generated=generated,
            grammar=grammar,
            adapter=adapter,
        )
        handle = rt.engine.submit(job, asyncio.get_running_loop())
        self.host.begin(hosted)
        shadow = Shadow(
            req, hosted, rt, handle, prompt_ids, detok, list(request.generated_token_ids)
        )
        self.shadows[req.migration_id] = shadow
        self._rearm(shadow)
        try:
            held = await self._held(shadow)
        except BaseException:
            self._drop(shadow)
            raise
        return AdoptReply(migration_id=req.migration_id, tokens=held.tokens, prefill_s=held.seconds)

    async def delta(self, req: AdoptDeltaRequest) -> AdoptReply:
        shadow = self._take(req.migration_id, len(req.token_ids), req.total)
        try:
            shadow.runtime.engine.extend(shadow.handle, req.token_ids)
            held = await self._held(shadow)
        except BaseException:
            self._drop(shadow)
            raise
        self._feed(shadow, req.token_ids)
        shadow.rounds += 1
        shadow.busy = False
        self._rearm(shadow)
        return AdoptReply(migration_id=req.migration_id, tokens=held.tokens, prefill_s=held.seconds)

    async def commit(self, req: AdoptCommitRequest) -> AdoptReply:
        shadow = self._take(req.migration_id, len(req.token_ids), req.total)
        request = shadow.req.request
        remaining = request.params.max_tokens - req.total
        try:
            if remaining < 1:
                raise BadRequestError("the generation has no tokens left to produce")
            engine = shadow.runtime.engine
            # Extend and release back to back: the first token follows the final delta at once.
            engine.extend(shadow.handle, req.token_ids)
            engine.release(shadow.handle, remaining)
            held = await self._held(shadow)
        except BaseException:
            self._drop(shadow)
            raise
        if shadow.watchdog is not None:
            shadow.watchdog.cancel()
        self._feed(shadow, req.token_ids)
        self._start(shadow, req)
        return AdoptReply(migration_id=req.migration_id, tokens=held.tokens, prefill_s=held.seconds)

    async def abort(self, req: AdoptAbortRequest) -> AdoptAbortReply:
        shadow = self.shadows.get(req.migration_id)
        if shadow is None:
            return AdoptAbortReply(migration_id=req.migration_id, aborted=False)
        log.info("migration %s aborted by the source: %s", req.migration_id, req.reason)
        if shadow.stream is not None:
            shadow.stream.stop()  # committed, but the source never saw the answer
        self._drop(shadow)
        return AdoptAbortReply(migration_id=req.migration_id, aborted=True)

    # --- shadows ------------------------------------------------------------------------------

    def _take(self, migration_id: str, n: int, total: int) -> Shadow:
        shadow = self.shadows.get(migration_id)
        if shadow is None or shadow.stream is not None:
            raise NotFoundError(f"no migration {migration_id} under way on {self.worker_id}")
        if shadow.busy:
            raise ConflictError(f"migration {migration_id}: one message at a time")
        if len(shadow.generated) + n != total:
            raise ConflictError(
                f"migration {migration_id}: holding {len(shadow.generated)} tokens, "
                f"+{n} is not {total}"
            )
        shadow.busy = True
        return shadow

    async def _held(self, shadow: Shadow) -> Held:
        """The engine's answer to the last shadow step (the migration timeout bounds it)."""
        try:
            async with asyncio.timeout(self.timeout):  # not wait_for: see StreamReader
                item = await shadow.handle.queue.get()
        except TimeoutError:
            raise BusTimeoutError(f"the shadow prefill took over {self.timeout:g}s") from None
        if isinstance(item, Failed):
            raise item.error
        if not isinstance(item, Held):
            raise ConflictError(f"unexpected engine output for a shadow: {item!r}")
        return item

    def _feed(self, shadow: Shadow, token_ids: list[int]) -> None:
        eos = shadow.runtime.eos_ids
        for token in token_ids:
            if token in eos:
                break
            shadow.detok.add([token])
        shadow.generated.extend(token_ids)

    def _rearm(self, shadow: Shadow) -> None:
        if shadow.watchdog is not None:
            shadow.watchdog.cancel()
        loop = asyncio.get_running_loop()
        shadow.watchdog = loop.call_later(self.timeout, self._expire, shadow)

    def _expire(self, shadow: Shadow) -> None:
        if self.shadows.get(shadow.req.migration_id) is not shadow or shadow.stream is not None:
            return
        reason = f"no news from the source within {self.timeout:g}s"
        log.warning("migration %s dropped: %s", shadow.req.migration_id, reason)
        self._drop(shadow)
        self.bus.spawn(
            self._emit(
                MigrationAbortedEvent(
                    migration_id=shadow.req.migration_id,
                    request_id=shadow.req.request.request_id,
                    instance_id=shadow.hosted.instance_id,
                    side="destination",
                    reason=reason,
                )
            )
        )

    def _drop(self, shadow: Shadow) -> None:
        """Forget ``shadow``: its job is cancelled and its slot freed (idempotent)."""
        if self.shadows.get(shadow.req.migration_id) is not shadow:
            return
        del self.shadows[shadow.req.migration_id]
        if shadow.watchdog is not None:
            shadow.watchdog.cancel()
        if shadow.stream is None:
            shadow.handle.cancel()
            self.host.end(shadow.hosted, None)

    # --- the adopted stream -------------------------------------------------------------------

    def _start(self, shadow: Shadow, req: AdoptCommitRequest) -> None:
        """Produce the rest of the stream from here, and count it as this instance's."""
        adopted = shadow.req.request.model_copy(
            update={"generated_token_ids": list(shadow.generated), "start_seq": req.start_seq}
        )
        gs = GenerationStream(
            shadow.handle,
            shadow.detok,
            prompt_tokens=len(shadow.prompt_ids),
            prior_tokens=len(shadow.generated),
            token_timeout=self.token_timeout,
            token_text=shadow.runtime.token_text,
        )
        run = Running(adopted, shadow.hosted.instance_id, gs)
        rid = adopted.request_id
        self.running[rid] = run
        stream = _Adopted(gs)
        shadow.stream = stream
        hosted = shadow.hosted

        def done() -> None:
            if self.running.get(rid) is run:
                del self.running[rid]
            self.shadows.pop(shadow.req.migration_id, None)
            self.host.end(hosted, adopted.keep_alive_s)
            run.ended.set()

        stream.on_end = done
        # The stream itself tells its consumer (the router) who produces it from here on: the
        # event below is for observers only.
        subject, stream_id = self.bus.continue_stream(
            WORKER_GENERATE,
            stream,
            inbox=adopted.inbox,
            start_seq=req.start_seq,
            instance_id=hosted.instance_id,
            worker_id=self.worker_id,
        )
        stream.on_first = lambda at: self.bus.spawn(
            self._emit(
                MigrationCommittedEvent(
                    migration_id=shadow.req.migration_id,
                    request_id=rid,
                    source_instance_id=shadow.req.source_instance_id,
                    source_worker_id=shadow.req.source_worker_id,
                    instance_id=hosted.instance_id,
                    worker_id=self.worker_id,
                    inbox=adopted.inbox,
                    start_seq=req.start_seq,
                    rounds=shadow.rounds,
                    tokens_recomputed=len(shadow.prompt_ids) + len(shadow.generated),
                    pause_s=round(at - req.paused_at, 6) if req.paused_at > 0 else None,
                    cancel_subject=subject,
                    stream_id=stream_id,
                )
            )
        )

    async def _emit(self, event: Event) -> None:
        await self.bus.emit(event.model_copy(update={"source": self.worker_id}))

    async def close(self) -> None:
        """Drop every shadow (the worker is stopping)."""
        for shadow in list(self.shadows.values()):
            self._drop(shadow)


class _Adopted:
    """The chunks of an adopted generation: says when the first one goes out, can be stopped
    silently (a commit the source never saw answered), and calls ``on_end`` once."""

    def __init__(self, gs: GenerationStream) -> None:
        self.gs = gs
        self.on_first: Callable[[float], object] | None = None
        self.on_end: Callable[[], None] | None = None
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True
        self.gs.interrupt(CancelledError("the migration was aborted"))

    def __aiter__(self) -> _Adopted:
        return self

    async def __anext__(self) -> TokenChunk:
        if self._stopped:
            raise StreamHandedOver
        try:
            chunk = await self.gs.__anext__()
        except BusError:
            if self._stopped:
                raise StreamHandedOver from None
            raise
        if self._stopped:
            raise StreamHandedOver
        first, self.on_first = self.on_first, None
        if first is not None:
            first(time.time())  # about when the frame goes out: it is published next
        return chunk

    async def aclose(self) -> None:
        try:
            await self.gs.aclose()
        finally:
            end, self.on_end = self.on_end, None
            if end is not None:
                end()
