"""Tiny random-weight causal LMs of every common decoder-only architecture, built offline with
transformers' own config classes (for `test_architectures`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    OPTConfig,
    Phi3Config,
    Qwen2Config,
    Qwen2MoeConfig,
)

VOCAB = 512
WINDOW = 8  # sliding window of the windowed models: shorter than the longer test prompts
# Large random weights: at transformers' default 0.02 a random model repeats one token forever
# (equality would then prove nothing) and its logit gaps are tiny (near ties everywhere).
INIT = 0.5
# Token ids every config agrees on, all inside the vocabulary (the defaults of GPT-2 and Phi-3
# point past it).
SPECIAL: dict[str, Any] = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


@dataclass(frozen=True)
class Arch:
    name: str
    config: Callable[[], Any]  # a transformers PretrainedConfig
    exercises: str  # what the architecture brings that the ragged attention must honour


def _llama() -> Any:
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        initializer_range=INIT,
        **SPECIAL,
    )


def _gpt2() -> Any:
    return GPT2Config(
        vocab_size=VOCAB,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=256,
        # Each layer's scaling is then 1 / (sqrt(head_dim) * (layer + 1)): the `scaling` the
        # layer passes must be used, not the default.
        scale_attn_by_inverse_layer_idx=True,
        initializer_range=INIT,
        **SPECIAL,
    )


def _opt() -> Any:
    return OPTConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        word_embed_proj_dim=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        init_std=INIT,
        **SPECIAL,
    )


def _qwen2() -> Any:
    return Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=INIT,
        **SPECIAL,
    )


def _mistral() -> Any:
    return MistralConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        sliding_window=WINDOW,
        initializer_range=INIT,
        **SPECIAL,
    )


def _gemma2() -> Any:
    return Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,  # sliding, full
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        # Not head_dim: the layer's own scaling (query_pre_attn_scalar ** -0.5) must be used.
        query_pre_attn_scalar=32,
        max_position_embeddings=256,
        sliding_window=WINDOW,
        attn_logit_softcapping=10.0,  # low enough to bite on these weights
        final_logit_softcapping=15.0,
        # Tied, the embedding (scaled by sqrt(hidden)) dominates the residual stream of a random
        # model, which then repeats its last input token forever.
        tie_word_embeddings=False,
        initializer_range=INIT,
        **SPECIAL,
    )


def _phi3() -> Any:
    return Phi3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        original_max_position_embeddings=256,
        initializer_range=INIT,
        **SPECIAL,
    )


def _mixtral() -> Any:
    return MixtralConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=256,
        initializer_range=INIT,
        **SPECIAL,
    )


def _qwen2_moe() -> Any:
    return Qwen2MoeConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
        num_experts=4,
        num_experts_per_tok=2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=INIT,
        **SPECIAL,
    )


ARCHS = [
    Arch("llama", _llama, "RoPE, grouped-query attention, SwiGLU, RMSNorm"),
    Arch(
        "gpt2",
        _gpt2,
        "learned absolute positions, fused c_attn (Conv1D), per-layer attention scaling, tied LM head",
    ),
    Arch("opt", _opt, "learned positions with OPT's +2 offset, ReLU MLP"),
    Arch("qwen2", _qwen2, "q/k/v biases, grouped-query attention"),
    Arch("mistral", _mistral, "sliding window on every layer"),
    Arch(
        "gemma2",
        _gemma2,
        "sliding window on alternate layers, attention and final logit soft-capping, "
        "query_pre_attn_scalar scaling, embedding scaling",
    ),
    Arch("phi3", _phi3, "fused qkv_proj and gate_up_proj"),
    Arch("mixtral", _mixtral, "mixture of experts: top-2 of 4 experts, fused at load"),
    Arch("qwen2_moe", _qwen2_moe, "mixture of experts with a gated shared expert, q/k/v biases"),
]


def build(arch: Arch, root: Path) -> Path:
    """Write a tiny random-weight ``arch`` model (fp32, safetensors) under ``root``."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
        arch.config(), dtype=torch.float32
    )
    path = root / arch.name
    model.save_pretrained(path)
    return path


def load(path: Path, attn_implementation: str | None = None) -> Any:
    """The model at ``path`` in eval mode, fp32."""
    model: Any = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=attn_implementation
    )
    model.generation_config.eos_token_id = None  # generate until max_new_tokens
    return model.eval()
