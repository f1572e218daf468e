"""The worker service against real NATS and Redis, with a stand-in storage responder on the bus:
load, ready, streamed generation, slots, failures, unload."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from libs.cluster import ClusterState
from libs.protocol import Bus, route
from libs.protocol.endpoints import STORAGE_ENSURE, WORKER_GENERATE, WORKER_LOAD, WORKER_UNLOAD
from libs.protocol.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    OverloadedError,
    UnavailableError,
)
from libs.protocol.events import EVENT_TYPES, Event
from libs.protocol.messages import (
    ChatMessage,
    EnsureReply,
    EnsureRequest,
    GenerateRequest,
    LoadRequest,
    SamplingParams,
    TokenChunk,
    UnloadReply,
    UnloadRequest,
)
from libs.protocol.state import InstanceRecord
from services.worker.app import WorkerService
from services.worker.settings import WorkerSettings

pytestmark = pytest.mark.integration

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NODE, WORKER, MODEL = "n0", "w0", "tiny"
PROMPT = [904, 594, 330, 14, 394, 277, 318]
Ensure = Callable[[EnsureRequest], Awaitable[EnsureReply]]


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> tuple[Any, Any]:
    """(model, tokenizer) loaded directly, to compare the worker's output with."""
    from transformers import AutoTokenizer

    from libs.loader import load_model

    return load_model(checkpoint), AutoTokenizer.from_pretrained(checkpoint)


class Events:
    """Every monitoring event of this test's root, as typed events."""

    def __init__(self) -> None:
        self.seen: list[Event] = []
        self._changed = asyncio.Event()

    async def start(self, bus: Bus) -> None:
        async def on_msg(msg: Any) -> None:
            data = json.loads(msg.data)
            self.seen.append(EVENT_TYPES[data["kind"]].model_validate_json(msg.data))
            self._changed.set()

        await bus.nc.subscribe(bus.subjects.all_events, cb=on_msg)
        await bus.nc.flush()

    def of(self, kind: str, instance_id: str) -> list[Any]:
        return [
            e for e in self.seen if e.kind == kind and getattr(e, "instance_id", "") == instance_id
        ]

    async def wait(self, kind: str, instance_id: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (found := self.of(kind, instance_id)):
            self._changed.clear()
            left = deadline - time.monotonic()
            assert left > 0, f"no {kind} event for {instance_id}; saw {[e.kind for e in self.seen]}"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return found[0]


@pytest.fixture
async def events(bus: Bus) -> Events:
    ev = Events()
    await ev.start(bus)
    return ev


def ensure_from(path: Path, *, delay: float = 0.0) -> Ensure:
    async def ensure(req: EnsureRequest) -> EnsureReply:
        await asyncio.sleep(delay)
        return EnsureReply(
            model=req.model,
            path=str(path),
            tier="dram",
            source_tier="ssd",
            bytes=1234,
            seconds=0.01,
        )

    return ensure


@asynccontextmanager
async def running_worker(
    nats_url: str, redis_url: str, root: str, bus: Bus, ensure: Ensure, **env: str
) -> AsyncIterator[WorkerService]:
    """A worker plus a stand-in storage service answering STORAGE_ENSURE for its node."""
    await bus.serve("storage", [route(STORAGE_ENSURE, ensure, node_id=NODE)])
    settings = WorkerSettings.from_env(
        {
            "SLLM_NATS_URL": nats_url,
            "SLLM_REDIS_URL": redis_url,
            "SLLM_ROOT": root,
            "SLLM_INSTANCE_ID": WORKER,
            "SLLM_NODE_ID": NODE,
            "SLLM_HEARTBEAT_INTERVAL": "0.2",
            "SLLM_HEARTBEAT_TTL": "2",
            **{f"SLLM_{k.upper()}": v for k, v in env.items()},
        }
    )
    svc = WorkerService(settings)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop("test over")


async def place(bus: Bus, state: ClusterState, instance_id: str) -> None:
    """What the scheduler does: record the instance, reserve the worker, ask it to load."""
    await state.put_instance(
        InstanceRecord(
            instance_id=instance_id,
            model=MODEL,
            worker_id=WORKER,
            node_id=NODE,
            status="loading",
            created_at=time.time(),
        )
    )
    assert await state.reserve_worker(WORKER, instance_id)
    reply = await bus.request(
        WORKER_LOAD,
        LoadRequest(instance_id=instance_id, model=MODEL, checkpoint_uri="file:///models/tiny"),
        worker_id=WORKER,
        timeout=10,
    )
    assert (reply.instance_id, reply.worker_id) == (instance_id, WORKER)


async def wait_status(state: ClusterState, instance_id: str, status: str | None) -> None:
    deadline = time.monotonic() + 20
    while True:
        rec = await state.get_instance(instance_id)
        if (rec.status if rec else None) == status:
            return
        assert time.monotonic() < deadline, f"{instance_id}: {rec} never became {status}"
        await asyncio.sleep(0.02)


async def worker_holds(state: ClusterState) -> str:
    rec = await state.get_worker(WORKER)
    assert rec is not None
    return rec.instance_id


async def wait_released(state: ClusterState) -> None:
    """The worker frees itself just after it deletes its instance's record (two writes)."""
    deadline = time.monotonic() + 10
    while (held := await worker_holds(state)) != "":
        assert time.monotonic() < deadline, f"the worker still holds {held}"
        await asyncio.sleep(0.02)


async def unload(bus: Bus, instance_id: str) -> UnloadReply:
    # Generous: an unload waits for the forward pass in progress and a full gc.collect().
    return await bus.request(
        WORKER_UNLOAD, UnloadRequest(instance_id=instance_id), worker_id=WORKER, timeout=20
    )


def gen(max_tokens: int = 12, **kw: Any) -> GenerateRequest:
    kw.setdefault("prompt_token_ids", PROMPT)
    return GenerateRequest(
        request_id="r1",
        model=MODEL,
        params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
        **kw,
    )


async def collect(bus: Bus, req: GenerateRequest) -> tuple[Any, list[TokenChunk]]:
    async with await bus.stream(WORKER_GENERATE, req, worker_id=WORKER, timeout=20) as reader:
        return reader.ack, [c async for c in reader]


async def test_worker_loads_streams_and_unloads(
    nats_server,
    redis_server,
    root,
    bus: Bus,
    state: ClusterState,
    events: Events,
    checkpoint,
    reference,
) -> None:
    model, tok = reference
    async with running_worker(
        nats_server.url, redis_server.url, root, bus, ensure_from(checkpoint)
    ):
        await place(bus, state, "i1")
        ready = await events.wait("instance.ready", "i1")
        await wait_status(state, "i1", "ready")
        rec = await state.get_instance("i1")
        assert rec is not None
        assert rec.source_tier == "ssd"  # what the storage service said the bytes came from
        assert rec.ready_at is not None
        assert rec.load_s is not None
        assert ready.load_s == pytest.approx(rec.load_s)
        assert events.of("instance.starting", "i1")
        phases = {e.phase: e for e in events.of("load.phase", "i1")}
        assert {"ensure", "read", "build", "tokenizer"} <= phases.keys()
        assert (phases["ensure"].bytes, phases["ensure"].tier) == (1234, "ssd")
        assert phases["read"].bytes > 0

        # Greedy generation equals transformers' generate on the same weights, token for token.
        ack, chunks = await collect(bus, gen(max_tokens=12))
        assert (ack.instance_id, ack.worker_id, ack.prompt_token_ids) == ("i1", WORKER, PROMPT)
        ids = [i for c in chunks for i in c.token_ids]
        with torch.inference_mode():
            want = model.generate(torch.tensor([PROMPT]), do_sample=False, max_new_tokens=12)
        assert ids == want[0, len(PROMPT) :].tolist()
        last = chunks[-1]
        assert last.finish_reason == ("stop" if ids[-1] == 2 else "length")
        assert last.usage is not None
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (len(PROMPT), len(ids))
        assert chunks[0].prefill_s is not None
        assert last.decode_s is not None
        text = "".join(c.text for c in chunks)
        assert text == tok.decode([i for i in ids if i != 2], skip_special_tokens=True)

        # Chat messages go through the chat template.
        msgs = [ChatMessage(role="user", content="Hello there")]
        ack, chunks = await collect(bus, gen(max_tokens=4, prompt_token_ids=None, messages=msgs))
        rendered = tok.apply_chat_template(
            [m.model_dump() for m in msgs], add_generation_prompt=True, tokenize=False
        )
        assert ack.prompt_token_ids == tok.encode(rendered, add_special_tokens=False)
        assert chunks[-1].finish_reason is not None

        reply = await unload(bus, "i1")
        assert reply.freed
        stopped = await events.wait("instance.stopped", "i1")
        assert stopped.reason == "unloaded"
        assert await state.get_instance("i1") is None
        assert await state.instances(MODEL) == []
        assert await worker_holds(state) == ""
        with pytest.raises(NotFoundError):
            await collect(bus, gen())
        with pytest.raises(NotFoundError):
            await unload(bus, "i1")


async def test_slots_are_bounded_and_a_departed_consumer_frees_its_slot(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, events: Events, checkpoint
) -> None:
    async with running_worker(
        nats_server.url,
        redis_server.url,
        root,
        bus,
        ensure_from(checkpoint),
        max_batch="1",
        max_queue="0",
    ):
        await place(bus, state, "i2")
        await wait_status(state, "i2", "ready")
        reader = await bus.stream(
            WORKER_GENERATE, gen(max_tokens=3000), worker_id=WORKER, timeout=20
        )
        async with reader:
            first = await reader.__anext__()
            assert first.token_ids
            with pytest.raises(OverloadedError):
                await collect(bus, gen())
        # The consumer left: the worker must stop that generation and take new work.
        deadline = time.monotonic() + 10
        while True:
            try:
                _, chunks = await collect(bus, gen(max_tokens=5))
                break
            except OverloadedError:
                assert time.monotonic() < deadline, "the slot was never freed"
                await asyncio.sleep(0.05)
        assert chunks[-1].finish_reason is not None


async def test_bad_requests_get_typed_errors(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, checkpoint
) -> None:
    async with running_worker(
        nats_server.url, redis_server.url, root, bus, ensure_from(checkpoint)
    ):
        with pytest.raises(ConflictError, match="reserved"):  # the scheduler did not reserve it
            await bus.request(
                WORKER_LOAD,
                LoadRequest(instance_id="x", model=MODEL, checkpoint_uri="file:///m"),
                worker_id=WORKER,
                timeout=10,
            )
        await place(bus, state, "i3")
        await wait_status(state, "i3", "ready")
        with pytest.raises(ConflictError, match="already hosts"):
            await bus.request(
                WORKER_LOAD,
                LoadRequest(instance_id="other", model=MODEL, checkpoint_uri="file:///m"),
                worker_id=WORKER,
                timeout=10,
            )
        with pytest.raises(BadRequestError, match=r"max_tokens 100000 .* context of 4096"):
            await collect(bus, gen(max_tokens=100_000))
        with pytest.raises(BadRequestError, match="outside the model's vocabulary"):
            await collect(bus, gen(prompt_token_ids=[5, 10**6]))
        with pytest.raises(NotFoundError, match="no instance of 'other-model'"):
            await collect(bus, gen().model_copy(update={"model": "other-model"}))


async def test_resumed_generation_continues_the_same_tokens(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, checkpoint
) -> None:
    async with running_worker(
        nats_server.url, redis_server.url, root, bus, ensure_from(checkpoint)
    ):
        await place(bus, state, "i4")
        await wait_status(state, "i4", "ready")
        params = SamplingParams(max_tokens=20, temperature=0.8, top_p=0.9, seed=1234)
        req = GenerateRequest(request_id="r", model=MODEL, prompt="Once upon", params=params)
        _, full = await collect(bus, req)
        ids = [i for c in full for i in c.token_ids]
        _, rest = await collect(bus, req.model_copy(update={"generated_token_ids": ids[:8]}))
        assert ids[:8] + [i for c in rest for i in c.token_ids] == ids
        assert rest[-1].usage is not None
        assert rest[-1].usage.completion_tokens == len(ids)


@pytest.mark.parametrize("failure", ["storage", "checkpoint"])
async def test_a_failed_load_cleans_up(
    nats_server,
    redis_server,
    root,
    bus: Bus,
    state: ClusterState,
    events: Events,
    tmp_path,
    failure,
) -> None:
    async def ensure(req: EnsureRequest) -> EnsureReply:
        if failure == "storage":
            raise NotFoundError(f"no checkpoint at {req.checkpoint_uri}")
        return EnsureReply(
            model=req.model, path=str(tmp_path), tier="dram", source_tier="dram", bytes=0, seconds=0
        )

    async with running_worker(nats_server.url, redis_server.url, root, bus, ensure):
        await place(bus, state, "i5")
        failed = await events.wait("instance.failed", "i5")
        assert (
            "no checkpoint at file:///models/tiny" if failure == "storage" else "Checkpoint"
        ) in failed.error
        await wait_status(state, "i5", None)
        await wait_released(state)
        with pytest.raises(NotFoundError):
            await collect(bus, gen())
        # The worker is free for the next placement.
        await state.put_instance(
            InstanceRecord(
                instance_id="i6",
                model=MODEL,
                worker_id=WORKER,
                node_id=NODE,
                status="loading",
                created_at=time.time(),
            )
        )
        assert await state.reserve_worker(WORKER, "i6")


async def test_unload_during_a_load_and_during_a_generation(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, events: Events, checkpoint
) -> None:
    async with running_worker(
        nats_server.url, redis_server.url, root, bus, ensure_from(checkpoint, delay=1.0)
    ):
        await place(bus, state, "i7")
        with pytest.raises(UnavailableError, match="loading"):
            await collect(bus, gen())
        reply = await unload(bus, "i7")
        assert reply.freed
        assert "unloaded" in (await events.wait("instance.failed", "i7")).error
        await events.wait("instance.stopped", "i7")
        assert await state.get_instance("i7") is None
        assert await worker_holds(state) == ""

        await place(bus, state, "i8")
        await wait_status(state, "i8", "ready")
        reader = await bus.stream(
            WORKER_GENERATE, gen(max_tokens=3000), worker_id=WORKER, timeout=20
        )
        async with reader:
            await reader.__anext__()
            await unload(bus, "i8")
            with pytest.raises(UnavailableError, match="instance unloaded"):
                async for _ in reader:
                    pass
        assert await worker_holds(state) == ""


async def test_stopping_the_worker_unloads_its_instance(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, events: Events, checkpoint
) -> None:
    async with running_worker(
        nats_server.url, redis_server.url, root, bus, ensure_from(checkpoint)
    ):
        await place(bus, state, "i9")
        await wait_status(state, "i9", "ready")
    stopped = await events.wait("instance.stopped", "i9")
    assert stopped.reason == "worker stopping"
    assert await state.get_instance("i9") is None
    assert await state.get_worker(WORKER) is None


async def test_idle_unload_waits_for_requests_in_flight_and_their_keep_alive(
    nats_server, redis_server, root, bus: Bus, state: ClusterState, events: Events, checkpoint
) -> None:
    async with running_worker(
        nats_server.url, redis_server.url, root, bus, ensure_from(checkpoint)
    ):

        async def ask(iid: str, **kw: Any) -> UnloadReply:
            req = UnloadRequest(instance_id=iid, only_if_idle=True, **kw)
            return await bus.request(WORKER_UNLOAD, req, worker_id=WORKER, timeout=20)

        async def idle_after(iid: str, requests: int) -> None:
            deadline = time.monotonic() + 20
            while not any(e.requests >= requests for e in events.of("instance.idle", iid)):
                assert time.monotonic() < deadline, f"{iid} never idle after {requests}"
                await asyncio.sleep(0.01)

        await place(bus, state, "i10")
        await wait_status(state, "i10", "ready")
        reader = await bus.stream(
            WORKER_GENERATE, gen(max_tokens=3000, keep_alive_s=30.0), worker_id=WORKER, timeout=20
        )
        async with reader:
            await reader.__anext__()
            busy = await ask("i10", reason="idle")
            assert (busy.unloaded, busy.in_flight, busy.retry_after_s) == (False, 1, None)
        idle = await events.wait("instance.idle", "i10")
        assert idle.requests == 1
        assert idle.keep_until > time.time() + 20
        kept = await ask("i10", reason="idle")
        assert not kept.unloaded
        assert kept.retry_after_s is not None
        assert 20 < kept.retry_after_s <= 30
        # keep_alive 0 does not cut another request's keep-alive short; negative: indefinitely.
        await collect(bus, gen(keep_alive_s=0.0))
        await idle_after("i10", 2)
        assert not (await ask("i10")).unloaded
        await collect(bus, gen(keep_alive_s=-1.0))
        await idle_after("i10", 3)
        forever = await ask("i10")
        assert (forever.unloaded, forever.retry_after_s, forever.requests) == (False, None, 3)
        # Preemption ignores keep-alive (but, like every idle unload, not requests in flight).
        pre = await ask("i10", ignore_keep_alive=True, reason="preempted")
        assert pre.unloaded
        assert (await events.wait("instance.stopped", "i10")).reason == "preempted"
        assert await worker_holds(state) == ""

        # Requests that ask for no keep-alive leave the instance free to go at once.
        await place(bus, state, "i11")
        await wait_status(state, "i11", "ready")
        await collect(bus, gen(keep_alive_s=0.0))
        await idle_after("i11", 1)
        assert (await ask("i11", reason="idle")).unloaded
        assert (await events.wait("instance.stopped", "i11")).reason == "idle"
