"""Live migration, source side: move running generations to another worker by their tokens.

Per generation: send the destination the prompt and the tokens so far (it prefills a shadow
while this worker keeps decoding), then the new tokens in rounds until the destination is at
most ``target_gap`` tokens behind or the round limit is hit; then pause the job at a token
boundary, publish every token it produced, and commit: the final delta plus the stream's next
sequence number. The destination continues the same stream; this stream ends silently.

Any failure before the commit answer (the destination dies, refuses, or the migration runs
past its timeout) aborts: the destination is told to drop its shadow (best effort; it also
drops it on its own after a timeout without news) and the paused job simply resumes, so
nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field

from libs.protocol import Bus
from libs.protocol.endpoints import (
    WORKER_ADOPT,
    WORKER_ADOPT_ABORT,
    WORKER_ADOPT_COMMIT,
    WORKER_ADOPT_DELTA,
)
from libs.protocol.errors import BadRequestError, BusError
from libs.protocol.events import (
    Event,
    MigrationAbortedEvent,
    MigrationRoundEvent,
    MigrationStartedEvent,
)
from libs.protocol.messages import (
    AdoptAbortRequest,
    AdoptCommitRequest,
    AdoptDeltaRequest,
    AdoptRequest,
    GenerateRequest,
    MigratedGeneration,
    MigrateReply,
    MigrateRequest,
)

from .generation import GenerationStream

log = logging.getLogger(__name__)

# How long telling a destination to drop its shadow may take (it drops it anyway later).
ABORT_TIMEOUT_S = 2.0


@dataclass(eq=False)
class Running:
    """A generation this worker is producing: what a migration needs to move it."""

    request: GenerateRequest  # as received, with the seed actually used in ``params.seed``
    instance_id: str
    stream: GenerationStream
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # its stream is closed

    def token_ids(self) -> list[int]:
        """Every generated token published so far (including those generated elsewhere)."""
        return [*self.request.generated_token_ids, *self.stream.new_token_ids]


class Migrations:
    """Answers ``migrate``: moves this worker's running generations to a destination."""

    def __init__(
        self,
        *,
        bus: Bus,
        worker_id: str,
        running: dict[str, Running],
        timeout: float,
    ) -> None:
        self.bus = bus
        self.worker_id = worker_id
        self.running = running
        self.timeout = timeout

    async def migrate(self, req: MigrateRequest) -> MigrateReply:
        if req.destination_worker_id == self.worker_id:
            raise BadRequestError("a generation cannot migrate to the worker it runs on")
        mine = [r for r in self.running.values() if r.instance_id == req.instance_id]
        wanted = set(req.request_ids)
        moving = [r for r in mine if not wanted or r.request.request_id in wanted]
        missing = wanted - {r.request.request_id for r in moving}
        results = list(await asyncio.gather(*(self._one(r, req) for r in moving)))
        results += [MigratedGeneration(request_id=rid, outcome="not_found") for rid in missing]
        left = sum(
            1
            for r in self.running.values()
            if r.instance_id == req.instance_id and not r.stream.handed_over
        )
        return MigrateReply(instance_id=req.instance_id, generations=results, remaining=left)

    async def _one(self, run: Running, req: MigrateRequest) -> MigratedGeneration:
        mid = "m-" + uuid.uuid4().hex[:16]
        rid = run.request.request_id
        timeout = req.timeout_s or self.timeout
        t0 = time.perf_counter()
        job = _Job(self, run, req, mid)
        await self._emit(
            MigrationStartedEvent(
                migration_id=mid,
                request_id=rid,
                instance_id=run.instance_id,
                worker_id=self.worker_id,
                destination_instance_id=req.destination_instance_id,
                destination_worker_id=req.destination_worker_id,
                tokens=len(run.token_ids()),
            )
        )
        try:
            async with asyncio.timeout(timeout):
                outcome = await job.run()
        except (BusError, TimeoutError) as exc:
            reason = f"timed out after {timeout:g}s" if isinstance(exc, TimeoutError) else str(exc)
            await job.abort(reason)
            return job.result("aborted", t0, reason)
        except BaseException:
            await asyncio.shield(job.abort("the migration was cancelled"))
            raise
        if outcome == "finished":
            await job.abort("the generation ended first", emit=False)
        return job.result(outcome, t0)

    async def _emit(self, event: Event) -> None:
        await self.bus.emit(event.model_copy(update={"source": self.worker_id}))


class _Job:
    """One generation's migration."""

    def __init__(self, owner: Migrations, run: Running, req: MigrateRequest, mid: str) -> None:
        self.owner = owner
        self.run_ = run
        self.req = req
        self.mid = mid
        self.dest = req.destination_worker_id
        self.sent: list[int] = []
        self.rounds = 0
        self.recomputed = 0
        self.adopted = False  # the destination may hold a shadow

    async def run(self) -> str:
        """The rounds and the commit; returns "committed" or "finished"."""
        run, gs, bus = self.run_, self.run_.stream, self.owner.bus
        self.sent = run.token_ids()
        request = run.request.model_copy(update={"generated_token_ids": list(self.sent)})
        t = time.perf_counter()
        self.adopted = True
        reply = await bus.request(
            WORKER_ADOPT,
            AdoptRequest(
                migration_id=self.mid,
                instance_id=self.req.destination_instance_id,
                source_worker_id=self.owner.worker_id,
                source_instance_id=run.instance_id,
                request=request,
            ),
            worker_id=self.dest,
            timeout=self.owner.timeout,
        )
        self.recomputed = reply.tokens
        await self._round(reply.tokens, t)
        while True:
            if gs.done:
                return "finished"
            delta = run.token_ids()[len(self.sent) :]
            if len(delta) <= self.req.target_gap or self.rounds >= self.req.max_rounds:
                break
            self.rounds += 1
            t = time.perf_counter()
            total = len(self.sent) + len(delta)
            reply = await bus.request(
                WORKER_ADOPT_DELTA,
                AdoptDeltaRequest(migration_id=self.mid, token_ids=delta, total=total),
                worker_id=self.dest,
                timeout=self.owner.timeout,
            )
            self.sent += delta
            self.recomputed += len(delta)
            await self._round(len(delta), t)
        paused = await gs.pause(self.owner.timeout)
        if paused is None:
            return "finished"
        # Every token of the job is published now, in `paused.chunks` frames of this stream.
        final = [*run.request.generated_token_ids, *paused.new_token_ids][len(self.sent) :]
        total = len(self.sent) + len(final)
        await bus.request(
            WORKER_ADOPT_COMMIT,
            AdoptCommitRequest(
                migration_id=self.mid,
                token_ids=final,
                total=total,
                start_seq=run.request.start_seq + paused.chunks,
                paused_at=paused.published_at,
            ),
            worker_id=self.dest,
            timeout=self.owner.timeout,
        )
        self.recomputed += len(final)
        if not gs.hand_over():
            # The consumer left (or the stream stopped waiting) between pause and commit.
            raise BadRequestError("the stream ended during the commit")
        self.adopted = False
        # The generation has left this instance once its stream is closed here (its slot
        # and its in-flight count given back), a moment after the hand-over.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.ended.wait(), ABORT_TIMEOUT_S)
        return "committed"

    async def _round(self, tokens_sent: int, started: float) -> None:
        gap = len(self.run_.token_ids()) - len(self.sent)
        await self.owner._emit(
            MigrationRoundEvent(
                migration_id=self.mid,
                request_id=self.run_.request.request_id,
                instance_id=self.run_.instance_id,
                round=self.rounds,
                tokens_sent=tokens_sent,
                gap=gap,
                seconds=round(time.perf_counter() - started, 6),
            )
        )

    async def abort(self, reason: str, *, emit: bool = True) -> None:
        """Resume the job here and tell the destination to drop its shadow (best effort)."""
        self.run_.stream.resume()
        if self.adopted:
            self.adopted = False
            with contextlib.suppress(BusError):
                await self.owner.bus.request(
                    WORKER_ADOPT_ABORT,
                    AdoptAbortRequest(migration_id=self.mid, reason=reason[:512]),
                    worker_id=self.dest,
                    timeout=ABORT_TIMEOUT_S,
                )
        if emit:
            log.info("migration %s aborted: %s", self.mid, reason)
            await self.owner._emit(
                MigrationAbortedEvent(
                    migration_id=self.mid,
                    request_id=self.run_.request.request_id,
                    instance_id=self.run_.instance_id,
                    side="source",
                    reason=reason[:1000],
                )
            )

    def result(self, outcome: str, started: float, error: str = "") -> MigratedGeneration:
        return MigratedGeneration.model_validate(
            {
                "request_id": self.run_.request.request_id,
                "outcome": outcome,
                "migration_id": self.mid,
                "rounds": self.rounds,
                "tokens": self.recomputed,
                "seconds": round(time.perf_counter() - started, 6),
                "error": error[:1000],
            }
        )
