"""Every per-request sampling parameter has its specified effect, on plain logits (the exact
formulas) and through the batched engine against the tiny demo model (the observable effect,
and independence from the rest of the batch)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from libs.protocol.errors import BadRequestError, UnavailableError
from libs.protocol.messages import SamplingParams, TokenBias
from services.worker.batch_policy import Limits
from services.worker.engine import Engine, Job, Token
from services.worker.sampling import (
    History,
    Sampling,
    choose_token,
    process_logits,
    token_logprobs,
)
from services.worker.validate import check_sampling

from .engine_jobs import collect

pytestmark = pytest.mark.unit

PROMPT = [1, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86]
OTHER = [904, 594, 330, 14, 394, 277, 318]
GREEDY = Sampling()


# --- the formulas, on plain logits -----------------------------------------------------------


def test_logit_bias_is_added() -> None:
    out = process_logits(
        torch.zeros(5),
        Sampling(logit_bias=((1, 2.5), (3, -100.0))),
        produced=0,
        end_ids=frozenset(),
        history=None,
    )
    assert out.tolist() == [0.0, 2.5, 0.0, -100.0, 0.0]


def test_frequency_and_presence_penalties_follow_openai() -> None:
    s = Sampling(frequency_penalty=0.5, presence_penalty=1.0)
    history = History(5, prompt=[4], device=torch.device("cpu"))
    for t in (1, 1, 2):
        history.add(t)
    out = process_logits(torch.ones(5), s, produced=3, end_ids=frozenset(), history=history)
    # logit - frequency * count - presence * (count > 0); the prompt token is not counted.
    assert out.tolist() == pytest.approx([1.0, 1.0 - 1.0 - 1.0, 1.0 - 0.5 - 1.0, 1.0, 1.0])


def test_repetition_penalty_shrinks_seen_tokens_prompt_included() -> None:
    s = Sampling(repetition_penalty=2.0)
    history = History(4, prompt=[0, 1], device=torch.device("cpu"))
    history.add(2)
    logits = torch.tensor([4.0, -4.0, 2.0, 3.0])
    out = process_logits(logits, s, produced=1, end_ids=frozenset(), history=history)
    assert out.tolist() == [2.0, -8.0, 1.0, 3.0]


def test_min_tokens_bans_end_tokens_until_reached() -> None:
    s = Sampling(min_tokens=2)
    logits = torch.tensor([5.0, 1.0, 0.0])
    early = process_logits(logits, s, produced=1, end_ids=frozenset({0}), history=None)
    assert early[0] == float("-inf")
    assert choose_token(early, s, position=0) == 1
    late = process_logits(logits, s, produced=2, end_ids=frozenset({0}), history=None)
    assert choose_token(late, s, position=0) == 0


def test_top_k_and_min_p_bound_the_candidates() -> None:
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1]))
    top2 = Sampling(temperature=1.0, top_k=2, seed=9)
    assert {choose_token(logits, top2, position=p) for p in range(300)} == {0, 1}
    # min_p 0.6: only tokens at least 0.6 x as likely as the best one (0.4 -> >= 0.24).
    minp = Sampling(temperature=1.0, min_p=0.6, seed=9)
    assert {choose_token(logits, minp, position=p) for p in range(300)} == {0, 1}
    assert {
        choose_token(logits, Sampling(temperature=1.0, top_k=1, seed=s), position=0)
        for s in range(50)
    } == {0}


def test_logprobs_are_of_the_raw_distribution() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    lp, top = token_logprobs(logits, 1, 2)
    ref = torch.log_softmax(logits, dim=-1)
    assert lp == pytest.approx(float(ref[1]))
    assert [t for t, _ in top] == [0, 1]
    assert [v for _, v in top] == pytest.approx([float(ref[0]), float(ref[1])])


def test_sampling_params_map_to_the_engine_form() -> None:
    p = SamplingParams(
        temperature=0.7,
        top_k=5,
        min_p=0.1,
        presence_penalty=0.2,
        frequency_penalty=0.3,
        repetition_penalty=1.1,
        logit_bias=[TokenBias(token_id=7, bias=1.5)],
        stop_token_ids=[9],
        min_tokens=2,
        ignore_eos=True,
        top_logprobs=3,
    )
    s = Sampling.of(p, seed=11)
    assert (s.temperature, s.top_k, s.min_p, s.seed) == (0.7, 5, 0.1, 11)
    assert (s.presence_penalty, s.frequency_penalty, s.repetition_penalty) == (0.2, 0.3, 1.1)
    assert s.logit_bias == ((7, 1.5),)
    assert s.stop_token_ids == frozenset({9})
    assert (s.min_tokens, s.ignore_eos, s.logprobs, s.top_logprobs) == (2, True, True, 3)


def test_out_of_vocabulary_ids_are_refused() -> None:
    with pytest.raises(BadRequestError, match="logit_bias"):
        check_sampling(Sampling(logit_bias=((5000, 1.0),)), vocab_size=1000)
    with pytest.raises(BadRequestError, match="stop_token_ids"):
        check_sampling(Sampling(stop_token_ids=frozenset({1000})), vocab_size=1000)


# --- through the engine ----------------------------------------------------------------------


@pytest.fixture
async def engine(tiny_model: Any) -> AsyncIterator[Engine]:
    e = Engine(tiny_model, eos_ids=frozenset(), limits=Limits(8, 1 << 14, 16))
    e.start()
    yield e
    await asyncio.to_thread(e.stop, UnavailableError("test over"), 10.0)


async def run(engine: Engine, s: Sampling, n: int = 12, ids: list[int] = PROMPT) -> list[Token]:
    return await collect(engine.submit(Job(ids, n, s), asyncio.get_running_loop()))


def ids(tokens: list[Token]) -> list[int]:
    return [t.token_id for t in tokens]


async def test_logit_bias_forces_and_forbids_tokens(engine: Engine) -> None:
    greedy = ids(await run(engine, GREEDY))
    forced = ids(await run(engine, Sampling(logit_bias=((42, 100.0),))))
    assert forced == [42] * 12
    sampled = ids(await run(engine, Sampling(temperature=1.0, seed=5, logit_bias=((42, 100.0),))))
    assert sampled == [42] * 12
    banned = ids(await run(engine, Sampling(logit_bias=((greedy[0], -100.0),))))
    assert banned[0] != greedy[0]


async def test_stop_token_ids_cut_the_generation(engine: Engine) -> None:
    greedy = ids(await run(engine, GREEDY))
    stop = greedy[3]
    first = greedy.index(stop)
    got = await run(engine, Sampling(stop_token_ids=frozenset({stop})))
    assert ids(got) == greedy[: first + 1]
    assert got[-1].finish == "stop"


async def test_min_tokens_and_ignore_eos(tiny_model: Any, engine: Engine) -> None:
    first = ids(await run(engine, GREEDY, n=1))[0]
    eos_engine = Engine(tiny_model, eos_ids=frozenset({first}), limits=Limits(4, 1 << 14, 16))
    eos_engine.start()
    try:
        plain = await run(eos_engine, GREEDY)
        assert [(t.token_id, t.finish) for t in plain] == [(first, "stop")]
        held = await run(eos_engine, Sampling(min_tokens=5))
        assert len(held) >= 5
        assert first not in ids(held)[:5]
        ignoring = await run(eos_engine, Sampling(ignore_eos=True))
        assert len(ignoring) == 12
        assert ignoring[0].token_id == first
        assert ignoring[-1].finish == "length"
    finally:
        await asyncio.to_thread(eos_engine.stop, UnavailableError("test over"), 10.0)


async def test_penalties_reduce_repetition(engine: Engine) -> None:
    base = Sampling(temperature=1.0, seed=3)
    plain = ids(await run(engine, base, n=60))
    penalised = ids(await run(engine, replace(base, frequency_penalty=2.0), n=60))
    repeated = ids(await run(engine, replace(base, repetition_penalty=3.0), n=60))
    assert len(set(penalised)) > len(set(plain))
    assert len(set(repeated)) > len(set(plain))
    # A negative presence penalty encourages repetition.
    looping = ids(await run(engine, replace(base, presence_penalty=-2.0), n=60))
    assert len(set(looping)) < len(set(plain))


async def test_logprobs_match_the_model(engine: Engine, tiny_dirs: tuple[Path, Path]) -> None:
    from transformers import AutoModelForCausalLM

    got = await run(engine, Sampling(logprobs=True, top_logprobs=3), n=6)
    ref = AutoModelForCausalLM.from_pretrained(tiny_dirs[0])
    with torch.inference_mode():
        logits = ref(torch.tensor([PROMPT + ids(got)])).logits[0]
    for i, tok in enumerate(got):
        row = torch.log_softmax(logits[len(PROMPT) - 1 + i].float(), dim=-1)
        assert tok.logprob == pytest.approx(float(row[tok.token_id]), abs=1e-4)
        assert next(t for t, _ in tok.top) == tok.token_id  # greedy: the best one
        assert [v for _, v in tok.top] == sorted((v for _, v in tok.top), reverse=True)
    plain = await run(engine, GREEDY, n=6)
    assert all(t.logprob is None and not t.top for t in plain)


async def test_a_request_samples_the_same_alone_and_in_a_mixed_batch(engine: Engine) -> None:
    mine = Sampling(temperature=0.9, top_k=50, top_p=0.95, seed=77, frequency_penalty=0.4)
    alone = ids(await run(engine, mine, n=30))
    loop = asyncio.get_running_loop()
    others = [
        engine.submit(Job(OTHER, 40, Sampling(temperature=1.3, seed=s, min_p=0.05)), loop)
        for s in range(3)
    ] + [engine.submit(Job(OTHER * 3, 40, Sampling(repetition_penalty=1.5)), loop)]
    together = await asyncio.gather(
        run(engine, mine, n=30), *(collect(h) for h in others), return_exceptions=False
    )
    assert ids(together[0]) == alone
