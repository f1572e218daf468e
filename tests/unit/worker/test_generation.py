"""Engine outputs as TokenChunks: text deltas, finish reasons, usage, and slots given back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from libs.protocol.errors import UnavailableError
from libs.protocol.messages import TokenChunk
from services.worker.batch_policy import Limits
from services.worker.detok import IncrementalDetokenizer
from services.worker.engine import Engine, Job
from services.worker.generation import GenerationStream
from services.worker.sampling import Sampling

pytestmark = pytest.mark.unit

PROMPT = [904, 594, 330, 14, 394, 277, 318]


@pytest.fixture
async def engine(tiny_model: Any) -> AsyncIterator[Engine]:
    e = Engine(tiny_model, eos_ids=frozenset({2}), limits=Limits(2, 1 << 16, 64))
    e.start()
    yield e
    await asyncio.to_thread(e.stop, UnavailableError("test over"), 10.0)


def stream(
    engine: Engine, tok: Any, n: int, *, stop: tuple[str, ...] = (), prior: list[int] | None = None
) -> GenerationStream:
    prior = prior or []
    detok = IncrementalDetokenizer(
        lambda ids: tok.decode(list(ids), skip_special_tokens=True), PROMPT, stop
    )
    detok.add(prior)
    handle = engine.submit(
        Job(PROMPT + prior, n - len(prior), Sampling()), asyncio.get_running_loop()
    )
    return GenerationStream(
        handle, detok, prompt_tokens=len(PROMPT), prior_tokens=len(prior), token_timeout=30
    )


async def chunks_of(s: GenerationStream) -> list[TokenChunk]:
    return [c async for c in s]


async def test_chunks_carry_ids_text_and_a_final_usage(engine: Engine, tiny_tokenizer: Any) -> None:
    chunks = await chunks_of(stream(engine, tiny_tokenizer, 24))
    ids = [i for c in chunks for i in c.token_ids]
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length")
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (len(PROMPT), len(ids))
    assert chunks[0].prefill_s is not None
    assert last.decode_s is not None
    text = "".join(c.text for c in chunks)
    assert text == tiny_tokenizer.decode([i for i in ids if i != 2], skip_special_tokens=True)
    assert engine.in_use == 0


async def test_stop_string_ends_the_stream_before_it(engine: Engine, tiny_tokenizer: Any) -> None:
    full = await chunks_of(stream(engine, tiny_tokenizer, 40))
    text = "".join(c.text for c in full)
    assert len(text) > 12, "the demo model should produce some text here"
    stop = text[6:9]
    cut = await chunks_of(stream(engine, tiny_tokenizer, 40, stop=(stop,)))
    assert cut[-1].finish_reason == "stop"
    assert "".join(c.text for c in cut) == text[: text.index(stop)]
    assert engine.in_use == 0


async def test_resumed_stream_continues_text_and_counts_prior_tokens(
    engine: Engine, tiny_tokenizer: Any
) -> None:
    full = await chunks_of(stream(engine, tiny_tokenizer, 30))
    ids = [i for c in full for i in c.token_ids]
    full_text = "".join(c.text for c in full)
    for k in (1, 5, 9, 17):
        # The text the first worker had streamed when it stopped after k tokens.
        first = IncrementalDetokenizer(
            lambda x: tiny_tokenizer.decode(list(x), skip_special_tokens=True), PROMPT
        )
        emitted = "".join(first.add([i]) for i in ids[:k])
        rest = await chunks_of(stream(engine, tiny_tokenizer, 30, prior=ids[:k]))
        assert ids[:k] + [i for c in rest for i in c.token_ids] == ids
        assert emitted + "".join(c.text for c in rest) == full_text
        assert rest[-1].usage is not None
        assert rest[-1].usage.completion_tokens == len(ids)


async def test_closing_an_unread_stream_frees_its_slot(engine: Engine, tiny_tokenizer: Any) -> None:
    s = stream(engine, tiny_tokenizer, 500)
    assert engine.in_use == 1
    await s.aclose()
    assert engine.in_use == 0
    with pytest.raises(StopAsyncIteration):
        await s.__anext__()


async def test_engine_stop_ends_the_stream_with_its_error(
    tiny_model: Any, tiny_tokenizer: Any
) -> None:
    engine = Engine(tiny_model, eos_ids=frozenset(), limits=Limits(1, 1 << 16, 64))
    engine.start()
    s = stream(engine, tiny_tokenizer, 3000)
    await s.__anext__()
    await asyncio.to_thread(engine.stop, UnavailableError("instance unloaded"), 10.0)
    with pytest.raises(UnavailableError, match="instance unloaded"):
        async for _ in s:
            pass
    assert engine.in_use == 0
