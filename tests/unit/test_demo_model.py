"""Unit tests for the locally built deterministic demo model (libs.demo)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from libs.demo import (
    DEMO_SIZES,
    DemoModelError,
    build_tokenizer,
    demo_config,
    demo_param_count,
    demo_tensor_shapes,
    read_marker,
    save_tokenizer,
    write_demo_model,
)
from libs.demo import weights as demo_weights
from libs.demo import writer as demo_writer
from libs.demo.__main__ import main
from libs.demo.bpe import trained_tokenizer_json
from libs.demo.vocab import (
    BOS_TOKEN_ID,
    EOS_TOKEN_ID,
    IM_END,
    IM_START,
    PAD_TOKEN_ID,
    TOKENIZER_VOCAB_SIZE,
)

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]

TRICKY_TEXTS = [
    "",
    " ",
    "   three leading spaces",
    "trailing spaces   ",
    "\n\nblank lines\r\nand\ttabs\n",
    "héllo wörld, ça va? Ångström",
    "emoji 🙂🚀 and a family 👩\u200d👩\u200d👧 and flags 🇩🇪",
    "日本語のテキストと中文和한국어",
    "nbsp\u00a0zero-width\u200bjoiner\u200d and bidi \u202etxet\u202c",
    "control \x00\x01\x7f bytes",
    "literal <|im_end|> and <|endoftext|> text",
    "    def f(x):\n        return x ** 2  # comment\n",
    "x" * 500,
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_model(tmp_path_factory.mktemp("demo") / "tiny")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    return _load_tokenizer(tiny_dir)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _load_model(path: Path) -> Any:
    # transformers' annotations are too loose for strict mypy on generate() and friends.
    return AutoModelForCausalLM.from_pretrained(path)


def _load_tokenizer(path: Path) -> Any:
    return AutoTokenizer.from_pretrained(path)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _greedy(model_dir: Path, prompt: str, n: int) -> list[int]:
    model = _load_model(model_dir)
    tok = _load_tokenizer(model_dir)
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    generated: list[int] = out[0, enc["input_ids"].shape[1] :].tolist()
    return generated


def test_tiny_loads_and_greedy_continuation_is_varied(tiny_dir: Path) -> None:
    first = _greedy(tiny_dir, "The lighthouse keeper", 24)
    assert len(first) == 24
    # A random model at the default init scale repeats one token; ours must not.
    assert len(set(first)) >= 8
    assert _greedy(tiny_dir, "The lighthouse keeper", 24) == first
    model = _load_model(tiny_dir)
    assert model.dtype == torch.float32
    assert model.config.vocab_size == TOKENIZER_VOCAB_SIZE
    assert model.num_parameters() == demo_param_count("tiny")


def test_same_seed_is_byte_identical_and_other_seed_differs(tiny_dir: Path, tmp_path: Path) -> None:
    again = write_demo_model(tmp_path / "again", "tiny", 0)
    other = write_demo_model(tmp_path / "other", "tiny", 1)
    assert _files(again) == _files(tiny_dir)
    reference, changed = _files(tiny_dir), _files(other)
    assert changed["model.safetensors"] != reference["model.safetensors"]
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert changed[name] == reference[name]
    assert _greedy(other, "The lighthouse keeper", 16) != _greedy(
        tiny_dir, "The lighthouse keeper", 16
    )


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_tokenizer_round_trips_exactly(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert all(0 <= i < TOKENIZER_VOCAB_SIZE for i in ids)
    if text and "<|" not in text:
        assert BOS_TOKEN_ID not in ids  # encoding never adds special tokens by itself


def test_tokenizer_matches_in_memory_build_and_config(tokenizer, tiny_dir: Path) -> None:
    fresh = build_tokenizer()
    sample = "Hello, world! 🙂\n  indented"
    assert fresh.encode(sample) == tokenizer.encode(sample)
    assert len(tokenizer) == TOKENIZER_VOCAB_SIZE
    assert tokenizer.eos_token == IM_END
    assert tokenizer.pad_token == "<|endoftext|>"
    config = json.loads((tiny_dir / "config.json").read_text())
    generation = json.loads((tiny_dir / "generation_config.json").read_text())
    for key, expected in (
        ("bos_token_id", BOS_TOKEN_ID),
        ("eos_token_id", EOS_TOKEN_ID),
        ("pad_token_id", PAD_TOKEN_ID),
    ):
        assert config[key] == generation[key] == expected
    assert tokenizer.eos_token_id == EOS_TOKEN_ID
    assert tokenizer.pad_token_id == PAD_TOKEN_ID
    assert tokenizer.bos_token_id == BOS_TOKEN_ID
    assert generation["do_sample"] is False
    # Spelled so that transformers 4.x loads the directory too.
    tokenizer_config = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["additional_special_tokens"] == [IM_START]
    assert (config["rope_theta"], config["rope_scaling"]) == (10000.0, None)
    assert "token_type_ids" not in tokenizer("hi")


def test_chat_template_renders_chatml(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        f"{IM_START}system\nBe brief.{IM_END}\n"
        f"{IM_START}user\nHi there{IM_END}\n"
        f"{IM_START}assistant\n"
    )
    closed = tokenizer.apply_chat_template(messages, tokenize=False)
    assert closed.endswith(f"{IM_END}\n")
    assert not closed.endswith("assistant\n")
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = encoded["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_START)) == 3
    assert ids.count(EOS_TOKEN_ID) == 2
    assert tokenizer.decode(ids) == text
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi there"}]}]
    assert tokenizer.apply_chat_template(parts, tokenize=False) == (
        f"{IM_START}user\nHi there{IM_END}\n"
    )


def test_rejects_bad_arguments_and_foreign_targets(tmp_path: Path) -> None:
    with pytest.raises(DemoModelError, match="unknown demo model size"):
        write_demo_model(tmp_path / "a", "huge")
    with pytest.raises(DemoModelError, match="dtype"):
        write_demo_model(tmp_path / "a", "tiny", dtype="int8")
    with pytest.raises(DemoModelError, match="seed"):
        write_demo_model(tmp_path / "a", "tiny", -1)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(DemoModelError, match="not a demo model"):
        write_demo_model(foreign)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DemoModelError, match="not a directory"):
        write_demo_model(a_file)
    with pytest.raises(DemoModelError):
        demo_config("huge")
    assert issubclass(DemoModelError, ValueError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "foreign"]
    assert (foreign / "keep.txt").read_text() == "mine"


def test_1b_config_has_llama_3_2_1b_shapes() -> None:
    config = demo_config("1b")
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (
        2048,
        16,
        8192,
    )
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (32, 8, 64)
    assert config.vocab_size == 128256 > TOKENIZER_VOCAB_SIZE
    assert config.tie_word_embeddings is True
    assert config.rope_parameters == {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
    }
    shapes = demo_tensor_shapes("1b")
    assert "lm_head.weight" not in shapes
    assert shapes["model.embed_tokens.weight"] == (128256, 2048)
    assert shapes["model.layers.15.self_attn.k_proj.weight"] == (512, 2048)
    assert shapes["model.layers.15.mlp.down_proj.weight"] == (2048, 8192)
    assert demo_param_count("1b") == 1_235_814_400
    # The hand-written shape table is exactly what transformers builds (on meta: no memory).
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert {k: tuple(v.shape) for k, v in model.named_parameters()} == shapes
    assert demo_param_count("3b") == 3_212_749_824
    assert demo_param_count("8b") == 8_030_261_248
    eight = demo_config("8b")
    assert (eight.hidden_size, eight.num_hidden_layers, eight.intermediate_size) == (
        4096,
        32,
        14336,
    )
    assert eight.tie_word_embeddings is False
    assert "lm_head.weight" in demo_tensor_shapes("8b")
    assert {spec.dtype for spec in DEMO_SIZES.values() if spec.streamed} == {"bfloat16"}


def test_small_writes_and_loads(tmp_path: Path) -> None:
    path = write_demo_model(tmp_path / "small", "small", seed=3)
    model = _load_model(path)
    assert model.config.hidden_size == 256
    assert model.config.num_hidden_layers == 4
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert model.num_parameters() == demo_param_count("small")
    generated = _greedy(path, "def load_config(path):", 12)
    assert len(set(generated)) > 1
    assert read_marker(path) == {
        "generator": "sllm.demo",
        "format_version": 2,
        "size": "small",
        "seed": 3,
        "dtype": "float32",
        "num_parameters": demo_param_count("small"),
    }


def test_dtype_override(tmp_path: Path) -> None:
    path = write_demo_model(tmp_path / "bf16", "tiny", dtype="bf16")
    model = _load_model(path)
    assert model.dtype == torch.bfloat16
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"


def test_rewrite_replaces_other_demo_models_and_keeps_identical_ones(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()  # an empty directory is fair game
    write_demo_model(target)
    weights = target / "model.safetensors"
    before = weights.stat()
    write_demo_model(target)
    assert weights.stat().st_ino == before.st_ino  # same model: left untouched
    write_demo_model(target, seed=5)
    marker = read_marker(target)
    assert marker is not None
    assert marker["seed"] == 5
    assert weights.stat().st_ino != before.st_ino
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging leftovers
    umask = demo_writer._umask()
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask
    assert weights.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_build_leaves_previous_model_and_no_leftovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = write_demo_model(tmp_path / "model")
    snapshot = _files(target)

    def explode(directory: Path, *args: object) -> None:
        (directory / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("crash mid-write")

    monkeypatch.setattr(demo_writer, "_build_instantiated", explode)
    with pytest.raises(RuntimeError, match="crash mid-write"):
        write_demo_model(target, seed=9)
    with pytest.raises(RuntimeError, match="crash mid-write"):
        write_demo_model(tmp_path / "fresh")
    assert _files(target) == snapshot
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_streamed_weights_are_deterministic_sharded_and_parallel_safe(tmp_path: Path) -> None:
    shapes = {
        "a.norm.weight": (64,),
        "b": (300, 256),
        "big": (demo_weights.CHUNK_ELEMENTS + 17,),
        "c": (7, 3, 5),
    }
    one, many = tmp_path / "one", tmp_path / "many"
    for directory, workers in ((one, 1), (many, 3)):
        directory.mkdir()
        demo_weights.write_random_safetensors(
            directory,
            shapes,
            dtype=torch.bfloat16,
            seed=11,
            std=0.02,
            ones=["a.norm.weight"],
            max_shard_bytes=200_000,
            workers=workers,
        )
    assert _files(one) == _files(many)
    index = json.loads((one / demo_weights.INDEX_FILE).read_text())
    assert sorted(index["weight_map"]) == sorted(shapes)
    assert len(set(index["weight_map"].values())) == 3
    loaded: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(one / shard), framework="pt") as handle:
            assert handle.metadata() == {"format": "pt"}
            loaded.update({k: handle.get_tensor(k) for k in handle.keys()})  # noqa: SIM118
    assert {k: tuple(v.shape) for k, v in loaded.items()} == shapes
    assert index["metadata"]["total_size"] == sum(v.numel() * 2 for v in loaded.values())
    assert torch.equal(loaded["a.norm.weight"], torch.ones(64, dtype=torch.bfloat16))
    big = loaded["big"].float()
    assert torch.isfinite(big).all()
    assert 0.018 < big.std().item() < 0.022
    # Chunks have their own seeds: the two halves of the big tensor must not repeat each other.
    assert not torch.equal(big[:17], big[demo_weights.CHUNK_ELEMENTS :])


def test_streamed_build_loads_with_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The 1b/3b/8b path at tiny scale: untied head, bf16, forced into several shards.
    spec = dataclasses.replace(
        DEMO_SIZES["tiny"], name="tiny-streamed", streamed=True, tie_word_embeddings=False
    )
    monkeypatch.setattr(demo_weights, "MAX_SHARD_BYTES", 300_000)
    demo_writer._build_streamed(tmp_path, spec, 0, "bfloat16")
    assert (tmp_path / demo_weights.INDEX_FILE).exists()
    save_tokenizer(tmp_path)
    model = _load_model(tmp_path)
    assert model.dtype == torch.bfloat16
    assert model.num_parameters() == demo_param_count(spec)
    index = json.loads((tmp_path / demo_weights.INDEX_FILE).read_text())
    shard = tmp_path / index["weight_map"]["lm_head.weight"]
    with safe_open(str(shard), framework="pt") as handle:
        assert torch.equal(handle.get_tensor("lm_head.weight"), model.lm_head.weight)
    enc = _load_tokenizer(tmp_path)("Hello", return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    assert torch.isfinite(logits.float()).all()


def test_both_build_paths_agree_and_leave_global_rng_alone(tmp_path: Path) -> None:
    state = torch.get_rng_state()
    instantiated = write_demo_model(tmp_path / "instantiated", "tiny", 4)
    assert torch.equal(torch.get_rng_state(), state)
    streamed = tmp_path / "streamed"
    streamed.mkdir()
    spec = dataclasses.replace(DEMO_SIZES["tiny"], streamed=True)
    demo_writer._build_streamed(streamed, spec, 4, "float32")
    a = load_file(instantiated / "model.safetensors")
    b = load_file(streamed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_concurrent_writers_of_one_target_all_succeed(tmp_path: Path) -> None:
    target = tmp_path / "shared"
    with ThreadPoolExecutor(max_workers=3) as pool:
        paths = list(pool.map(lambda _: write_demo_model(target, "tiny", 2), range(3)))
    assert paths == [target.resolve()] * 3
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]
    assert _files(target) == _files(write_demo_model(tmp_path / "reference", "tiny", 2))


def test_symlinked_target_is_written_through(tmp_path: Path) -> None:
    real = tmp_path / "real"
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    assert write_demo_model(link) == real.resolve()
    assert link.is_symlink()
    assert read_marker(link) is not None


def test_cli_writes_a_loadable_model(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "cli"
    assert main([str(target), "--size", "tiny", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert str(target) in out
    assert f"{demo_param_count('tiny'):,} parameters" in out
    assert _files(target) == _files(tiny_dir)
    tok = _load_tokenizer(target)
    model = _load_model(target)
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "hello"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        generated = model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape[1] == enc["input_ids"].shape[1] + 4


def test_tokenizer_training_is_identical_across_processes() -> None:
    # Rust hash maps are seeded per process, so only a fresh process shows hash-order effects.
    code = (
        "import hashlib; from libs.demo.bpe import trained_tokenizer_json as t; "
        "print(hashlib.sha256(t().encode()).hexdigest())"
    )
    digests = set()
    for hash_seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        digests.add(result.stdout.strip())
    assert digests == {hashlib.sha256(trained_tokenizer_json().encode()).hexdigest()}


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk").write_text("x")
    assert main([str(tmp_path)]) == 2
    assert "not a demo model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x"), "--size", "huge"])


def test_size_tables_import_without_torch() -> None:
    code = "import sys, libs.demo as d; d.DEMO_SIZES['1b']; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "False"
