"""Failover through the router: a worker dies mid-stream and the generation goes on elsewhere.

Real NATS and Redis; stand-in workers, each on its own NATS connection so that one can die as
a killed process does (its connection closes, its Redis records stay until someone notices).
Their tokens are a pure function of (seed, absolute position), as the real worker's sampling
is, so the whole answer of a resumed generation is known in advance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.common.embedded import EmbeddedNats, EmbeddedRedis
from libs.protocol import Bus, Keys, Stream, route
from libs.protocol.endpoints import SERVICE_INFO, WORKER_GENERATE
from libs.protocol.errors import InternalError, NotFoundError
from libs.protocol.events import (
    InstanceStoppedEvent,
    MigrationCommittedEvent,
    RequestCompletedEvent,
    RequestFailoverEvent,
)
from libs.protocol.messages import (
    GenerateReply,
    GenerateRequest,
    InfoRequest,
    ServiceInfoReply,
    TokenChunk,
    Usage,
)

from .router_stubs import (
    MODEL,
    EventLog,
    RunningRouter,
    StubScheduler,
    deploy,
    ready_instance,
    router_settings,
    running_router,
)

pytestmark = pytest.mark.integration

PROMPT = "Once upon a time"
WAIT_S = 30.0


def token_at(seed: int, position: int) -> int:
    return zlib.crc32(f"{seed}:{position}".encode()) % 1000


def piece(token: int) -> str:
    return f" t{token}"


def prompt_ids(text: str) -> list[int]:
    return [ord(c) % 256 for c in text]


def expected(seed: int, prompt: list[int], max_tokens: int) -> str:
    return "".join(piece(token_at(seed, len(prompt) + i)) for i in range(max_tokens))


@dataclass
class TokenWorker:
    """A worker stand-in: registered in Redis with a heartbeat key, answers ``info``, and
    generates ``token_at(seed, position)``, continuing from ``generated_token_ids`` as the real
    worker does. After ``die_after`` chunks it falls silent and its connection closes."""

    nats_url: str
    root: str
    state: ClusterState
    worker_id: str
    instance_id: str = ""  # the instance it holds from the start ("" : free)
    die_after: int = -1
    fail_after: int = -1  # after this many chunks, end the stream with the worker's own error
    delay: float = 0.01
    notify_at: int = -1  # set `reached` once this many chunks are out
    requests: list[GenerateRequest] = field(default_factory=list)
    sent: int = 0
    dead: asyncio.Event = field(default_factory=asyncio.Event)
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    bus: Bus | None = None
    _killer: asyncio.Task[None] | None = None

    async def start(self) -> TokenWorker:
        self.bus = await Bus.connect(self.nats_url, name=self.worker_id, root=self.root)
        await self.bus.serve(
            "worker",
            [
                route(SERVICE_INFO, self.info, kind="worker", instance_id=self.worker_id),
                route(WORKER_GENERATE, self.generate, worker_id=self.worker_id),
            ],
        )
        await self.state.register_worker(self.worker_id, "node-0", "cpu")  # comes back free
        if self.instance_id:
            assert await self.state.reserve_worker(self.worker_id, self.instance_id)
        alive = self.state.keys.alive("worker", self.worker_id)
        await self.state.redis.set(alive, "{}", px=60_000)
        return self

    async def info(self, _: InfoRequest) -> ServiceInfoReply:
        return ServiceInfoReply(
            kind="worker", instance_id=self.worker_id, version="test", started_at=0.0
        )

    async def kill(self) -> None:
        """Die as ``kill -9`` would: the connection goes, the Redis records stay."""
        if self.bus is not None:
            bus, self.bus = self.bus, None
            await bus.close()

    async def _hosted(self, model: str) -> str:
        if self.instance_id:
            return self.instance_id
        # An instance the stand-in scheduler placed here: hold it, as a loaded worker would.
        for rec in await self.state.instances(model):
            if rec.worker_id == self.worker_id and rec.status == "ready":
                await self.state.redis.hset(
                    self.state.keys.worker(self.worker_id), "instance_id", rec.instance_id
                )
                return rec.instance_id
        raise NotFoundError(f"{self.worker_id} hosts no instance of {model!r}")

    async def generate(self, req: GenerateRequest) -> Stream[GenerateReply, TokenChunk]:
        instance_id = await self._hosted(req.model)
        self.requests.append(req)
        assert req.params.seed is not None, "the router gives every request a seed"
        seed = req.params.seed
        prompt = list(req.prompt_token_ids or prompt_ids(req.prompt or ""))
        prior, total = len(req.generated_token_ids), req.params.max_tokens

        async def chunks() -> AsyncIterator[TokenChunk]:
            for i in range(prior, total):
                if self.sent == self.die_after:
                    self.dead.set()
                    self._killer = asyncio.create_task(self.kill())
                    await asyncio.Event().wait()  # silent until the connection is gone
                if self.sent == self.fail_after:
                    raise InternalError("device lost")
                await asyncio.sleep(self.delay)
                token, last = token_at(seed, len(prompt) + i), i == total - 1
                self.sent += 1
                if self.sent == self.notify_at:
                    self.reached.set()
                yield TokenChunk(
                    token_ids=[token],
                    text=piece(token),
                    prefill_s=0.01 if i == prior else None,
                    finish_reason="length" if last else None,
                    usage=Usage(prompt_tokens=len(prompt), completion_tokens=total)
                    if last
                    else None,
                    decode_s=0.5 if last else None,
                )

        ack = GenerateReply(
            request_id=req.request_id,
            worker_id=self.worker_id,
            instance_id=instance_id,
            prompt_token_ids=prompt,
        )
        return Stream(ack=ack, chunks=chunks())


@dataclass
class Setup:
    state: ClusterState
    bus: Bus
    scheduler: StubScheduler
    nats_url: str
    root: str
    workers: list[TokenWorker] = field(default_factory=list)

    async def worker(self, worker_id: str, instance_id: str = "", **kw: Any) -> TokenWorker:
        if instance_id:
            await ready_instance(self.state, instance_id=instance_id, worker_id=worker_id)
        w = await TokenWorker(
            self.nats_url, self.root, self.state, worker_id, instance_id, **kw
        ).start()
        self.workers.append(w)
        return w


@pytest.fixture
async def setup(
    nats_server: EmbeddedNats, redis: aioredis.Redis, keys: Keys, bus: Bus, root: str
) -> AsyncIterator[Setup]:
    state = ClusterState(redis, keys)
    scheduler = await StubScheduler(bus, state, worker_ids=["wb"]).serve()
    await deploy(state)
    s = Setup(state, bus, scheduler, nats_server.url, root)
    try:
        yield s
    finally:
        for w in s.workers:
            await w.kill()


@contextlib.asynccontextmanager
async def router(
    nats_server: EmbeddedNats, redis_server: EmbeddedRedis, root: str, **env: str
) -> AsyncIterator[RunningRouter]:
    # A long idle timeout: what ends a dead worker's stream here is the liveness check.
    env = {"SLLM_STREAM_IDLE_TIMEOUT": "60", "SLLM_START_TIMEOUT": "20", **env}
    async with running_router(router_settings(nats_server.url, redis_server.url, root, **env)) as r:
        yield r


def client(r: RunningRouter) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=r.v1, api_key="unused", max_retries=0, timeout=WAIT_S)


async def stream_text(c: openai.AsyncOpenAI, **kw: Any) -> tuple[str, Any, str | None]:
    stream = await c.completions.create(
        model=MODEL, stream=True, stream_options={"include_usage": True}, **kw
    )
    parts, usage, finish = [], None, None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            parts.append(choice.text)
            finish = choice.finish_reason or finish
    return "".join(parts), usage, finish


async def watch(bus: Bus) -> tuple[EventLog, EventLog]:
    failovers = await EventLog().watch(bus, "request.failover", RequestFailoverEvent)
    completed = await EventLog().watch(bus, "request.completed", RequestCompletedEvent)
    return failovers, completed


# --- resuming ------------------------------------------------------------------------------


async def test_streamed_generation_resumes_on_another_instance_when_its_worker_dies(
    setup: Setup, nats_server: EmbeddedNats, redis_server: EmbeddedRedis, root: str
) -> None:
    a = await setup.worker("wa", "i-a", die_after=5)  # "i-a" < "i-b": chosen first
    b = await setup.worker("wb", "i-b")
    failovers, completed = await watch(setup.bus)
    async with router(nats_server, redis_server, root) as r, client(r) as c:
        text, usage, finish = await stream_text(c, prompt=PROMPT, max_tokens=40, temperature=0)

    (first,) = a.requests
    (resumed,) = b.requests
    seed = first.params.seed
    assert seed is not None
    assert text == expected(seed, prompt_ids(PROMPT), 40)  # one unbroken, identical stream
    assert finish == "length"
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(PROMPT), 40)
    # The resume: the prompt as token ids, the 5 tokens sent, the same sampling and seed.
    assert resumed.prompt_token_ids == prompt_ids(PROMPT)
    assert resumed.prompt is None
    assert resumed.generated_token_ids == [token_at(seed, len(PROMPT) + i) for i in range(5)]
    assert resumed.params == first.params
    assert resumed.inbox != first.inbox  # a fresh inbox: the old producer can never interleave
    assert resumed.start_seq > 0
    ev = await failovers.wait_for(lambda e: True)
    assert (ev.from_instance_id, ev.to_instance_id, ev.to_worker_id) == ("i-a", "i-b", "wb")
    assert (ev.tokens, ev.attempt) == (5, 1)
    assert "no responders" in ev.reason  # found by the liveness check, not a timeout
    done = await completed.wait_for(lambda e: True)
    assert (done.status, done.failovers, done.instance_id) == ("ok", 1, "i-b")
    assert (done.prompt_tokens, done.completion_tokens) == (len(PROMPT), 40)


async def test_whole_seeded_sampled_answer_is_the_uninterrupted_one(
    setup: Setup, nats_server: EmbeddedNats, redis_server: EmbeddedRedis, root: str
) -> None:
    await setup.worker("wa", "i-a", die_after=12)
    b = await setup.worker("wb", "i-b")
    failovers, completed = await watch(setup.bus)
    async with router(nats_server, redis_server, root) as r, client(r) as c:
        resp = await c.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=30, temperature=0.9, top_p=0.8, seed=1234
        )
    assert resp.choices[0].text == expected(1234, prompt_ids(PROMPT), 30)
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (len(PROMPT), 30)
    (resumed,) = b.requests
    assert (resumed.params.seed, resumed.params.temperature, resumed.params.top_p) == (
        1234,
        0.9,
        0.8,
    )
    assert len(resumed.generated_token_ids) == 12
    assert (await failovers.wait_for(lambda e: True)).tokens == 12
    assert (await completed.wait_for(lambda e: True)).failovers == 1


async def test_restarted_worker_instance_is_forgotten_and_the_stream_goes_on(
    setup: Setup, nats_server: EmbeddedNats, redis_server: EmbeddedRedis, root: str
) -> None:
    a = await setup.worker("wa", "i-a", die_after=3)
    await setup.worker("wb", "i-b")
    stopped = await EventLog().watch(setup.bus, "instance.stopped", InstanceStoppedEvent)
    failovers, _ = await watch(setup.bus)

    async def restart() -> None:
        await asyncio.wait_for(a.dead.wait(), WAIT_S)
        await asyncio.sleep(0.05)
        await a.kill()
        # Back at once under the same id, free: it answers, but no longer holds "i-a".
        await setup.worker("wa")

    async with router(nats_server, redis_server, root) as r, client(r) as c:
        restarting = asyncio.create_task(restart())
        text, _, _ = await stream_text(c, prompt=PROMPT, max_tokens=20, temperature=0)
        await restarting
    (first,) = a.requests
    assert first.params.seed is not None
    assert text == expected(first.params.seed, prompt_ids(PROMPT), 20)
    ev = await failovers.wait_for(lambda e: True)
    assert "no longer holds it" in ev.reason
    # The router forgot the orphaned instance (the scheduler's sweep sees a live worker).
    assert await setup.state.get_instance("i-a") is None
    gone = await stopped.wait_for(lambda e: e.instance_id == "i-a")
    assert gone.source == "router-test"


async def test_without_a_ready_peer_the_generation_waits_for_a_new_instance(
    setup: Setup, nats_server: EmbeddedNats, redis_server: EmbeddedRedis, root: str
) -> None:
    a = await setup.worker("wa", "i-a", die_after=4)
    b = await setup.worker("wb")  # free: the stand-in scheduler places the new instance here
    failovers, completed = await watch(setup.bus)

    async def sweep() -> None:
        await asyncio.wait_for(a.dead.wait(), WAIT_S)
        setup.scheduler.dead_workers.add("wa")  # what the scheduler's sweep will find

    async with router(nats_server, redis_server, root) as r, client(r) as c:
        sweeping = asyncio.create_task(sweep())
        text, usage, _ = await stream_text(c, prompt=PROMPT, max_tokens=16, temperature=0)
        await sweeping
    (first,) = a.requests
    assert first.params.seed is not None
    assert text == expected(first.params.seed, prompt_ids(PROMPT), 16)
    assert usage.completion_tokens == 16
    (resumed,) = b.requests
    assert len(resumed.generated_token_ids) == 4
    ev = await failovers.wait_for(lambda e: True)
    assert ev.to_worker_id == "wb"
    assert ev.to_instance_id != "i-a"
    assert [p.model for p in setup.scheduler.places] == [MODEL]
    done = await completed.wait_for(lambda e: True)
    assert done.load_s > 0  # the wait for the new instance counts as loading


# --- limits --------------------------------------------------------------------------------


@pytest.mark.parametrize(("attempts", "dying"), [(0, 1), (1, 2)])
async def test_failover_off_or_exhausted_ends_the_stream_with_an_error(
    setup: Setup,
    nats_server: EmbeddedNats,
    redis_server: EmbeddedRedis,
    root: str,
    attempts: int,
    dying: int,
) -> None:
    await setup.worker("wa", "i-a", die_after=3)
    await setup.worker("wb", "i-b", die_after=3 if dying == 2 else -1)
    failovers, completed = await watch(setup.bus)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 30, "stream": True}
    env = {"SLLM_FAILOVER_ATTEMPTS": str(attempts)}
    async with (
        router(nats_server, redis_server, root, **env) as r,
        httpx.AsyncClient(base_url=r.url, timeout=WAIT_S) as http,
    ):
        resp = await http.post("/v1/completions", json=body)
    payloads = [x.removeprefix("data: ") for x in resp.text.split("\n\n") if x]
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["code"] == "unavailable"
    assert "no responders" in error["message"]
    text = "".join(json.loads(p)["choices"][0]["text"] for p in payloads[:-2])
    assert text.count(" t") == 3 * dying  # what came before each death was delivered
    assert len(failovers.items) == attempts
    done = await completed.wait_for(lambda e: True)
    assert (done.status, done.failovers) == ("error", attempts)


async def test_the_workers_own_error_is_not_failed_over(
    setup: Setup, nats_server: EmbeddedNats, redis_server: EmbeddedRedis, root: str
) -> None:
    # Only errors meaning "the instance is gone" resume; a worker's own error (the request
    # or the model is at fault) would repeat elsewhere, so it reaches the client as before.
    a = await setup.worker("wa", "i-a", fail_after=2)
    b = await setup.worker("wb", "i-b")
    failovers, completed = await watch(setup.bus)
    async with router(nats_server, redis_server, root) as r, client(r) as c:
        with pytest.raises(openai.APIError, match="device lost"):
            await stream_text(c, prompt=PROMPT, max_tokens=10, temperature=0)
    assert len(a.requests) == 1
    assert b.requests == []
    done = await completed.wait_for(lambda e: True)
    assert (done.status, done.failovers) == ("error", 0)
    assert failovers.items == []


# --- migration -----------------------------------------------------------------------------


async def test_a_migrated_stream_follows_its_new_instance(
    setup: Setup, nats_server: EmbeddedNats, redis_server: EmbeddedRedis, root: str
) -> None:
    # After a live migration the old instance may stop: that must not end (or fail over) the
    # stream that now comes from the destination.
    a = await setup.worker("wa", "i-a", delay=0.05, notify_at=3)
    await ready_instance(setup.state, instance_id="i-b", worker_id="wb")
    failovers, completed = await watch(setup.bus)
    async with router(nats_server, redis_server, root) as r, client(r) as c:

        async def migrate() -> None:
            await asyncio.wait_for(a.reached.wait(), WAIT_S)
            (req,) = a.requests
            await setup.bus.emit(
                MigrationCommittedEvent(
                    migration_id="m-1",
                    request_id=req.request_id,
                    source_instance_id="i-a",
                    source_worker_id="wa",
                    instance_id="i-b",
                    worker_id="wb",
                    inbox=req.inbox,
                    start_seq=3,
                    rounds=1,
                    tokens_recomputed=3,
                )
            )
            await asyncio.sleep(0.2)
            await setup.bus.emit(
                InstanceStoppedEvent(instance_id="i-a", model=MODEL, worker_id="wa", reason="x")
            )

        migrating = asyncio.create_task(migrate())
        text, _, finish = await stream_text(c, prompt=PROMPT, max_tokens=20, temperature=0)
        await migrating
    assert finish == "length"
    assert text.count(" t") == 20
    assert failovers.items == []
    done = await completed.wait_for(lambda e: True)
    assert (done.status, done.instance_id, done.worker_id) == ("ok", "i-b", "wb")
