"""LoRA adapters in the engine against peft's merged models: one adapter, several adapters and
the base in one batch, different ranks, adapters for another base, no KV shared across adapters."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from libs.loader.adapter import read_adapter_config
from libs.protocol.errors import BadRequestError, UnavailableError
from services.worker import forward
from services.worker.batch_policy import Limits
from services.worker.engine import Engine, Job
from services.worker.forward import BatchForward, Feed
from services.worker.lora import (
    AdapterSegment,
    LoadedAdapter,
    adapter_layout,
    disable_lora,
    enable_lora,
)
from services.worker.ragged import SeqKV
from services.worker.sampling import Sampling

from .engine_jobs import collect

pytestmark = pytest.mark.unit

EOS = frozenset({2})
GREEDY = Sampling(temperature=0.0)
PROMPTS = [[904, 594, 330, 14, 394, 277, 318], [17, 300, 42], [500]]
# A prompt longer than the engine's shortest shared prefix (MIN_SHARED_PREFIX = 16).
LONG = [1, *range(100, 124)]
N = 16  # tokens generated per job


@dataclass(frozen=True)
class Spec:
    r: int
    alpha: int
    targets: tuple[str, ...]
    rslora: bool = False
    rank_pattern: tuple[tuple[str, int], ...] = ()


SPECS = {
    "qv": Spec(4, 8, ("q_proj", "v_proj")),
    "all": Spec(
        8,
        16,
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        rslora=True,
    ),
    "mlp": Spec(2, 4, ("up_proj", "down_proj"), rank_pattern=(("down_proj", 6),)),
}


@dataclass
class Adapter:
    dir: Path
    merged: Any  # peft's merge_and_unload() of the base with this adapter: the reference


@pytest.fixture(scope="module")
def peft_adapters(
    tiny_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Adapter]:
    """The adapters of `SPECS`, trained by nobody: peft's random non-zero init, saved."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    out: dict[str, Adapter] = {}
    for seed, (name, spec) in enumerate(SPECS.items()):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_dirs[0])
        config = LoraConfig(
            r=spec.r,
            lora_alpha=spec.alpha,
            target_modules=list(spec.targets),
            use_rslora=spec.rslora,
            rank_pattern=dict(spec.rank_pattern),
            init_lora_weights=False,
        )
        model = get_peft_model(base, config)
        model.save_pretrained(str(root / name))
        merged = model.merge_and_unload()
        merged.eval()
        out[name] = Adapter(root / name, merged)
    return out


@pytest.fixture(scope="module")
def lora_model(tiny_dirs: tuple[Path, Path]) -> Iterator[Any]:
    """The tiny model as the worker loads it; a copy of its own, since adapters hook it."""
    from libs.loader import load_model

    model = load_model(tiny_dirs[1], device="cpu")
    yield model
    disable_lora(model)


@pytest.fixture(scope="module")
def hf_base(tiny_dirs: tuple[Path, Path]) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dirs[0])


def tensors(adapter: Adapter) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(adapter.dir / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def loaded(peft_adapters: dict[str, Adapter], lora_model: Any) -> dict[str, LoadedAdapter]:
    return {
        name: LoadedAdapter.build(name, read_adapter_config(a.dir), tensors(a), lora_model)
        for name, a in peft_adapters.items()
    }


@pytest.fixture
async def engine(lora_model: Any) -> AsyncIterator[Engine]:
    # A small prefill chunk: prompts are fed in pieces beside other jobs' decode tokens.
    e = Engine(lora_model, eos_ids=EOS, limits=Limits(8, 1 << 16, 8))
    e.start()
    yield e
    await asyncio.to_thread(e.stop, UnavailableError("test over"), 10.0)


def hf_greedy(model: Any, ids: list[int], n: int = N) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=n, eos_token_id=list(EOS)
        )
    return [int(t) for t in out[0, len(ids) :]]


async def run_all(
    engine: Engine, jobs: list[tuple[list[int], LoadedAdapter | None]]
) -> list[list[int]]:
    """Submit every job at once (so that they share steps), then read them all."""
    loop = asyncio.get_running_loop()
    handles = [engine.submit(Job(ids, N, GREEDY, adapter=a), loop) for ids, a in jobs]
    outs = await asyncio.gather(*(collect(h) for h in handles))
    return [[t.token_id for t in out] for out in outs]


@pytest.fixture
def mixes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Distinct adapters of every step that had any (spies on the forward's layout)."""
    seen: list[int] = []

    @contextlib.contextmanager
    def spy(segments: list[AdapterSegment]) -> Iterator[None]:
        seen.append(len({a for a, _, _ in segments if a is not None}))
        with adapter_layout(segments):
            yield

    monkeypatch.setattr(forward, "adapter_layout", spy)
    return seen


async def test_one_adapter_equals_peft_merged_model(
    engine: Engine,
    loaded: dict[str, LoadedAdapter],
    peft_adapters: dict[str, Adapter],
    hf_base: Any,
) -> None:
    for name in SPECS:
        for ids in PROMPTS:
            [got] = await run_all(engine, [(ids, loaded[name])])
            assert got == hf_greedy(peft_adapters[name].merged, ids), (name, ids)
    # The adapters matter: the base alone says something else.
    assert any(
        hf_greedy(hf_base, ids) != hf_greedy(peft_adapters["qv"].merged, ids) for ids in PROMPTS
    )


async def test_mixed_batch_each_job_gets_its_own_adapter(
    engine: Engine,
    loaded: dict[str, LoadedAdapter],
    peft_adapters: dict[str, Adapter],
    hf_base: Any,
    mixes: list[int],
) -> None:
    # "qv" twice around a base-only job: its tokens are not contiguous in the step.
    jobs: list[tuple[list[int], LoadedAdapter | None]] = [
        (PROMPTS[0], loaded["qv"]),
        (PROMPTS[1], None),
        (PROMPTS[2], loaded["qv"]),
        (PROMPTS[1], loaded["all"]),
        (PROMPTS[0], loaded["mlp"]),
    ]
    got = await run_all(engine, jobs)
    for (ids, adapter), out in zip(jobs, got, strict=True):
        ref = hf_base if adapter is None else peft_adapters[adapter.name].merged
        assert out == hf_greedy(ref, ids), (adapter and adapter.name, ids)
    assert max(mixes) == 3  # the three adapters (and the base) really shared steps


async def test_different_ranks_in_one_batch(
    engine: Engine,
    loaded: dict[str, LoadedAdapter],
    peft_adapters: dict[str, Adapter],
    mixes: list[int],
) -> None:
    ranks = {name: {w.a.shape[0] for w in a.weights.values()} for name, a in loaded.items()}
    assert ranks == {"qv": {4}, "all": {8}, "mlp": {2, 6}}
    jobs: list[tuple[list[int], LoadedAdapter | None]] = [(PROMPTS[0], loaded[n]) for n in SPECS]
    got = await run_all(engine, jobs)
    for name, out in zip(SPECS, got, strict=True):
        assert out == hf_greedy(peft_adapters[name].merged, PROMPTS[0]), name
    assert max(mixes) == 3


async def test_prefix_kv_is_not_shared_across_adapters(
    engine: Engine,
    loaded: dict[str, LoadedAdapter],
    peft_adapters: dict[str, Adapter],
    hf_base: Any,
) -> None:
    got = await run_all(engine, [(LONG, loaded["qv"]), (LONG, loaded["all"]), (LONG, None)])
    assert got[0] == hf_greedy(peft_adapters["qv"].merged, LONG)
    assert got[1] == hf_greedy(peft_adapters["all"].merged, LONG)
    assert got[2] == hf_greedy(hf_base, LONG)
    assert engine.tokens_copied == 0
    # Under one adapter the prompt's KV is still shared.
    again = await run_all(engine, [(LONG, loaded["qv"]), (LONG, loaded["qv"])])
    assert again == [got[0], got[0]]
    assert engine.tokens_copied == len(LONG) - 1


def test_adapter_for_another_base_is_refused(
    peft_adapters: dict[str, Adapter], lora_model: Any
) -> None:
    a = peft_adapters["qv"]
    config = read_adapter_config(a.dir)
    good = tensors(a)

    def renamed(old: str, new: str) -> dict[str, torch.Tensor]:
        return {k.replace(old, new): v for k, v in good.items()}

    with pytest.raises(
        BadRequestError, match=r"another base architecture: module .*attn\.c_attn not in"
    ):
        LoadedAdapter.build("x", config, renamed("self_attn.q_proj", "attn.c_attn"), lora_model)
    with pytest.raises(BadRequestError, match="another base architecture"):
        # the adapter's q_proj delta is 128 wide, the base's k_proj 64
        LoadedAdapter.build(
            "x", config, renamed("self_attn.q_proj", "self_attn.k_proj"), lora_model
        )
    with pytest.raises(BadRequestError, match="not a Linear"):
        LoadedAdapter.build("x", config, renamed("self_attn.q_proj", "input_layernorm"), lora_model)
    with pytest.raises(BadRequestError, match="output head"):
        head = {k: v for k, v in good.items() if "layers.0.self_attn.q_proj" in k}
        LoadedAdapter.build(
            "x",
            config,
            {k.replace("model.layers.0.self_attn.q_proj", "lm_head"): v for k, v in head.items()},
            lora_model,
        )
    with pytest.raises(BadRequestError, match="rank"):
        LoadedAdapter.build("x", read_adapter_config(peft_adapters["all"].dir), good, lora_model)
    with pytest.raises(BadRequestError, match="not a LoRA weight"):
        LoadedAdapter.build(
            "x",
            config,
            {**good, "base_model.model.lm_head.weight": good[next(iter(good))]},
            lora_model,
        )


def test_built_adapter_holds_peft_weights(
    peft_adapters: dict[str, Adapter], loaded: dict[str, LoadedAdapter]
) -> None:
    adapter = loaded["all"]
    raw = tensors(peft_adapters["all"])
    w = adapter.weights["model.layers.1.mlp.down_proj"]
    assert torch.equal(w.a, raw["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"])
    assert w.scale == 16 / 8**0.5  # rsLoRA
    assert loaded["mlp"].weights["model.layers.0.mlp.down_proj"].scale == 4 / 6
    assert adapter.nbytes() == sum(t.numel() * 4 for t in raw.values())
    assert adapter.modules == {
        k.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        for k in raw
        if "lora_A" in k
    }


def test_hooks_leave_the_base_alone(lora_model: Any, loaded: dict[str, LoadedAdapter]) -> None:
    fwd = BatchForward(lora_model)

    def logits(adapter: LoadedAdapter | None) -> torch.Tensor:
        with torch.inference_mode():
            return fwd([Feed(SeqKV(16), PROMPTS[0], True, adapter)])

    base = logits(None)
    enable_lora(lora_model, loaded["all"].weights)
    enable_lora(lora_model, loaded["all"].weights)  # idempotent
    assert torch.equal(logits(None), base)
    adapted = logits(loaded["all"])
    assert not torch.allclose(adapted, base)
    disable_lora(lora_model)  # the hooks are gone: the next adapter step puts them back
    assert torch.equal(logits(None), base)
    assert torch.equal(logits(loaded["all"]), adapted)


def test_module_that_does_not_see_every_token_fails(
    lora_model: Any, loaded: dict[str, LoadedAdapter]
) -> None:
    enable_lora(lora_model, loaded["qv"].weights)
    q = lora_model.get_submodule("model.layers.0.self_attn.q_proj")
    with torch.inference_mode(), adapter_layout([(loaded["qv"], 0, 4)]):
        with pytest.raises(RuntimeError, match="3 rows, the step has 4 tokens"):
            q(torch.zeros(1, 3, 128))
        assert q(torch.zeros(1, 4, 128)).shape == (1, 4, 128)
