"""The embedding engine and runtime against tiny local models: vectors equal transformers' own
states pooled one input at a time, whatever they are batched with; limits; failures."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from libs.loader import CancelToken
from libs.loader.pooling import Pooling
from libs.protocol.errors import (
    BadRequestError,
    InternalError,
    InvalidCheckpointError,
    OverloadedError,
    UnavailableError,
)
from services.worker.embed_engine import EmbedEngine, plan_forwards, pool_states
from services.worker.embedding import EmbedRuntime, load_embed_runtime

pytestmark = pytest.mark.unit

TEXTS = [
    "hello world",
    "the cat sat on the mat, and the dog sat on the red mat with the blue moon",
    "a",
    "embedding models serve vectors fast",
    "one two three",
]
TOL = 1e-5

# (pooling in 1_Pooling/config.json, Normalize module listed)
BERT_VARIANTS = [("cls", True), ("max", False), ("mean", True), ("last", True)]


def reference(model: Any, ids: list[int], pooling: Pooling) -> list[float]:
    """One input alone, no padding, through transformers' own model; pooled by hand."""
    with torch.inference_mode():
        states = model(input_ids=torch.tensor([ids])).last_hidden_state[0].float()
    if pooling.mode == "cls":
        vec = states[0]
    elif pooling.mode == "last":
        vec = states[-1]
    elif pooling.mode == "max":
        vec = states.max(dim=0).values
    else:
        vec = states.mean(dim=0)
    if pooling.normalize:
        vec = vec / vec.norm()
    return [float(x) for x in vec]


def close_enough(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and max(abs(a - b) for a, b in zip(got, want, strict=True)) < TOL


def load(path: Path, **kwargs: Any) -> EmbedRuntime:
    settings: dict[str, Any] = {"max_batch": 8, "max_queue": 64} | kwargs
    runtime, _ = load_embed_runtime(
        path, device="cpu", pool=None, cancel=CancelToken(), name="test-embed", **settings
    )
    return runtime


@pytest.fixture(scope="module", params=BERT_VARIANTS, ids=lambda v: f"{v[0]}-norm{v[1]}")
def bert(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EmbedRuntime, Any]]:
    """(runtime on the converted checkpoint, transformers' AutoModel of the source)."""
    from transformers import AutoModel

    from libs.demo.embed import write_tiny_sentence_bert
    from libs.loader import convert_hf

    mode, normalize = request.param
    root = tmp_path_factory.mktemp(f"bert-{mode}")
    write_tiny_sentence_bert(root / "hf", mode, normalize=normalize)
    convert_hf(root / "hf", root / "ckpt")
    runtime = load(root / "ckpt")
    assert runtime.pooling == Pooling(mode, normalize, "sentence-transformers", 64)
    yield runtime, AutoModel.from_pretrained(root / "hf")
    runtime.close(UnavailableError("test over"), 10.0)


@pytest.fixture(scope="module")
def llama(tiny_dirs: tuple[Path, Path]) -> Iterator[tuple[EmbedRuntime, Any]]:
    from transformers import AutoModel

    runtime = load(tiny_dirs[1])
    yield runtime, AutoModel.from_pretrained(tiny_dirs[0])
    runtime.close(UnavailableError("test over"), 10.0)


async def embed_all(runtime: EmbedRuntime, inputs: list[list[int]]) -> list[list[float]]:
    """Submit every input at once, queued before the engine takes any (one step)."""
    loop = asyncio.get_running_loop()
    # The engine's lock is reentrant: holding it keeps the thread out until all are queued.
    with runtime.engine._cv:
        futures = [runtime.engine.submit(ids, loop) for ids in inputs]
    return [r.vector for r in await asyncio.gather(*futures)]


# --- pure parts -------------------------------------------------------------------------------


def test_plan_forwards_groups_by_length_within_limits() -> None:
    assert plan_forwards([3, 10, 4, 9], max_batch=2, max_batch_tokens=100) == [[1, 3], [2, 0]]
    # 3 x 10 padded tokens would exceed 25: the longest goes with one more only.
    assert plan_forwards([10, 10, 10, 2], max_batch=8, max_batch_tokens=25) == [
        [0, 1],
        [2, 3],
    ]
    # An input longer than the token bound still runs, alone.
    assert plan_forwards([50, 1], max_batch=8, max_batch_tokens=10) == [[0], [1]]
    assert plan_forwards([], max_batch=8, max_batch_tokens=10) == []


def test_pool_states_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])

    def pooled(mode: str) -> list[float]:
        out = pool_states(hidden, mask, Pooling(mode, False))  # type: ignore[arg-type]
        return [float(x) for x in out[0]]

    assert pooled("cls") == [1.0, -2.0]
    assert pooled("mean") == [2.0, 1.0]
    assert pooled("max") == [3.0, 4.0]
    assert pooled("last") == [3.0, 4.0]
    unit = pool_states(hidden, mask, Pooling("last", True))[0]
    assert torch.allclose(unit, torch.tensor([0.6, 0.8]))


# --- against transformers ---------------------------------------------------------------------


async def test_bert_vectors_equal_reference_in_mixed_batches(bert: tuple[Any, Any]) -> None:
    runtime, hf = bert
    ids = runtime.tokenize(TEXTS)
    assert all(seq[0] == 2 and seq[-1] == 3 for seq in ids)  # [CLS] ... [SEP]
    assert len({len(seq) for seq in ids}) > 2  # the batch really pads
    got = await embed_all(runtime, ids)
    for seq, vec in zip(ids, got, strict=True):
        assert len(vec) == runtime.dimensions == 32
        assert close_enough(vec, reference(hf, seq, runtime.pooling))
    if runtime.pooling.normalize:
        assert all(abs(sum(x * x for x in v) - 1.0) < 1e-5 for v in got)


async def test_llama_mean_pooling_normalised_by_default(llama: tuple[Any, Any]) -> None:
    runtime, hf = llama
    assert runtime.pooling == Pooling("mean", True, "default")
    assert runtime.dimensions == hf.config.hidden_size
    ids = runtime.tokenize(TEXTS)
    got = await embed_all(runtime, ids)
    for seq, vec in zip(ids, got, strict=True):
        assert close_enough(vec, reference(hf, seq, runtime.pooling))
    # Alone or padded next to a longer input: the same vector.
    alone = await embed_all(runtime, [ids[2]])
    assert close_enough(alone[0], got[2])


async def test_token_ids_input(llama: tuple[Any, Any]) -> None:
    runtime, hf = llama
    ids = [[5, 17, 300], [904, 594, 330, 14, 394, 277, 318]]
    for seq in ids:
        runtime.check_ids(seq)
    got = await embed_all(runtime, ids)
    for seq, vec in zip(ids, got, strict=True):
        assert close_enough(vec, reference(hf, seq, runtime.pooling))


async def test_twenty_concurrent_inputs_are_batched(llama: tuple[Any, Any]) -> None:
    runtime, hf = llama
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(20)]
    ids = runtime.tokenize(texts)
    before = runtime.engine.forwards
    loop = asyncio.get_running_loop()
    # Submitted from 20 tasks at once, as concurrent requests would be.
    results = await asyncio.gather(
        *(asyncio.ensure_future(_submit(runtime, seq, loop)) for seq in ids)
    )
    forwards = runtime.engine.forwards - before
    assert forwards < len(ids)
    for seq, res in zip(ids, results, strict=True):
        assert res.tokens == len(seq)
        assert close_enough(res.vector, reference(hf, seq, runtime.pooling))
    assert runtime.engine.in_use == 0
    assert runtime.engine.waiting == 0


async def _submit(runtime: EmbedRuntime, ids: list[int], loop: asyncio.AbstractEventLoop) -> Any:
    return await runtime.engine.submit(ids, loop)


# --- requests the runtime refuses -------------------------------------------------------------


def test_check_ids_refuses_empty_too_long_and_unknown(bert: tuple[Any, Any]) -> None:
    runtime, _ = bert
    assert runtime.context == 64
    with pytest.raises(BadRequestError, match="empty"):
        runtime.check_ids([])
    assert runtime.tokenize([""]) == [[2, 3]]  # an empty text is still [CLS] [SEP]
    too_long = runtime.tokenize([" ".join(["cat"] * 80)])[0]
    with pytest.raises(BadRequestError, match="context of 64 tokens"):
        runtime.check_ids(too_long)
    with pytest.raises(BadRequestError, match="vocabulary"):
        runtime.check_ids([2, runtime.vocab_size, 3])
    runtime.check_ids(too_long[:64])


def test_malformed_pooling_fails_the_load(tmp_path: Path) -> None:
    from libs.demo.embed import write_tiny_sentence_bert

    hf = write_tiny_sentence_bert(tmp_path / "hf", "cls")
    settings = json.loads((hf / "1_Pooling" / "config.json").read_text())
    settings["pooling_mode_mean_tokens"] = True  # two modes at once
    (hf / "1_Pooling" / "config.json").write_text(json.dumps(settings))
    with pytest.raises(InvalidCheckpointError, match="exactly one pooling mode"):
        load(hf, hf_source=True)


async def test_hf_source_load_serves_the_same_vectors(bert: tuple[Any, Any]) -> None:
    runtime, hf = bert
    # The source directory itself, as served while its sllm copy is written.
    source = Path(hf.name_or_path)  # the directory AutoModel read
    direct = load(source, hf_source=True)
    try:
        ids = direct.tokenize(TEXTS[:2])
        got = await embed_all(direct, ids)
        for seq, vec in zip(ids, got, strict=True):
            assert close_enough(vec, reference(hf, seq, runtime.pooling))
    finally:
        direct.close(UnavailableError("test over"), 10.0)


# --- engine failures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_tiny_model(tiny_dirs: tuple[Path, Path]) -> Any:
    """A model of our own: the session's ``tiny_model`` is switched to the generation engine's
    attention by its tests, and an embedding engine would switch it back."""
    from libs.loader import load_model

    return load_model(tiny_dirs[1], device="cpu")


@pytest.fixture
def small_engine(own_tiny_model: Any) -> Iterator[EmbedEngine]:
    engine = EmbedEngine(own_tiny_model, pooling=Pooling(), max_batch=4, max_queue=3)
    engine.start()
    yield engine
    engine.stop(UnavailableError("test over"), 10.0)


async def test_full_queue_is_refused(small_engine: EmbedEngine) -> None:
    loop = asyncio.get_running_loop()
    with small_engine._cv:
        futures = [small_engine.submit([5, 6], loop) for _ in range(3)]
        with pytest.raises(OverloadedError):
            small_engine.submit([5, 6], loop)
        assert small_engine.waiting == 3
        assert small_engine.in_use == 3
    await asyncio.gather(*futures)
    assert await small_engine.drained(5.0)


async def test_failed_forward_fails_its_inputs_and_the_engine_carries_on(
    small_engine: EmbedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    real = small_engine._forward
    calls = {"n": 0}

    def flaky(inputs: list[list[int]]) -> list[list[float]]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory (simulated)")
        return real(inputs)

    monkeypatch.setattr(small_engine, "_forward", flaky)
    with pytest.raises(InternalError, match="simulated"):
        await small_engine.submit([5, 6, 7], loop)
    result = await small_engine.submit([5, 6, 7], loop)
    assert result.tokens == 3
    assert await small_engine.drained(5.0)


async def test_stop_fails_queued_inputs_and_finishes_the_running_forward(
    small_engine: EmbedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    real = small_engine._forward
    started = asyncio.Event()

    def slow(inputs: list[list[int]]) -> list[list[float]]:
        loop.call_soon_threadsafe(started.set)
        time.sleep(0.3)
        return real(inputs)

    monkeypatch.setattr(small_engine, "_forward", slow)
    running = small_engine.submit([5, 6], loop)
    await started.wait()
    queued = [small_engine.submit([7, 8], loop) for _ in range(2)]
    stopped = await asyncio.to_thread(small_engine.stop, UnavailableError("unloaded"), 10.0)
    assert stopped
    assert (await running).tokens == 2
    for fut in queued:
        with pytest.raises(UnavailableError, match="unloaded"):
            await fut
    with pytest.raises(UnavailableError):
        small_engine.submit([5], loop)
    assert await small_engine.drained(5.0)


async def test_cancelled_input_is_dropped(small_engine: EmbedEngine) -> None:
    loop = asyncio.get_running_loop()
    with small_engine._cv:
        dropped = small_engine.submit([5, 6], loop)
        kept = small_engine.submit([5, 6, 7], loop)
        dropped.cancel()
        before = small_engine.inputs_done
    assert (await kept).tokens == 3
    assert small_engine.inputs_done - before == 1
    assert await small_engine.drained(5.0)


def test_normalised_vectors_match_functional_normalize() -> None:
    states = torch.randn(2, 3, 4)
    mask = torch.ones(2, 3, dtype=torch.long)
    want = F.normalize(states.mean(dim=1), p=2, dim=-1)
    assert torch.allclose(pool_states(states, mask, Pooling("mean", True)), want, atol=1e-6)


def test_a_model_switched_to_ragged_attention_gets_plain_attention_back(
    tiny_dirs: tuple[Path, Path],
) -> None:
    from libs.loader import load_model
    from services.worker.ragged import use_ragged_attention

    model = load_model(tiny_dirs[1], device="cpu")
    use_ragged_attention(model)
    engine = EmbedEngine(model, pooling=Pooling())
    assert model.config._attn_implementation == "sdpa"
    engine.stop(UnavailableError("test over"), 1.0)  # never started: nothing to wait for
