"""convert_hf and load_model against transformers' own from_pretrained on a tiny Llama."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from libs.loader import (
    ConversionError,
    IncompatibleCheckpoint,
    LoadStats,
    convert_hf,
    load_checkpoint,
    load_model,
    read_index,
    save_checkpoint,
)

from .helpers import same_bytes

pytestmark = pytest.mark.unit

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def hf() -> Any:
    """transformers, untyped for mypy (its stubs are partial)."""
    import transformers

    return transformers


def tiny_llama(path: Path, *, tie: bool, dtype: torch.dtype = torch.float32) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    config = hf().LlamaConfig(
        vocab_size=160,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.5,  # at 0.02 greedy decoding repeats one token: equality would be trivial
        tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    model = hf().AutoModelForCausalLM.from_config(config).to(dtype)
    model.save_pretrained(path)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(
        ["the quick brown fox jumps over the lazy dog"] * 4, trainers.BpeTrainer(vocab_size=160)
    )
    hf().PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(path)
    return model


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def hf_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "tiny"
    tiny_llama(path, tie=request.param)
    return path


def assert_same_model(a: Any, b: Any) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert same_bytes(sa[k], sb[k]), k
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())
    assert ba.keys() == bb.keys()
    for k in ba:
        assert same_bytes(ba[k], bb[k]), k
    ids = torch.tensor([[3, 17, 42, 99, 5]])
    ga = a.generate(ids, max_new_tokens=12, do_sample=False)
    gb = b.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(ga, gb)
    assert len(set(ga[0, 5:].tolist())) > 2  # a real continuation, not one repeated token


def test_convert_then_load_model_equals_from_pretrained(hf_dir: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    ckpt = convert_hf(hf_dir, tmp_path / "sllm", progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] > 0
    names = {p.name for p in ckpt.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    assert not any(n.endswith(".safetensors") for n in names)
    assert hf().AutoTokenizer.from_pretrained(ckpt)("the fox")["input_ids"]

    ref = hf().AutoModelForCausalLM.from_pretrained(hf_dir)
    stats = LoadStats()
    model = load_model(ckpt, stats=stats)
    assert not model.training
    assert all(p.requires_grad for p in model.parameters())  # as from_pretrained's
    assert model.config.tie_word_embeddings == (
        model.lm_head.weight is model.model.embed_tokens.weight
    )
    assert_same_model(ref, model)
    # No copy: the parameters are the loaded views, inside the one load buffer or mapping.
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(storages) == 1


def test_a_prefill_keeping_the_last_logits_multiplies_the_head_without_copying_it(
    hf_dir: Path, tmp_path: Path
) -> None:
    """``logits_to_keep=1`` hands the LM head a ``[1, 1, hidden]`` slice: it must take one
    matrix product (``mm``), not a batched one over a contiguous copy of the whole head."""
    from torch.profiler import ProfilerActivity, profile

    model = load_model(convert_hf(hf_dir, tmp_path / "sllm"))
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(input_ids=ids, use_cache=True, logits_to_keep=1)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::mm" in ops
    assert "aten::bmm" not in ops


def test_load_model_of_a_saved_model_and_dtype_conversion(hf_dir: Path, tmp_path: Path) -> None:
    ref = hf().AutoModelForCausalLM.from_pretrained(hf_dir)
    ckpt = save_checkpoint(ref, tmp_path / "saved")
    assert_same_model(ref, load_model(ckpt, zero_copy=False))
    half = load_model(ckpt, dtype=torch.bfloat16)
    assert half.model.embed_tokens.weight.dtype == torch.bfloat16


def test_bf16_checkpoint_matches_from_pretrained(tmp_path: Path) -> None:
    src = tmp_path / "hf"
    tiny_llama(src, tie=False, dtype=torch.bfloat16)
    ckpt = convert_hf(src, tmp_path / "sllm")
    assert {t.dtype for t in read_index(ckpt).tensors} == {torch.bfloat16}
    assert_same_model(hf().AutoModelForCausalLM.from_pretrained(src), load_model(ckpt))


def test_load_model_rejects_a_checkpoint_missing_weights(hf_dir: Path, tmp_path: Path) -> None:
    tensors = load_checkpoint(convert_hf(hf_dir, tmp_path / "full"))
    partial = {k: v for k, v in tensors.items() if "layers.1." not in k}
    ckpt = save_checkpoint(
        partial, tmp_path / "partial", extra_files={"config.json": hf_dir / "config.json"}
    )
    with pytest.raises(IncompatibleCheckpoint, match="lacks"):
        load_model(ckpt)


def test_convert_bin_weights_only(tmp_path: Path) -> None:
    src = tmp_path / "bin"
    src.mkdir()
    state = {"a": torch.randn(4, 4), "b": torch.arange(10)}
    state["tied"] = state["a"]
    torch.save(state, src / "pytorch_model.bin")
    (src / "config.json").write_text("{}")
    ckpt = convert_hf(src, tmp_path / "out")
    loaded = load_checkpoint(ckpt)
    assert same_bytes(loaded["a"], state["a"])
    assert loaded["tied"] is loaded["a"]
    assert read_index(ckpt).metadata == {"source_format": "bin"}


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch /tmp/sllm-loader-pwned",))


def test_convert_never_unpickles_arbitrary_objects(tmp_path: Path) -> None:
    src = tmp_path / "evil"
    src.mkdir()
    with open(src / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    with pytest.raises(ConversionError):
        convert_hf(src, tmp_path / "out")
    assert not Path("/tmp/sllm-loader-pwned").exists()


def test_convert_rejects_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"no \*\.safetensors"):
        convert_hf(tmp_path, tmp_path / "out")
    (tmp_path / "model.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(ConversionError, match="header length"):
        convert_hf(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_hugging_face_directory_loads_as_it_is_equal_to_from_pretrained(hf_dir: Path) -> None:
    """The path that serves a model from its source while its sllm copy is made."""
    from libs.loader import load_model_safetensors

    ref = hf().AutoModelForCausalLM.from_pretrained(hf_dir)
    model, nbytes = load_model_safetensors(hf_dir)
    assert nbytes == sum(f.stat().st_size for f in hf_dir.glob("*.safetensors"))
    assert not model.training
    assert model.config.tie_word_embeddings == (
        model.lm_head.weight is model.model.embed_tokens.weight
    )
    assert_same_model(ref, model)


def test_a_directory_without_safetensors_is_refused(tmp_path: Path) -> None:
    from libs.loader import load_model_safetensors

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(IncompatibleCheckpoint, match=r"no \*\.safetensors"):
        load_model_safetensors(tmp_path)


def test_read_ahead_reads_every_byte_of_every_file(tmp_path: Path) -> None:
    from libs.loader import readahead

    sizes = [0, 1, readahead.BLOCK + 5, 3 * readahead.BUFFER + 7]
    paths = []
    for i, n in enumerate(sizes):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom(n))
        paths.append(p)
    assert readahead.read_ahead(paths, threads=3) == sum(sizes)
    assert readahead.read_ahead([]) == 0
