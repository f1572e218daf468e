"""Migration, cancellation, client disconnect and a KV-budget burst inside a busy batch, on the
batched engine: real worker services (the tiny demo model) over real NATS and Redis, a
stand-in storage responder, and, for client disconnects, the real router under uvicorn.

Every output is compared with the same request run alone on an idle reference worker (its own
service with default settings: prompts prefilled up to 256 tokens a step, no decode delay). Greedy decoding and seeded
sampling are pure functions of (seed, position), so a generation's tokens must not depend on
what shares its batch, how its prompt was chunked, or which worker produced which part.

How equality is made robust: a ragged batch does the same float arithmetic as batch 1 in
another grouping, so logits may differ in the last bits, which could flip a near-tie. The
tiny demo model is fp32 with ``initializer_range`` 0.5: its logit gaps are large, so batched,
chunked and solo runs agree exactly in practice (as the engine's architecture tests also
find), and exact equality is asserted. A divergence is a bug, not noise.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.cluster import ClusterState
from libs.protocol import Bus, StreamReader, route
from libs.protocol.endpoints import STORAGE_ENSURE, WORKER_GENERATE, WORKER_MIGRATE
from libs.protocol.errors import BadRequestError, OverloadedError
from libs.protocol.events import RequestCompletedEvent
from libs.protocol.messages import (
    GenerateReply,
    GenerateRequest,
    MigrateRequest,
    SamplingParams,
    TokenChunk,
)
from libs.protocol.stream import decode_frame
from services.worker.app import WorkerService
from services.worker.settings import WorkerSettings

from .router_stubs import EventLog, StubScheduler, deploy, router_settings, running_router
from .service_processes import request_load
from .test_worker import Events, ensure_from

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tiny"
REF_MODEL = "tiny-ref"  # the reference worker's instance: the router never routes to it
NODES = {"w-src": "n0", "w-dst": "n1", "w-ref": "n2", "w-busy": "n0", "w-kv": "n0"}
WAIT_S = 60.0


def prompt(length: int, salt: int) -> list[int]:
    """A prompt of ``length`` token ids (of the demo's 1024), different for each ``salt``."""
    return [1] + [10 + (7 * i + 13 * salt) % 1000 for i in range(length - 1)]


def gen(
    rid: str, length: int, n: int, *, seed: int | None = None, salt: int = 0
) -> GenerateRequest:
    """Greedy (``seed`` None) or seeded sampling; ``ignore_eos``: every answer is ``n`` long."""
    return GenerateRequest(
        request_id=rid,
        model=MODEL,
        prompt_token_ids=prompt(length, salt),
        params=SamplingParams(
            max_tokens=n,
            temperature=0.0 if seed is None else 0.8,
            top_p=0.95,
            seed=seed,
            ignore_eos=True,
        ),
    )


@pytest.fixture
async def events(bus: Bus) -> Events:
    ev = Events()
    await ev.start(bus)
    return ev


# --- workers ----------------------------------------------------------------------------------


@dataclass
class Workers:
    """Worker services by id, each hosting a ready instance ``i-<worker id>``."""

    bus: Bus
    state: ClusterState
    services: dict[str, WorkerService]

    def __getitem__(self, wid: str) -> WorkerService:
        return self.services[wid]

    def engine(self, wid: str) -> Any:
        hosted = self.services[wid].host.hosted
        assert hosted is not None
        assert hosted.runtime is not None
        return hosted.runtime.engine

    def in_flight(self, wid: str) -> int:
        hosted = self.services[wid].host.hosted
        assert hosted is not None
        return hosted.in_flight

    async def place(self, wid: str, model: str) -> None:
        iid = f"i-{wid}"
        await request_load(
            self.bus,
            self.state,
            iid=iid,
            model=model,
            worker_id=wid,
            node=NODES[wid],
            uri="file:///m/tiny",
        )
        deadline = time.monotonic() + WAIT_S
        while (rec := await self.state.get_instance(iid)) is None or rec.status != "ready":
            assert time.monotonic() < deadline, f"{iid} never became ready: {rec}"
            await asyncio.sleep(0.05)

    def is_idle(self, wid: str) -> bool:
        engine = self.engine(wid)
        return (
            self.services[wid].running == {}
            and self.in_flight(wid) == 0
            and (engine.in_use, engine.sequences, engine.kv_reserved) == (0, 0, 0)
        )

    async def idle(self, wid: str) -> None:
        """Every generation ended and was given back: nothing in flight, no KV held."""
        await eventually(lambda: self.is_idle(wid), f"{wid} idle")


@asynccontextmanager
async def workers(
    nats_server: Any,
    redis_server: Any,
    root: str,
    bus: Bus,
    state: ClusterState,
    checkpoint: Path,
    envs: dict[str, dict[str, str]],
    models: dict[str, str] | None = None,
) -> AsyncIterator[Workers]:
    """Start a worker per ``envs`` entry (its ``SLLM_*`` overrides) and load the model on each
    (``models`` names another model for some)."""
    nodes = sorted({NODES[w] for w in envs})
    ensure = ensure_from(checkpoint)
    await bus.serve("storage", [route(STORAGE_ENSURE, ensure, node_id=n) for n in nodes])
    async with AsyncExitStack() as stack:
        services: dict[str, WorkerService] = {}
        for wid, env in envs.items():
            settings = WorkerSettings.from_env(
                {
                    "SLLM_NATS_URL": nats_server.url,
                    "SLLM_REDIS_URL": redis_server.url,
                    "SLLM_ROOT": root,
                    "SLLM_INSTANCE_ID": wid,
                    "SLLM_NODE_ID": NODES[wid],
                    "SLLM_HEARTBEAT_INTERVAL": "0.2",
                    "SLLM_HEARTBEAT_TTL": "2",
                    **{f"SLLM_{k.upper()}": v for k, v in env.items()},
                }
            )
            svc = WorkerService(settings)
            await svc.start()
            stack.push_async_callback(svc.stop, "test over")
            services[wid] = svc
        ws = Workers(bus, state, services)
        await asyncio.gather(*(ws.place(w, (models or {}).get(w, MODEL)) for w in envs))
        yield ws


async def eventually(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.01)


# --- streams as a client reads them -----------------------------------------------------------


@dataclass(eq=False)
class Read:
    """One generation as its client reads it: each chunk with its arrival time, and every
    frame published to its inbox (a tap beside the reader, which itself drops duplicates)."""

    req: GenerateRequest
    chunks: list[TokenChunk] = field(default_factory=list)
    at: list[float] = field(default_factory=list)  # time.monotonic() of each chunk
    frames: list[tuple[int, str]] = field(default_factory=list)  # (seq, kind) as published
    reader: StreamReader[GenerateReply, TokenChunk] | None = None
    task: asyncio.Task[None] | None = None

    @property
    def ids(self) -> list[int]:
        return [i for c in self.chunks for i in c.token_ids]

    @property
    def text(self) -> str:
        return "".join(c.text for c in self.chunks)

    def tokens_between(self, t0: float, t1: float) -> int:
        return sum(
            len(c.token_ids) for c, t in zip(self.chunks, self.at, strict=True) if t0 < t < t1
        )

    @property
    def finished(self) -> bool:
        return bool(self.chunks) and self.chunks[-1].finish_reason is not None

    async def done(self) -> Read:
        assert self.task is not None
        await asyncio.wait_for(self.task, WAIT_S)
        return self


async def start(bus: Bus, req: GenerateRequest, wid: str) -> Read:
    """Send ``req`` to worker ``wid`` (returns once the worker took it) and read its chunks
    in the background."""
    inbox = bus.nc.new_inbox()
    read = Read(req.model_copy(update={"inbox": inbox}))

    async def tap(msg: Any) -> None:
        frame = decode_frame(msg.data)
        read.frames.append((frame.seq, frame.kind))

    await bus.nc.subscribe(inbox, cb=tap)
    read.reader = await bus.stream(
        WORKER_GENERATE, read.req, worker_id=wid, timeout=20, idle_timeout=30
    )

    async def consume() -> None:
        assert read.reader is not None
        async with read.reader as reader:
            async for chunk in reader:
                read.at.append(time.monotonic())
                read.chunks.append(chunk)

    read.task = asyncio.create_task(consume())
    return read


async def solo(bus: Bus, req: GenerateRequest) -> Read:
    """``req`` alone on the idle reference worker."""
    alone = req.model_copy(update={"request_id": "solo-" + req.request_id, "model": REF_MODEL})
    return await (await start(bus, alone, "w-ref")).done()


async def solos(bus: Bus, reqs: list[GenerateRequest]) -> dict[str, Read]:
    """Each request alone, one after the other."""
    return {r.request_id: await solo(bus, r) for r in reqs}


def assert_same(got: Read, want: Read) -> None:
    rid = got.req.request_id
    assert got.ids == want.ids, f"{rid}: tokens differ from its solo run"
    assert got.text == want.text, rid
    last, ref = got.chunks[-1], want.chunks[-1]
    assert (last.finish_reason, last.usage) == (ref.finish_reason, ref.usage), rid
    # As published: numbered 0, 1, 2... without a gap or a duplicate, data frames then the
    # last one; the reader saw each of them once.
    assert [s for s, _ in got.frames] == list(range(len(got.frames))), (rid, got.frames)
    assert [k for _, k in got.frames] == ["data"] * (len(got.frames) - 1) + ["last"], rid
    assert len(got.chunks) == len(got.frames), rid


async def wait_tokens(read: Read, k: int) -> None:
    await eventually(lambda: len(read.ids) >= k, f"{read.req.request_id} has {k} tokens", WAIT_S)


# --- migration ---------------------------------------------------------------------------------

SRC_DELAY, DST_DELAY = "0.02", "0.06"  # seconds per engine step; the destination is slower


async def test_one_generation_migrates_out_of_a_busy_batch_into_another(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, events: Events, checkpoint
) -> None:
    """The source runs six generations (greedy and seeded, short and long prompts, two still
    prefilling in chunks of 8 tokens); one moves to a destination busy with two of its own.
    Every stream equals its solo run; the others on the source kept producing tokens while the
    moved one was paused (between its last frame from the source and its first from the
    destination)."""
    chunked = {"prefill_chunk": "8"}
    envs = {
        "w-src": {**chunked, "decode_delay": SRC_DELAY},
        "w-dst": {**chunked, "decode_delay": DST_DELAY},
        "w-ref": {},
    }
    on_src = [
        gen("g-a", 11, 96, salt=1),
        gen("s-a", 17, 96, seed=11, salt=2),
        gen("mover", 23, 120, seed=4242, salt=3),
        gen("g-b", 9, 96, salt=4),
        # 430 prompt tokens at 8 a step: still prefilling long after the mover decodes.
        gen("g-long", 280, 24, salt=5),
        gen("s-long", 150, 24, seed=99, salt=6),
    ]
    on_dst = [gen("d-g", 40, 40, salt=7), gen("d-s", 13, 40, seed=5, salt=8)]
    async with workers(
        nats_server, redis_server, root, bus, state, checkpoint, envs, {"w-ref": REF_MODEL}
    ) as ws:
        want = await solos(bus, on_src + on_dst)
        reads = {r.request_id: await start(bus, r, "w-src") for r in on_src}
        reads |= {r.request_id: await start(bus, r, "w-dst") for r in on_dst}
        mover = reads["mover"]
        await wait_tokens(mover, 6)
        prefilling = [r for r in ("g-long", "s-long") if not reads[r].chunks]
        assert prefilling == ["g-long", "s-long"], "the long prompts should still be prefilling"
        source_stream = ws["w-src"].running["mover"].stream
        asked = time.monotonic()
        reply = await bus.request(
            WORKER_MIGRATE,
            MigrateRequest(
                instance_id="i-w-src",
                destination_worker_id="w-dst",
                destination_instance_id="i-w-dst",
                request_ids=["mover"],
            ),
            worker_id="w-src",
            timeout=WAIT_S,
        )
        (moved,) = reply.generations
        assert (moved.request_id, moved.outcome) == ("mover", "committed"), moved
        # The others stay on the source; the destination now produces the mover's stream.
        assert "mover" not in ws["w-src"].running
        assert "mover" in ws["w-dst"].running
        for read in reads.values():
            await read.done()
        committed = await events.wait("migration.committed", "i-w-dst")
        await ws.idle("w-src")
        await ws.idle("w-dst")
        assert ws["w-dst"].adoptions.shadows == {}

    for rid, read in reads.items():
        assert_same(read, want[rid])
    assert committed.request_id == "mover"
    assert committed.pause_s is not None

    # The mover's pause as its client saw it: between the last frame the source published and
    # the first one from the destination.
    k = source_stream.chunks
    assert 0 < k < len(mover.chunks)
    paused_from, paused_to = mover.at[k - 1], mover.at[k]
    assert paused_to > paused_from
    others = [reads[rid] for rid in ("g-a", "s-a", "g-b", "g-long", "s-long")]
    decoding = [r for r in others if r.at[0] < paused_from and r.at[-1] > paused_to]
    assert len(decoding) >= 3, "the migration should land while the others decode"
    for read in decoding:
        got = read.tokens_between(paused_from, paused_to)
        assert got >= 2, f"{read.req.request_id} stalled in the mover's pause ({got} tokens)"
    # The destination's own streams went on while it prefilled and extended the shadow.
    for rid in ("d-g", "d-s"):
        got = reads[rid].tokens_between(asked, paused_from)
        assert got >= 2, f"{rid} stalled while the destination took the mover ({got} tokens)"


# --- cancellation and client disconnect --------------------------------------------------------

KEEP_N = 96  # tokens of the generations that run to the end (about 3 s at 0.02 s a step)
LONG_N = 3000  # tokens of those whose clients leave early


async def sse(
    client: httpx.AsyncClient, body: dict[str, Any], *, leave_after: int | None = None
) -> tuple[str, str, str | None]:
    """A streamed completion: (request id, text, finish reason); with ``leave_after`` the
    client closes the connection after that many chunks."""
    body = {**body, "stream": True}
    rid, parts, finish, n = "", [], None, 0
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            assert "error" not in chunk, chunk
            rid = chunk["id"]
            for choice in chunk["choices"]:
                parts.append(choice.get("text") or "")
                finish = choice.get("finish_reason") or finish
            n += 1
            if leave_after is not None and n >= leave_after:
                break  # leaving the block closes the response: the client is gone
    return rid, "".join(parts), finish


def body_of(req: GenerateRequest) -> dict[str, Any]:
    p = req.params
    body: dict[str, Any] = {
        "model": MODEL,
        "prompt": req.prompt_token_ids,
        "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "ignore_eos": True,
    }
    if p.seed is not None:
        body["seed"] = p.seed
    return body


async def test_clients_leaving_a_busy_batch_free_their_place_and_the_rest_is_unchanged(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, checkpoint
) -> None:
    """Eight generations fill a worker (batch of 8, no queue: a ninth is refused); four
    clients leave mid-stream: one closes its bus stream, one is cancelled while its long prompt
    is still being prefilled, two close their HTTP stream through the router. The worker gives
    their places back at once (its running generations, the engine's jobs and KV), new
    requests are taken while the other four still run, and those four, like the new ones,
    equal their solo runs."""
    envs = {
        "w-busy": {
            "decode_delay": "0.02",
            "max_batch": "8",
            "max_queue": "0",
            "prefill_chunk": "16",
        },
        "w-ref": {},
    }
    keep_bus = [gen("b-keep-g", 30, KEEP_N, salt=11), gen("b-keep-s", 12, KEEP_N, seed=3, salt=12)]
    keep_http = [gen("h-keep-g", 8, KEEP_N, salt=13), gen("h-keep-s", 20, KEEP_N, seed=8, salt=14)]
    closing_req = gen("b-close", 10, LONG_N, salt=20)
    # 600 prompt tokens at 16 a step: still prefilling when its client gives up.
    cancelled_req = gen("b-cancel", 600, LONG_N, seed=21, salt=21)
    dropping = [gen(f"h-drop-{i}", 15 + i, LONG_N, seed=i, salt=30 + i) for i in range(2)]
    later = [gen("new-g", 16, 32, salt=40), gen("new-s", 9, 32, seed=77, salt=41)]
    await StubScheduler(bus, state, worker_ids=["w-busy"]).serve()
    await deploy(state, MODEL)
    completed = await EventLog().watch(bus, "request.completed", RequestCompletedEvent)
    settings = router_settings(nats_server.url, redis_server.url, root)
    async with (
        workers(
            nats_server, redis_server, root, bus, state, checkpoint, envs, {"w-ref": REF_MODEL}
        ) as ws,
        running_router(settings) as router,
        httpx.AsyncClient(base_url=router.url, timeout=WAIT_S) as http,
    ):
        want = await solos(bus, keep_bus + keep_http + later)
        engine = ws.engine("w-busy")
        running = ws["w-busy"].running
        reads = {r.request_id: await start(bus, r, "w-busy") for r in [*keep_bus, closing_req]}
        http_keep = [asyncio.create_task(sse(http, body_of(r))) for r in keep_http]
        http_drop = [asyncio.create_task(sse(http, body_of(r), leave_after=3)) for r in dropping]
        await eventually(lambda: engine.in_use == 7, "seven generations running")
        closing = reads["b-close"]
        cancelled = await start(bus, cancelled_req, "w-busy")
        assert engine.in_use == 8
        with pytest.raises(OverloadedError):
            await start(bus, gen("ninth", 5, 8), "w-busy")
        await wait_tokens(closing, 3)

        # The clients leave: a bus stream closed, a reader cancelled, two HTTP streams closed.
        assert closing.reader is not None
        assert closing.task is not None
        assert cancelled.task is not None
        closing.task.cancel()  # stop reading, then close: the close is what the worker sees
        await closing.reader.aclose()
        assert not cancelled.chunks, "the long prompt should still be prefilling"
        cancelled.task.cancel()
        dropped = [rid for rid, _, _ in await asyncio.gather(*http_drop)]
        await eventually(lambda: engine.in_use == 4, "the leavers' places given back")
        await eventually(lambda: engine.sequences == 4, "the leavers' KV freed")
        await eventually(lambda: len(running) == 4, "only the staying generations left")
        assert {"b-keep-g", "b-keep-s"} <= running.keys()
        assert not {"b-close", "b-cancel", *dropped} & running.keys()
        assert ws.in_flight("w-busy") == 4
        for rid in dropped:
            ev = await completed.wait_for(of_request(rid))
            assert ev.status == "cancelled", ev

        # Taken at once: the staying generations are still far from their end.
        assert not any(reads[r.request_id].finished for r in keep_bus)
        new = {r.request_id: await start(bus, r, "w-busy") for r in later}
        assert engine.in_use == 6
        for read in [*new.values(), *(reads[r.request_id] for r in keep_bus)]:
            await read.done()
        texts = await asyncio.gather(*http_keep)
        await ws.idle("w-busy")

    for read in [*new.values(), *(reads[r.request_id] for r in keep_bus)]:
        assert_same(read, want[read.req.request_id])
    for req, (_, text, finish) in zip(keep_http, texts, strict=True):
        assert (text, finish) == (want[req.request_id].text, "length"), req.request_id
    assert 3 <= len(closing.ids) < LONG_N


def of_request(rid: str) -> Callable[[Any], bool]:
    return lambda event: bool(event.request_id == rid)


# --- a burst beyond the KV budget ----------------------------------------------------------------

BURST = 10
BURST_PROMPT, BURST_N = 1250, 24  # 1274 KV tokens each: three fit the 3900-token budget
# The tiny model's keys and values take 1 KiB a token (2 layers x 2 x 2 heads x 32 x 4 bytes).
KV_BUDGET_TOKENS = 3900


async def test_a_burst_beyond_the_kv_budget_waits_its_turn_in_arrival_order(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, checkpoint
) -> None:
    """With a KV budget for three such requests, ten sent at once all complete, each equal to
    its solo run: three run, the rest wait and start first come, first served (first tokens
    in arrival order); one more that leaves while waiting gives its place back unrun. A
    request that could never fit is refused with a bad request naming the limit."""
    kv_gb = str(KV_BUDGET_TOKENS * 1024 / 1e9)
    envs = {"w-kv": {"kv_cache_gb": kv_gb, "decode_delay": "0.01"}, "w-ref": {}}
    burst = [
        gen(f"k{i}", BURST_PROMPT, BURST_N, seed=None if i % 2 else i, salt=50 + i)
        for i in range(BURST)
    ]
    async with workers(
        nats_server, redis_server, root, bus, state, checkpoint, envs, {"w-ref": REF_MODEL}
    ) as ws:
        want = await solos(bus, burst)
        engine = ws.engine("w-kv")
        assert engine.limits.kv_tokens == KV_BUDGET_TOKENS
        seen: list[tuple[int, int]] = []  # (admitted, waiting) as the engine says

        async def watch() -> None:
            while True:
                seen.append((engine.sequences, engine.waiting))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        # Each taken before the next is sent; one more client, fifth in line, leaves while
        # it waits: its place in the queue goes, it never runs.
        reads = [await start(bus, r, "w-kv") for r in burst[:4]]
        leaver = await start(bus, gen("k-leave", BURST_PROMPT, BURST_N, salt=49), "w-kv")
        reads += [await start(bus, r, "w-kv") for r in burst[4:]]
        assert leaver.task is not None
        leaver.task.cancel()
        await eventually(lambda: engine.in_use == BURST, "the waiting leaver's place given back")
        assert engine.sequences == 3
        for read in reads:
            await read.done()
        watcher.cancel()

        with pytest.raises(BadRequestError) as refused:
            await start(bus, gen("huge", 3000, 1000), "w-kv")  # within the context (4096)
        await ws.idle("w-kv")

    for read in reads:
        assert len(read.ids) == BURST_N, read.req.request_id
        assert_same(read, want[read.req.request_id])
    firsts = [read.at[0] for read in reads]
    assert firsts == sorted(firsts), "first tokens came out of arrival order"
    assert max(a for a, _ in seen) == 3  # never more than the budget holds
    assert max(w for _, w in seen) >= BURST - 3  # the rest waited
    assert leaver.chunks == []
    waited = [read.chunks[0].queue_s or 0.0 for read in reads]
    assert all(q > 0.05 for q in waited[3:]), waited
    # Prompt + max_tokens within the model's context but beyond the KV budget: refused at
    # once, naming the budget.
    assert "4000 exceeds this worker's KV cache budget of 3900 tokens" in str(refused.value)
