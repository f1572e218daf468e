"""Logprobs and the worker's queue wait through the router, against real NATS and Redis with a
stand-in worker that reports them as the engine does; parsed by the openai client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from libs.protocol import Bus
from libs.protocol.bus import Stream
from libs.protocol.events import RequestCompletedEvent
from libs.protocol.messages import (
    GenerateReply,
    GenerateRequest,
    TokenChunk,
    TokenLogprob,
    TopLogprob,
)

from .router_stubs import MODEL, PIECES, EventLog, RunningRouter, StubWorker

pytestmark = pytest.mark.integration

WORKER_QUEUE_S = 0.25


def logprob(token_id: int, token: str, alternatives: int) -> TokenLogprob:
    top = [
        TopLogprob(token_id=token_id + 50 * k, token=f"{token}~{k}", logprob=-k) for k in range(4)
    ]
    return TokenLogprob(token_id=token_id, token=token, logprob=-0.5, top=top[:alternatives])


class LogprobWorker(StubWorker):
    """The stand-in worker, with each token's logprob when asked and its queue wait."""

    async def generate(self, req: GenerateRequest) -> Stream[GenerateReply, TokenChunk]:
        stream = await super().generate(req)

        async def chunks() -> AsyncIterator[TokenChunk]:
            first = True
            async for chunk in stream.chunks:
                update: dict[str, object] = {"queue_s": WORKER_QUEUE_S if first else None}
                if req.params.logprobs:
                    update["logprobs"] = [
                        logprob(t, chunk.text, req.params.top_logprobs) for t in chunk.token_ids
                    ]
                first = False
                yield chunk.model_copy(update=update)

        return Stream(ack=stream.ack, chunks=chunks())


@pytest.fixture
async def worker(bus: Bus) -> StubWorker:
    return await LogprobWorker(bus).serve()


@pytest.fixture
async def client(router: RunningRouter) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=router.v1, api_key="unused", max_retries=0, timeout=20
    ) as c:
        yield c


async def test_chat_logprobs_whole_and_streamed(
    warm: StubWorker, client: openai.AsyncOpenAI
) -> None:
    whole = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=2
    )
    assert warm.requests[-1].params.logprobs
    assert warm.requests[-1].params.top_logprobs == 2
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None
    content = logprobs.content
    assert content is not None
    assert [t.token for t in content] == PIECES
    assert [a.token for a in content[0].top_logprobs] == ["Hello~0", "Hello~1"]
    assert content[2].bytes == list(b" world")

    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], logprobs=True, stream=True
    )
    tokens = [
        [t.token for t in c.choices[0].logprobs.content or ()]
        async for c in stream
        if c.choices and c.choices[0].logprobs is not None
    ]
    assert tokens == [[p] for p in PIECES]


async def test_completion_logprobs_whole_and_streamed(
    warm: StubWorker, client: openai.AsyncOpenAI
) -> None:
    whole = await client.completions.create(model=MODEL, prompt="x", logprobs=1)
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == PIECES
    assert logprobs.text_offset == [0, 5, 6, 12]
    assert logprobs.top_logprobs is not None
    assert logprobs.top_logprobs[0] == {"Hello~0": 0.0, "Hello": -0.5}

    stream = await client.completions.create(model=MODEL, prompt="x", logprobs=0, stream=True)
    offsets = [c.choices[0].logprobs.text_offset async for c in stream if c.choices[0].logprobs]
    assert offsets == [[0], [5], [6], [12]]


async def test_logprobs_stay_null_unless_asked_for(
    warm: StubWorker, client: openai.AsyncOpenAI
) -> None:
    chat = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].logprobs is None
    completion = await client.completions.create(model=MODEL, prompt="x")
    assert completion.choices[0].logprobs is None
    assert warm.requests[-1].params.logprobs is False


async def test_the_workers_queue_wait_counts_in_the_requests_queue_time(
    warm: StubWorker, client: openai.AsyncOpenAI, bus: Bus
) -> None:
    events = await EventLog().watch(bus, "request.completed", RequestCompletedEvent)
    resp = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    done = await events.wait_for(lambda e: e.request_id == resp.id)
    assert WORKER_QUEUE_S <= done.queue_s < WORKER_QUEUE_S + 1.0
