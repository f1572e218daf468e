"""The engine and stream pieces of live migration, against the tiny demo model: shadow jobs
(prefill, extend, release) continue exactly; a paused job resumes exactly; a paused stream
publishes every token before it is handed over or resumed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from libs.protocol.errors import StreamHandedOver, UnavailableError
from libs.protocol.messages import TokenChunk
from services.worker.batch_policy import Limits
from services.worker.detok import IncrementalDetokenizer
from services.worker.engine import Engine, Failed, Handle, Held, Job, Output, Paused, Token
from services.worker.generation import GenerationStream
from services.worker.sampling import Sampling

pytestmark = pytest.mark.unit

PROMPT = [1, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86]
GREEDY = Sampling(temperature=0.0)
SEEDED = Sampling(temperature=0.9, top_p=0.95, seed=1234)


@pytest.fixture
async def engine(tiny_model: Any) -> AsyncIterator[Engine]:
    # No eos: every job runs to its length, so outputs have a known size.
    e = Engine(tiny_model, eos_ids=frozenset(), limits=Limits(3, 1 << 16, 64))
    e.start()
    yield e
    await asyncio.to_thread(e.stop, UnavailableError("test over"), 10.0)


async def next_item(handle: Handle) -> Output:
    return await asyncio.wait_for(handle.queue.get(), 30)


async def tokens_until_finish(handle: Handle) -> list[int]:
    out: list[int] = []
    while True:
        item = await next_item(handle)
        if isinstance(item, Failed):
            raise item.error
        if isinstance(item, Token):
            out.append(item.token_id)
            if item.finish is not None:
                handle.cancel()
                return out


async def solo(engine: Engine, n: int, sampling: Sampling) -> list[int]:
    handle = engine.submit(Job(PROMPT, n, sampling), asyncio.get_running_loop())
    return await tokens_until_finish(handle)


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
@pytest.mark.parametrize("k", [1, 9, 30])
async def test_shadow_extended_then_released_continues_exactly(
    engine: Engine, sampling: Sampling, k: int
) -> None:
    n = 40
    full = await solo(engine, n, sampling)
    loop = asyncio.get_running_loop()
    # A shadow reserves KV for what is left of the generation (n - k tokens).
    shadow = engine.submit(Job(PROMPT + full[:k], n - k, sampling, hold=True, generated=k), loop)
    held = await next_item(shadow)
    assert isinstance(held, Held)
    assert held.tokens == len(PROMPT) + k
    # Two catch-up rounds (one empty), then the final delta and the release, back to back.
    engine.extend(shadow, full[k : k + 3])
    held = await next_item(shadow)
    assert isinstance(held, Held)
    assert held.tokens == len(PROMPT) + k + 3
    engine.extend(shadow, [])
    assert isinstance(await next_item(shadow), Held)
    engine.extend(shadow, full[k + 3 : k + 5])
    engine.release(shadow, n - k - 5)
    assert isinstance(await next_item(shadow), Held)
    assert await tokens_until_finish(shadow) == full[k + 5 :]


async def test_a_shadow_produces_nothing_until_released(engine: Engine) -> None:
    shadow = engine.submit(Job(PROMPT, 8, GREEDY, hold=True), asyncio.get_running_loop())
    assert isinstance(await next_item(shadow), Held)
    await asyncio.sleep(0.2)
    assert shadow.queue.empty()
    assert engine.in_use == 1  # it holds its slot
    shadow.cancel()
    assert engine.in_use == 0


async def test_paused_job_reports_what_it_produced_and_resumes_exactly(engine: Engine) -> None:
    n = 60
    full = await solo(engine, n, SEEDED)
    handle = engine.submit(Job(PROMPT, n, SEEDED), asyncio.get_running_loop())
    got: list[int] = []
    while len(got) < 5:
        item = await next_item(handle)
        assert isinstance(item, Token)
        got.append(item.token_id)
    handle.pause()
    while not isinstance(item := await next_item(handle), Paused):
        assert isinstance(item, Token)
        got.append(item.token_id)
    assert item.produced == len(got)
    await asyncio.sleep(0.2)
    assert handle.queue.empty()  # parked: nothing more until resumed
    handle.resume()
    assert got + await tokens_until_finish(handle) == full


async def test_cancelling_a_paused_job_frees_its_slot(engine: Engine) -> None:
    handle = engine.submit(Job(PROMPT, 500, GREEDY), asyncio.get_running_loop())
    handle.pause()
    while not isinstance(await next_item(handle), Paused):
        pass
    handle.cancel()
    assert engine.in_use == 0
    assert len(await solo(engine, 5, GREEDY)) == 5


async def test_resume_before_the_pause_lands_just_carries_on(engine: Engine) -> None:
    n = 30
    full = await solo(engine, n, GREEDY)
    handle = engine.submit(Job(PROMPT, n, GREEDY), asyncio.get_running_loop())
    handle.pause()
    handle.resume()
    items: list[Output] = []
    while not (items and isinstance(items[-1], Token) and items[-1].finish):
        items.append(await next_item(handle))
    handle.cancel()
    assert not any(isinstance(i, Failed) for i in items)
    assert [i.token_id for i in items if isinstance(i, Token)] == full


async def test_extending_a_job_that_is_not_a_shadow_fails_it(engine: Engine) -> None:
    handle = engine.submit(Job(PROMPT, 500, GREEDY), asyncio.get_running_loop())
    handle.pause()
    while not isinstance(await next_item(handle), Paused):
        pass
    engine.extend(handle, [5, 6])
    item = await next_item(handle)
    assert isinstance(item, Failed)
    handle.cancel()


def make_stream(engine: Engine, tok: Any, n: int) -> GenerationStream:
    detok = IncrementalDetokenizer(
        lambda ids: tok.decode(list(ids), skip_special_tokens=True), PROMPT, ()
    )
    handle = engine.submit(Job(PROMPT, n, GREEDY), asyncio.get_running_loop())
    return GenerationStream(
        handle, detok, prompt_tokens=len(PROMPT), prior_tokens=0, token_timeout=30
    )


async def consume(
    gs: GenerationStream, out: list[TokenChunk], first: asyncio.Event | None = None
) -> None:
    async for chunk in gs:
        out.append(chunk)
        if first is not None:
            first.set()


async def test_paused_stream_publishes_everything_then_hands_over(
    engine: Engine, tiny_tokenizer: Any
) -> None:
    gs = make_stream(engine, tiny_tokenizer, 400)
    published: list[TokenChunk] = []
    first = asyncio.Event()
    producer = asyncio.ensure_future(consume(gs, published, first))
    await asyncio.wait_for(first.wait(), 30)
    paused = await gs.pause(30)
    assert paused is not None
    ids = [i for c in published for i in c.token_ids]
    assert paused.new_token_ids == ids
    assert paused.chunks == len(published)
    assert 0 < len(ids) < 400
    assert gs.hand_over()
    with pytest.raises(StreamHandedOver):
        await asyncio.wait_for(producer, 30)
    assert gs.done
    assert engine.in_use == 0


async def test_paused_stream_resumed_gives_the_solo_output(
    engine: Engine, tiny_tokenizer: Any
) -> None:
    n = 80
    full = await solo(engine, n, GREEDY)
    gs = make_stream(engine, tiny_tokenizer, n)
    published: list[TokenChunk] = []
    first = asyncio.Event()
    producer = asyncio.ensure_future(consume(gs, published, first))
    await asyncio.wait_for(first.wait(), 30)
    paused = await gs.pause(30)
    assert paused is not None
    gs.resume()
    await asyncio.wait_for(producer, 30)
    assert [i for c in published for i in c.token_ids] == full
    assert published[-1].finish_reason == "length"
    usage = published[-1].usage
    assert usage is not None
    assert usage.completion_tokens == n


async def test_pause_of_a_finished_stream_says_so(engine: Engine, tiny_tokenizer: Any) -> None:
    gs = make_stream(engine, tiny_tokenizer, 3)
    chunks: list[TokenChunk] = []
    await consume(gs, chunks)
    assert await gs.pause(5) is None
    assert not gs.hand_over()
