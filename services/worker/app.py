"""The worker service: one per device; loads one model instance and streams its generations."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, ClassVar

from prometheus_client import CollectorRegistry

from libs.cluster import ClusterState
from libs.common.service import Service, ServiceKind
from libs.protocol import Route, route
from libs.protocol.bus import Stream
from libs.protocol.endpoints import (
    WORKER_ADOPT,
    WORKER_ADOPT_ABORT,
    WORKER_ADOPT_COMMIT,
    WORKER_ADOPT_DELTA,
    WORKER_EMBED,
    WORKER_GENERATE,
    WORKER_LOAD,
    WORKER_MIGRATE,
    WORKER_RUNNING,
    WORKER_UNLOAD,
)
from libs.protocol.errors import BadRequestError
from libs.protocol.messages import (
    EmbedReply,
    EmbedRequest,
    FinishReason,
    GenerateReply,
    GenerateRequest,
    RunningGeneration,
    RunningReply,
    RunningRequest,
    TokenChunk,
    Usage,
)
from libs.protocol.state import InstanceRecord, WorkerRecord

from .adapters import WorkerAdapters
from .adoption import Adoptions
from .detok import IncrementalDetokenizer
from .embed_requests import embed
from .hosting import Host, prepare
from .metrics import WorkerMetrics
from .migration import Migrations, Running
from .reservation import ReservationCheck
from .settings import WorkerSettings
from .tracked import Tracked
from .validate import check_fits_context, check_generated, check_sampling, check_token_ids

if TYPE_CHECKING:
    from libs.loader import HostPool

    from .runtime import Runtime

log = logging.getLogger(__name__)

# Requests bigger than this are tokenized (and their prior tokens replayed) in a thread, off
# the event loop; smaller ones are cheaper to do inline than to hand to a thread.
INLINE_PROMPT_CHARS = 16 * 1024
INLINE_PRIOR_TOKENS = 1024


class WorkerService(Service):
    kind: ClassVar[ServiceKind] = "worker"

    def __init__(self, settings: WorkerSettings) -> None:
        super().__init__(settings, instance_id=settings.instance_id, node_id=settings.node_id)
        self.worker_settings = settings
        self._host: Host | None = None
        # Generations this worker produces, by request id: what a live migration can move.
        self.running: dict[str, Running] = {}
        self._adoptions: Adoptions | None = None
        self._adapters: WorkerAdapters | None = None
        self._migrations: Migrations | None = None
        self.epoch = 0  # which registration of this worker (the cluster state's count)
        self._reservation: ReservationCheck | None = None
        self.metrics = WorkerMetrics()

    def metrics_registry(self) -> CollectorRegistry:
        return self.metrics.registry

    @property
    def host(self) -> Host:
        if self._host is None:
            raise RuntimeError("worker is not started")
        return self._host

    def routes(self) -> list[Route]:
        wid = self.instance_id
        return [
            *super().routes(),
            route(WORKER_LOAD, self.host.load, worker_id=wid),
            route(WORKER_UNLOAD, self.host.unload, worker_id=wid),
            route(WORKER_GENERATE, self.generate, worker_id=wid),
            route(WORKER_EMBED, self.embed, worker_id=wid),
            route(WORKER_MIGRATE, self.migrations.migrate, worker_id=wid),
            route(WORKER_RUNNING, self.describe_running, worker_id=wid),
            route(WORKER_ADOPT, self.adoptions.adopt, worker_id=wid),
            route(WORKER_ADOPT_DELTA, self.adoptions.delta, worker_id=wid),
            route(WORKER_ADOPT_COMMIT, self.adoptions.commit, worker_id=wid),
            route(WORKER_ADOPT_ABORT, self.adoptions.abort, worker_id=wid),
        ]

    @property
    def adoptions(self) -> Adoptions:
        if self._adoptions is None:
            raise RuntimeError("worker is not started")
        return self._adoptions

    @property
    def migrations(self) -> Migrations:
        if self._migrations is None:
            raise RuntimeError("worker is not started")
        return self._migrations

    async def on_start(self) -> None:
        s = self.worker_settings
        self.state = ClusterState(self.redis, self.keys)
        # torch takes seconds to import: do it (and build the host pool) now, in a thread,
        # so that the first load does not pay for it and the service answers meanwhile.
        prepared: asyncio.Future[HostPool | None] = asyncio.ensure_future(
            asyncio.to_thread(prepare, s.torch_threads, s.host_pool_gb)
        )
        prepared.add_done_callback(_log_prepare_failure)
        self._host = Host(
            bus=self.bus,
            state=self.state,
            settings=s,
            worker_id=self.instance_id,
            node_id=self.node_id,
            prepared=prepared,
            metrics=self.metrics,
        )
        self.metrics.watch(self._host)
        self._migrations = Migrations(
            bus=self.bus,
            worker_id=self.instance_id,
            running=self.running,
            timeout=s.migration_timeout,
        )
        self._adapters = WorkerAdapters(
            storage=self._host.storage,
            capacity=s.max_adapters,
            record=self._record_adapters,
            metrics=self.metrics,
        )
        self._adoptions = Adoptions(
            bus=self.bus,
            host=self._host,
            worker_id=self.instance_id,
            timeout=s.migration_timeout,
            token_timeout=s.token_timeout,
            prepare=_prepare_request,
            running=self.running,
            adapters=self._adapters,
        )
        self._reservation = ReservationCheck(
            state=self.state, host=self._host, worker_id=self.instance_id
        )
        self.epoch = await self.state.register_worker(self.instance_id, self.node_id, s.device)

    def _record_adapters(self, instance_id: str, names: list[str]) -> None:
        """The adapters resident on an instance, into its record (routers prefer an instance
        that holds a request's adapter; a lost write only costs that preference)."""
        self.bus.spawn(self.state.update_instance(instance_id, adapters=names))

    async def on_store_reset(self) -> None:
        """Register again as this worker stands: its epoch, its reservation and the record
        of the instance it hosts, so that the router and scheduler find it serving."""
        h = self.host.hosted
        worker = WorkerRecord(
            worker_id=self.instance_id,
            node_id=self.node_id,
            device=self.worker_settings.device,
            instance_id=h.instance_id if h is not None else "",
            epoch=self.epoch,
        )
        instance = None
        if h is not None and h.status != "stopping":  # a stopping one retires itself
            bank = getattr(h.runtime, "adapters", None)
            instance = InstanceRecord(
                instance_id=h.instance_id,
                model=h.model,
                worker_id=self.instance_id,
                node_id=self.node_id,
                status=h.status,
                created_at=time.time(),
                ready_at=time.time() if h.status == "ready" else None,
                worker_epoch=self.epoch,
                adapters=bank.resident if bank is not None else [],
            )
        await self.state.restore_worker(worker, instance)

    async def on_beat(self) -> None:
        """What this worker hosts and what the cluster state reserves it for agree, or are
        made to (`ReservationCheck`)."""
        if self._reservation is not None:
            await self._reservation.beat(self.epoch)

    async def on_stop(self) -> None:
        if self._adoptions is not None:
            await self._adoptions.close()
        if self._host is not None:
            await self._host.shutdown()
        await self.state.unregister_worker(self.instance_id)

    async def describe_running(self, req: RunningRequest) -> RunningReply:
        """The hosted instance and the generations it is producing, with their measured
        prefill and decode speeds (what the scheduler's migration policy weighs)."""
        h = self.host.hosted
        if h is None:
            return RunningReply(worker_id=self.instance_id)
        gens = []
        for run in self.running.values():
            if run.instance_id != h.instance_id or run.stream.done:
                continue
            stream = run.stream
            generated = stream.completion_tokens
            gens.append(
                RunningGeneration(
                    request_id=run.request.request_id,
                    context_tokens=stream.prompt_tokens + generated,
                    remaining_tokens=max(run.request.params.max_tokens - generated, 0),
                    prefill_tokens=stream.prompt_tokens + len(run.request.generated_token_ids),
                    prefill_s=stream.prefill_s,
                    decode_s_per_token=stream.decode_s_per_token(),
                )
            )
        return RunningReply(
            worker_id=self.instance_id,
            instance_id=h.instance_id,
            model=h.model,
            status=h.status,
            generations=gens,
        )

    async def embed(self, req: EmbedRequest) -> EmbedReply:
        """Vectors of a model deployed with task "embed" (see `embed_requests.embed`)."""
        return await embed(self.host, req, self.worker_settings.token_timeout)

    # --- generate -----------------------------------------------------------------------------

    async def generate(self, req: GenerateRequest) -> Stream[GenerateReply, TokenChunk]:
        """Check the request, take a slot, and stream its tokens (see `GenerationStream`).

        The instance counts the request as in flight from here until its stream ends, so that
        an idle unload cannot take the instance from under it (see `Host.unload`)."""
        hosted, rt = self.host.ready(req.model)
        if not req.inbox:
            raise BadRequestError("generate needs an inbox to stream to")
        if req.params.seed is None:
            # Chosen here and kept with the request: a migration carries it to the destination,
            # so a sampled generation continues there exactly as it would have here.
            from .sampling import random_seed

            params = req.params.model_copy(update={"seed": random_seed()})
            req = req.model_copy(update={"params": params})
        host = self.host
        host.begin(hosted)
        try:
            ack, chunks = await self._generate(req, hosted.instance_id, rt)
        except BaseException:
            host.end(hosted, req.keep_alive_s)
            raise
        run = self._running(req, hosted.instance_id, chunks)

        def done() -> None:
            if run is not None:
                if self.running.get(req.request_id) is run:
                    del self.running[req.request_id]
                run.ended.set()
            # A generation that moved elsewhere did not finish here: no keep-alive from it.
            moved = run is not None and run.stream.handed_over
            host.end(hosted, None if moved else req.keep_alive_s)

        return Stream(ack=ack, chunks=Tracked(chunks, done))

    def _running(
        self, req: GenerateRequest, instance_id: str, chunks: AsyncIterator[TokenChunk]
    ) -> Running | None:
        """Register a generation the engine runs, so that a live migration can find it."""
        from .generation import GenerationStream

        if not isinstance(chunks, GenerationStream):
            return None  # answered without the engine: nothing to move
        run = Running(req, instance_id, chunks)
        self.running[req.request_id] = run
        return run

    async def _generate(
        self, req: GenerateRequest, instance_id: str, rt: Runtime
    ) -> tuple[GenerateReply, AsyncIterator[TokenChunk]]:
        text = len(req.prompt or "") + len(req.tools_json)
        text += sum(len(m.content) for m in req.messages or ())
        big = text > INLINE_PROMPT_CHARS or bool(req.tools_json)  # tools: several renders
        if big or len(req.generated_token_ids) > INLINE_PRIOR_TOKENS:
            prompt_ids, detok = await asyncio.to_thread(_prepare_request, rt, req)
        else:
            prompt_ids, detok = _prepare_request(rt, req)
        ack = GenerateReply(
            request_id=req.request_id,
            worker_id=self.instance_id,
            instance_id=instance_id,
            prompt_token_ids=prompt_ids,
        )
        prior = len(req.generated_token_ids)
        remaining = req.params.max_tokens - prior
        if remaining <= 0 or detok.stopped:
            usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=prior)
            reason: FinishReason = "stop" if detok.stopped else "length"
            last = TokenChunk(
                token_ids=[], text=detok.finish(), finish_reason=reason, usage=usage, decode_s=0.0
            )
            return ack, _single(last)

        # Imported here, not at the top: they import torch, which the service loads in the
        # background at start-up (and which is loaded by now: an instance is ready).
        from .engine import Job
        from .generation import GenerationStream
        from .sampling import Sampling, random_seed

        p = req.params
        sampling = Sampling.of(p, p.seed if p.seed is not None else random_seed())
        check_sampling(sampling, rt.vocab_size)
        grammar = await asyncio.to_thread(rt.grammar, p.grammar) if p.grammar else None
        adapter = None
        if req.adapter:
            assert self._adapters is not None
            adapter = await self._adapters.get(instance_id, rt, req.adapter, req.adapter_uri)
        job = Job(
            prompt_ids + list(req.generated_token_ids),
            remaining,
            sampling,
            generated=prior,
            grammar=grammar,
            adapter=adapter,
        )
        handle = rt.engine.submit(job, asyncio.get_running_loop())
        stream = GenerationStream(
            handle,
            detok,
            prompt_tokens=len(prompt_ids),
            prior_tokens=prior,
            token_timeout=self.worker_settings.token_timeout,
            token_text=rt.token_text,
            metrics=self.metrics,
        )
        self.metrics.request(len(prompt_ids))
        return ack, stream


def _prepare_request(rt: Runtime, req: GenerateRequest) -> tuple[list[int], IncrementalDetokenizer]:
    """Tokenize and check the prompt; replay tokens generated elsewhere into the detokenizer,
    so that text they left incomplete (a partial character, a possible stop string) comes out
    exactly as it would have on the worker that produced them."""
    prompt_ids = rt.prompt_ids(req)
    generated = req.generated_token_ids
    check_token_ids(prompt_ids, rt.vocab_size, "prompt_token_ids")
    check_token_ids(generated, rt.vocab_size, "generated_token_ids")
    check_generated(len(generated), req.params.max_tokens)
    check_fits_context(len(prompt_ids), req.params.max_tokens, rt.context)
    detok = IncrementalDetokenizer(rt.decode, prompt_ids, req.params.stop)
    for token in generated:
        if token in rt.eos_ids:
            break
        detok.add([token])
    return prompt_ids, detok


async def _single(chunk: TokenChunk) -> AsyncIterator[TokenChunk]:
    yield chunk


def _log_prepare_failure(fut: asyncio.Future[HostPool | None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        if fut.exception() is not None:
            log.error("worker start-up work failed", exc_info=fut.exception())
