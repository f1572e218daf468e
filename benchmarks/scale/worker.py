"""A hollow worker: the real worker's bus protocol and Redis records (a `Service` of kind
"worker"), with simulated loads (`HollowHost`) and simulated token timing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from libs.cluster import ClusterState
from libs.common.service import Service, ServiceKind
from libs.protocol import Route, route
from libs.protocol.bus import Stream
from libs.protocol.endpoints import (
    WORKER_ADOPT,
    WORKER_ADOPT_ABORT,
    WORKER_ADOPT_COMMIT,
    WORKER_ADOPT_DELTA,
    WORKER_GENERATE,
    WORKER_LOAD,
    WORKER_MIGRATE,
    WORKER_RUNNING,
    WORKER_UNLOAD,
)
from libs.protocol.errors import BadRequestError, ConflictError, UnavailableError
from libs.protocol.messages import (
    GenerateReply,
    GenerateRequest,
    RunningGeneration,
    RunningReply,
    RunningRequest,
    TokenChunk,
    Usage,
)
from libs.protocol.state import InstanceRecord, WorkerRecord
from services.worker.reservation import ReservationCheck
from services.worker.settings import WorkerSettings
from services.worker.tracked import Tracked
from services.worker.validate import check_generated

from .host import HollowHost
from .sim import NodeSpec, SimMark, TokenSpec, fake_prompt_ids

if TYPE_CHECKING:
    from services.worker.hosting import Hosted


class HollowRefusal(ConflictError):
    """What a hollow worker answers to what it does not simulate (live migration)."""


@dataclass
class Generation:
    """One generation a hollow worker produces (what ``running`` reports)."""

    request: GenerateRequest
    instance_id: str
    prompt_tokens: int
    prefill_s: float
    produced: int = 0


class HollowWorker(Service):
    kind: ClassVar[ServiceKind] = "worker"

    def __init__(self, settings: WorkerSettings, spec: NodeSpec, tokens: TokenSpec) -> None:
        super().__init__(settings, instance_id=settings.instance_id, node_id=settings.node_id)
        self.worker_settings = settings
        self.spec = spec
        self.tokens = tokens
        self.epoch = 0
        self.running: dict[str, Generation] = {}
        self._host: HollowHost | None = None
        self._reservation: ReservationCheck | None = None

    @property
    def host(self) -> HollowHost:
        if self._host is None:
            raise RuntimeError("worker is not started")
        return self._host

    def routes(self) -> list[Route]:
        wid = self.instance_id
        refuse = self.refuse
        return [
            *super().routes(),
            route(WORKER_LOAD, self.host.load, worker_id=wid),
            route(WORKER_UNLOAD, self.host.unload, worker_id=wid),
            route(WORKER_GENERATE, self.generate, worker_id=wid),
            route(WORKER_RUNNING, self.describe_running, worker_id=wid),
            route(WORKER_MIGRATE, refuse, worker_id=wid),
            route(WORKER_ADOPT, refuse, worker_id=wid),
            route(WORKER_ADOPT_DELTA, refuse, worker_id=wid),
            route(WORKER_ADOPT_COMMIT, refuse, worker_id=wid),
            route(WORKER_ADOPT_ABORT, refuse, worker_id=wid),
        ]

    async def refuse(self, req: Any) -> Any:
        raise HollowRefusal(f"hollow worker {self.instance_id} does not migrate generations")

    # --- life cycle (as `WorkerService`) -------------------------------------------------

    async def on_start(self) -> None:
        s = self.worker_settings
        self.state = ClusterState(self.redis, self.keys)
        self._host = HollowHost(
            bus=self.bus,
            state=self.state,
            worker_id=self.instance_id,
            node_id=self.node_id,
            spec=self.spec,
            load_timeout=s.load_timeout,
        )
        # `ReservationCheck` drives a host through `hosted`, `load` and `unload` only.
        self._reservation = ReservationCheck(
            state=self.state, host=self._host, worker_id=self.instance_id
        )
        self.epoch = await self.state.register_worker(self.instance_id, self.node_id, s.device)

    async def on_store_reset(self) -> None:
        h = self.host.hosted
        worker = WorkerRecord(
            worker_id=self.instance_id,
            node_id=self.node_id,
            device=self.worker_settings.device,
            instance_id=h.instance_id if h is not None else "",
            epoch=self.epoch,
        )
        instance = None
        if h is not None and h.status != "stopping":
            instance = InstanceRecord(
                instance_id=h.instance_id,
                model=h.model,
                worker_id=self.instance_id,
                node_id=self.node_id,
                status=h.status,
                created_at=time.time(),
                ready_at=time.time() if h.status == "ready" else None,
                worker_epoch=self.epoch,
            )
        await self.state.restore_worker(worker, instance)

    async def on_beat(self) -> None:
        if self._reservation is not None:
            await self._reservation.beat(self.epoch)

    async def on_stop(self) -> None:
        if self._host is not None:
            await self._host.shutdown()
        await self.state.unregister_worker(self.instance_id)

    # --- requests ---------------------------------------------------------------------------

    async def describe_running(self, req: RunningRequest) -> RunningReply:
        h = self.host.hosted
        if h is None:
            return RunningReply(worker_id=self.instance_id)
        gens = [
            RunningGeneration(
                request_id=g.request.request_id,
                context_tokens=g.prompt_tokens + g.produced,
                remaining_tokens=max(g.request.params.max_tokens - g.produced, 0),
                prefill_tokens=g.prompt_tokens,
                prefill_s=g.prefill_s,
                decode_s_per_token=self.tokens.decode_s_per_token,
            )
            for g in self.running.values()
            if g.instance_id == h.instance_id
        ]
        return RunningReply(
            worker_id=self.instance_id,
            instance_id=h.instance_id,
            model=h.model,
            status=h.status,
            generations=gens,
        )

    async def generate(self, req: GenerateRequest) -> Stream[GenerateReply, TokenChunk]:
        hosted = self.host.ready(req.model)
        if not req.inbox:
            raise BadRequestError("generate needs an inbox to stream to")
        check_generated(len(req.generated_token_ids), req.params.max_tokens)
        text = req.prompt or "".join(m.content for m in req.messages or ())
        prompt_ids = list(req.prompt_token_ids or fake_prompt_ids(text))
        gen = Generation(
            req, hosted.instance_id, len(prompt_ids), self.tokens.prefill_s(len(prompt_ids))
        )
        ack = GenerateReply(
            request_id=req.request_id,
            worker_id=self.instance_id,
            instance_id=hosted.instance_id,
            prompt_token_ids=prompt_ids,
        )
        host = self.host
        host.begin(hosted)
        self.running[req.request_id] = gen

        def done() -> None:
            if self.running.get(req.request_id) is gen:
                del self.running[req.request_id]
            host.end(hosted, req.keep_alive_s)

        mark = SimMark(host.ready_at, host.load_sim_s, gen.prefill_s)
        return Stream(ack=ack, chunks=Tracked(self._chunks(gen, hosted, mark), done))

    async def _chunks(
        self, gen: Generation, hosted: Hosted, mark: SimMark
    ) -> AsyncIterator[TokenChunk]:
        """The tokens at the simulated pace: the prefill, then one decode step per token."""
        req = gen.request
        todo = req.params.max_tokens - len(req.generated_token_ids)
        await asyncio.sleep(gen.prefill_s)
        t0 = time.perf_counter()
        for i in range(todo):
            if i:
                await asyncio.sleep(self.tokens.decode_s_per_token)
            if hosted.status != "ready":
                raise UnavailableError("instance unloaded")
            gen.produced += 1
            last = i == todo - 1
            yield TokenChunk(
                token_ids=[7 + i],
                text=mark.text() if i == 0 else " x",
                prefill_s=gen.prefill_s if i == 0 else None,
                finish_reason="length" if last else None,
                usage=Usage(
                    prompt_tokens=gen.prompt_tokens, completion_tokens=req.params.max_tokens
                )
                if last
                else None,
                decode_s=time.perf_counter() - t0 if last else None,
            )
