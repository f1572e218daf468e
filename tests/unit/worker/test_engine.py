"""The engine thread against the tiny demo model: exact greedy output, resumption, interleaving
of concurrent requests, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from libs.protocol.errors import BadRequestError, OverloadedError, UnavailableError
from services.worker.batch_policy import Limits
from services.worker.engine import Engine, Failed, Job
from services.worker.sampling import Sampling

from .engine_jobs import collect

pytestmark = pytest.mark.unit

EOS = frozenset({2})
GREEDY = Sampling(temperature=0.0)
PROMPTS = [
    [904, 594, 330, 14, 394, 277, 318],
    [17, 300, 42],
    [1, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86],
    [500],
]


@pytest.fixture
async def engine(tiny_model: Any) -> AsyncIterator[Engine]:
    e = Engine(tiny_model, eos_ids=EOS, limits=Limits(4, 1 << 16, 64))
    e.start()
    yield e
    await asyncio.to_thread(e.stop, UnavailableError("test over"), 10.0)


@pytest.fixture(scope="module")
def hf_model(tiny_dirs: tuple[Path, Path]) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dirs[0])  # in eval mode


async def run(engine: Engine, ids: list[int], n: int, sampling: Sampling = GREEDY) -> list[int]:
    handle = engine.submit(Job(ids, n, sampling), asyncio.get_running_loop())
    return [t.token_id for t in await collect(handle)]


def hf_greedy(model: Any, ids: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=n, eos_token_id=list(EOS)
        )
    return [int(t) for t in out[0, len(ids) :]]


async def test_greedy_output_equals_transformers_generate(engine: Engine, hf_model: Any) -> None:
    for ids in PROMPTS:
        assert await run(engine, ids, 40) == hf_greedy(hf_model, ids, 40)


async def test_finish_reasons(engine: Engine, tiny_model: Any) -> None:
    handle = engine.submit(Job(PROMPTS[0], 3, GREEDY), asyncio.get_running_loop())
    tokens = await collect(handle)
    assert [t.finish for t in tokens] == [None, None, "length"] or tokens[-1].finish == "stop"
    assert tokens[0].prefill_s is not None
    assert tokens[0].prefill_s > 0
    assert all(t.prefill_s is None for t in tokens[1:])
    # A job whose next token is eos ends with "stop" (and the eos id is reported).
    stop_engine = Engine(
        tiny_model, eos_ids=frozenset({tokens[0].token_id}), limits=Limits(1, 1 << 16, 64)
    )
    stop_engine.start()
    try:
        h = stop_engine.submit(Job(PROMPTS[0], 10, GREEDY), asyncio.get_running_loop())
        got = await collect(h)
        assert [(t.token_id, t.finish) for t in got] == [(tokens[0].token_id, "stop")]
    finally:
        await asyncio.to_thread(stop_engine.stop, UnavailableError("test over"), 10.0)


@pytest.mark.parametrize("sampling", [GREEDY, Sampling(temperature=0.9, top_p=0.95, seed=42)])
async def test_resuming_with_generated_tokens_continues_exactly(
    engine: Engine, sampling: Sampling
) -> None:
    prompt, n = PROMPTS[2], 32
    full = await run(engine, prompt, n, sampling)
    for k in (1, 7, len(full) - 1):
        rest = await run(engine, prompt + full[:k], n - k, sampling)
        assert full[:k] + rest == full


async def test_seeded_sampling_is_reproducible_and_seed_dependent(engine: Engine) -> None:
    a = await run(engine, PROMPTS[1], 24, Sampling(temperature=1.0, top_p=0.9, seed=7))
    b = await run(engine, PROMPTS[1], 24, Sampling(temperature=1.0, top_p=0.9, seed=7))
    c = await run(engine, PROMPTS[1], 24, Sampling(temperature=1.0, top_p=0.9, seed=8))
    assert a == b
    assert a != c


async def test_concurrent_jobs_interleave_and_each_equals_its_solo_output(
    engine: Engine,
) -> None:
    n = 30
    solo = [await run(engine, ids, n) for ids in PROMPTS]
    loop = asyncio.get_running_loop()
    handles = [engine.submit(Job(ids, n, GREEDY), loop) for ids in PROMPTS]
    results = await asyncio.gather(*(collect(h) for h in handles))
    assert [[t.token_id for t in r] for r in results] == solo
    # Interleaved, not one after another: every job had produced its first token before any
    # job that ran to its length limit produced its last.
    firsts = max(r[0].at for r in results)
    lasts = min(r[-1].at for r in results if len(r) == n)
    assert firsts < lasts


async def test_a_job_that_can_never_fit_the_kv_budget_is_refused(tiny_model: Any) -> None:
    engine = Engine(tiny_model, eos_ids=EOS, limits=Limits(4, 64, 64))
    with pytest.raises(BadRequestError, match="KV cache budget of 64 tokens"):
        engine.submit(Job(PROMPTS[0], 58, GREEDY), asyncio.get_running_loop())
    engine.submit(Job(PROMPTS[0], 57, GREEDY), asyncio.get_running_loop()).cancel()  # fits


async def test_a_burst_beyond_the_budget_queues_and_completes_in_arrival_order(
    tiny_model: Any,
) -> None:
    n = 12
    need = len(PROMPTS[2]) + n
    engine = Engine(tiny_model, eos_ids=frozenset(), limits=Limits(16, 3 * need, 64))
    engine.start()
    try:
        loop = asyncio.get_running_loop()
        solo = await run(engine, PROMPTS[2], n)
        handles = [engine.submit(Job(PROMPTS[2], n, GREEDY), loop) for _ in range(9)]
        results = await asyncio.gather(*(collect(h) for h in handles))
    finally:
        await asyncio.to_thread(engine.stop, UnavailableError("test over"), 10.0)
    assert all([t.token_id for t in r] == solo for r in results)
    firsts = [r[0].at for r in results]
    assert firsts == sorted(firsts)  # first come, first served
    # Three fit at once: the fourth waited for the first to finish, and said so.
    assert results[3][0].at > results[0][-1].at
    assert results[3][0].queue_s is not None
    assert results[3][0].queue_s > results[0][0].queue_s  # type: ignore[operator]


async def test_a_full_queue_is_overloaded_not_lost(tiny_model: Any) -> None:
    need = len(PROMPTS[0]) + 500
    engine = Engine(tiny_model, eos_ids=frozenset(), limits=Limits(4, need, 64), max_queue=2)
    engine.start()
    try:
        loop = asyncio.get_running_loop()
        running = engine.submit(Job(PROMPTS[0], 500, GREEDY), loop)
        await asyncio.wait_for(running.queue.get(), 30)  # admitted: it holds the whole budget
        queued = [engine.submit(Job(PROMPTS[0], 5, GREEDY), loop) for _ in range(2)]
        with pytest.raises(OverloadedError, match="2 requests already wait"):
            engine.submit(Job(PROMPTS[0], 5, GREEDY), loop)
        running.cancel()
        assert [len(await collect(h)) for h in queued] == [5, 5]
    finally:
        await asyncio.to_thread(engine.stop, UnavailableError("test over"), 10.0)


async def test_no_kv_is_held_after_a_thousand_mixed_requests(tiny_model: Any) -> None:
    """Finished, cancelled (waiting, prefilling or decoding) and paused-then-cancelled jobs of
    every size: afterwards the engine holds no reservation, no sequence and no KV."""
    engine = Engine(tiny_model, eos_ids=EOS, limits=Limits(16, 4096, 32), max_queue=2000)
    engine.start()
    loop = asyncio.get_running_loop()
    samplings = [GREEDY, Sampling(temperature=0.8, top_k=20, seed=3, frequency_penalty=0.5)]

    async def one(i: int) -> None:
        ids = PROMPTS[i % len(PROMPTS)] * (1 + i % 7)
        h = engine.submit(Job(ids, 1 + i % 9, samplings[i % 2]), loop)
        kind = i % 4
        if kind == 0:
            h.cancel()  # most likely still waiting
        elif kind == 1:
            await asyncio.wait_for(h.queue.get(), 30)
            h.cancel()  # mid-generation
        elif kind == 2 and i % 9 > 3:
            await asyncio.wait_for(h.queue.get(), 30)
            h.pause()
            h.cancel()
        else:
            await collect(h)

    try:
        for start in range(0, 1000, 100):
            await asyncio.gather(*(one(i) for i in range(start, start + 100)))
        for _ in range(100):
            if engine.kv_reserved == 0 and engine.sequences == 0:
                break
            await asyncio.sleep(0.05)
        assert engine.in_use == 0
        assert engine.kv_reserved == 0
        assert engine.sequences == 0
    finally:
        await asyncio.to_thread(engine.stop, UnavailableError("test over"), 10.0)


async def test_cancelling_frees_the_slot_and_stops_the_compute(tiny_model: Any) -> None:
    engine = Engine(tiny_model, eos_ids=frozenset(), limits=Limits(1, 1 << 16, 64))
    engine.start()
    try:
        loop = asyncio.get_running_loop()
        long = engine.submit(Job(PROMPTS[0], 3000, GREEDY), loop)
        await asyncio.wait_for(long.queue.get(), 30)
        long.cancel()
        assert engine.in_use == 0
        short = engine.submit(Job(PROMPTS[1], 20, GREEDY), loop)  # the slot is free again
        assert len(await collect(short)) == 20
        produced = long.queue.qsize()
        await asyncio.sleep(0.2)
        assert long.queue.qsize() == produced  # the cancelled job produces nothing more
        assert produced < 3000
    finally:
        await asyncio.to_thread(engine.stop, UnavailableError("test over"), 10.0)


async def test_stopping_fails_every_job_with_the_given_error(tiny_model: Any) -> None:
    engine = Engine(tiny_model, eos_ids=frozenset(), limits=Limits(3, 1 << 16, 64))
    engine.start()
    loop = asyncio.get_running_loop()
    handles = [engine.submit(Job(ids, 3000, GREEDY), loop) for ids in PROMPTS[:3]]
    await asyncio.wait_for(handles[0].queue.get(), 30)
    assert await asyncio.to_thread(engine.stop, UnavailableError("instance unloaded"), 10.0)
    for h in handles:
        items = [h.queue.get_nowait() for _ in range(h.queue.qsize())]
        assert isinstance(items[-1], Failed)
        assert items[-1].error.message == "instance unloaded"
    with pytest.raises(UnavailableError):
        engine.submit(Job(PROMPTS[0], 5, GREEDY), loop)


async def test_a_shared_prompt_prefix_is_computed_once(tiny_model: Any) -> None:
    """Jobs whose prompts start alike (n samples of one prompt, a common system prompt) copy
    the prefix from the first one's KV instead of computing it again, with the same output."""
    engine = Engine(tiny_model, eos_ids=frozenset(), limits=Limits(8, 1 << 14, 16))
    engine.start()
    try:
        loop = asyncio.get_running_loop()
        system = [
            int(t) for t in torch.randint(3, 900, (40,), generator=torch.Generator().manual_seed(1))
        ]
        prompts = [[*system, 5, 6, 7], [*system, 5, 6, 7], [*system, 8, 9], [*system, 5, 6, 7, 10]]
        samplings = [GREEDY, Sampling(temperature=1.0, seed=1), GREEDY, GREEDY]
        solo = [await run(engine, p, 10, s) for p, s in zip(prompts, samplings, strict=True)]
        computed, copied = engine.tokens_computed, engine.tokens_copied
        assert copied == 0  # one at a time: nothing to share
        handles = [
            engine.submit(Job(p, 10, s), loop) for p, s in zip(prompts, samplings, strict=True)
        ]
        together = await asyncio.gather(*(collect(h) for h in handles))
        assert [[t.token_id for t in r] for r in together] == solo
        # The others copied what they share with the first (all of it but their last token
        # for the identical prompt, the 40 system tokens, the first's 43 for the longer one).
        assert engine.tokens_copied - copied == 42 + 40 + 43
        fed = engine.tokens_computed - computed - 4 * 9  # each fed 9 of its 10 tokens back
        assert sum(len(p) for p in prompts) - fed == 42 + 40 + 43
    finally:
        await asyncio.to_thread(engine.stop, UnavailableError("test over"), 10.0)
