"""Transformers configs (model and generation) for the demo sizes."""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LlamaConfig

from libs.demo.sizes import DemoSize, canonical_dtype, demo_size
from libs.demo.vocab import BOS_TOKEN_ID, EOS_TOKEN_ID, PAD_TOKEN_ID

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def torch_dtype(dtype: str) -> torch.dtype:
    """Torch dtype of a dtype name or alias accepted by ``canonical_dtype``.

    Raises:
        DemoModelError: unsupported dtype.
    """
    return _TORCH_DTYPES[canonical_dtype(dtype)]


def demo_config(size: str | DemoSize, *, dtype: str | None = None) -> LlamaConfig:
    """Build the ``LlamaConfig`` of a demo size without creating any weights.

    Args:
        size: A key of ``DEMO_SIZES``, or a ``DemoSize`` for a custom shape.
        dtype: Override of the size's default dtype (``float32``, ``bfloat16``, ``float16``).

    Returns:
        A config whose special token ids match the demo tokenizer.

    Raises:
        DemoModelError: unknown size or dtype.
    """
    spec = demo_size(size)
    return LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        hidden_act="silu",
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.init_std,
        rms_norm_eps=1e-5,
        tie_word_embeddings=spec.tie_word_embeddings,
        rope_parameters=dict(spec.rope_parameters),
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        dtype=canonical_dtype(spec.dtype if dtype is None else dtype),
    )


def demo_generation_config() -> GenerationConfig:
    """Greedy-by-default generation settings whose token ids match the demo tokenizer."""
    return GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        do_sample=False,
    )
