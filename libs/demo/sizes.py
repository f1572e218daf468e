"""Demo model sizes and their checkpoint tensor shapes (no torch import, cheap to load)."""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field

from libs.demo.errors import DemoModelError
from libs.demo.vocab import TOKENIZER_VOCAB_SIZE

_LLAMA3_VOCAB = 128256

DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")
"""Canonical names of the dtypes a demo model can be written in."""

_DTYPE_ALIASES: Mapping[str, str] = types.MappingProxyType(
    {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
)


def _default_rope() -> dict[str, float | int | str]:
    return {"rope_type": "default", "rope_theta": 10000.0}


def _llama3_rope(factor: float) -> dict[str, float | int | str]:
    return {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": factor,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
    }


@dataclass(frozen=True)
class DemoSize:
    """Shape and build recipe of one demo model size.

    ``streamed`` sizes are written tensor by tensor from seeded generators (no model is
    instantiated, so memory stays bounded); the others are instantiated with transformers'
    own initialisation and saved with ``save_pretrained``.
    """

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    dtype: str
    init_std: float
    streamed: bool
    rope_parameters: Mapping[str, float | int | str] = field(default_factory=_default_rope)
    description: str = ""

    @property
    def head_dim(self) -> int:
        """Per-head width: hidden size over attention heads."""
        return self.hidden_size // self.num_attention_heads


DEMO_SIZES: Mapping[str, DemoSize] = types.MappingProxyType(
    {
        "tiny": DemoSize(
            name="tiny",
            hidden_size=128,
            intermediate_size=384,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=TOKENIZER_VOCAB_SIZE,
            tie_word_embeddings=True,
            max_position_embeddings=4096,
            dtype="float32",
            # At the usual 0.02 a random model greedily repeats one token forever.
            init_std=0.5,
            streamed=False,
            description="0.5M params, fp32, tied head, ~1 ms/token on 2 CPU cores: tests",
        ),
        "small": DemoSize(
            name="small",
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            vocab_size=TOKENIZER_VOCAB_SIZE,
            tie_word_embeddings=False,
            max_position_embeddings=4096,
            dtype="float32",
            init_std=0.5,
            streamed=False,
            description="3.7M params, fp32, untied head: tests and demos",
        ),
        "medium": DemoSize(
            name="medium",
            hidden_size=1024,
            intermediate_size=2816,
            num_hidden_layers=8,
            num_attention_heads=16,
            num_key_value_heads=4,
            vocab_size=TOKENIZER_VOCAB_SIZE,
            tie_word_embeddings=True,
            max_position_embeddings=4096,
            dtype="float32",
            init_std=0.02,
            streamed=False,
            description="90M params, fp32, 0.36 GB: many-model trace benchmark",
        ),
        "1b": DemoSize(
            name="1b",
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=_LLAMA3_VOCAB,
            tie_word_embeddings=True,
            max_position_embeddings=131072,
            dtype="bfloat16",
            # Big sizes only feed load benchmarks; a realistic scale keeps activations finite.
            init_std=0.02,
            streamed=True,
            rope_parameters=_llama3_rope(32.0),
            description="Llama-3.2-1B shapes, bf16, 2.5 GB in one file: load benchmarks",
        ),
        "3b": DemoSize(
            name="3b",
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=28,
            num_attention_heads=24,
            num_key_value_heads=8,
            vocab_size=_LLAMA3_VOCAB,
            tie_word_embeddings=True,
            max_position_embeddings=131072,
            dtype="bfloat16",
            init_std=0.02,
            streamed=True,
            rope_parameters=_llama3_rope(32.0),
            description="Llama-3.2-3B shapes, bf16, 6.4 GB in 2 shards: load benchmarks",
        ),
        "8b": DemoSize(
            name="8b",
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=_LLAMA3_VOCAB,
            tie_word_embeddings=False,
            max_position_embeddings=131072,
            dtype="bfloat16",
            init_std=0.02,
            streamed=True,
            rope_parameters=_llama3_rope(8.0),
            description="Llama-3.1-8B shapes, bf16, 16 GB in 4 shards: load benchmarks",
        ),
    }
)
"""Known demo sizes by name, smallest first."""


def demo_size(size: str | DemoSize) -> DemoSize:
    """Look up a size by name; a ``DemoSize`` passes through unchanged.

    Raises:
        DemoModelError: ``size`` is not one of ``DEMO_SIZES``.
    """
    if isinstance(size, DemoSize):
        return size
    try:
        return DEMO_SIZES[size]
    except (KeyError, TypeError):
        known = ", ".join(DEMO_SIZES)
        raise DemoModelError(f"unknown demo model size {size!r} (known: {known})") from None


def canonical_dtype(dtype: str) -> str:
    """Canonical name of a dtype (``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``).

    Raises:
        DemoModelError: not a supported floating-point dtype.
    """
    name = _DTYPE_ALIASES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if name not in DTYPE_NAMES:
        known = ", ".join([*DTYPE_NAMES, *_DTYPE_ALIASES])
        raise DemoModelError(f"unsupported demo model dtype {dtype!r} (known: {known})")
    return name


def demo_tensor_shapes(size: str | DemoSize) -> dict[str, tuple[int, ...]]:
    """Checkpoint tensor names and shapes of a demo size (name or spec), in module order.

    Tied sizes store only ``model.embed_tokens.weight`` (no ``lm_head.weight``), as the
    real Llama-3.2 checkpoints do.

    Raises:
        DemoModelError: unknown size.
    """
    spec = demo_size(size)
    hidden, inter = spec.hidden_size, spec.intermediate_size
    q_out = spec.num_attention_heads * spec.head_dim
    kv_out = spec.num_key_value_heads * spec.head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (spec.vocab_size, hidden)}
    for i in range(spec.num_hidden_layers):
        layer = f"model.layers.{i}"
        shapes[f"{layer}.input_layernorm.weight"] = (hidden,)
        shapes[f"{layer}.self_attn.q_proj.weight"] = (q_out, hidden)
        shapes[f"{layer}.self_attn.k_proj.weight"] = (kv_out, hidden)
        shapes[f"{layer}.self_attn.v_proj.weight"] = (kv_out, hidden)
        shapes[f"{layer}.self_attn.o_proj.weight"] = (hidden, q_out)
        shapes[f"{layer}.post_attention_layernorm.weight"] = (hidden,)
        shapes[f"{layer}.mlp.gate_proj.weight"] = (inter, hidden)
        shapes[f"{layer}.mlp.up_proj.weight"] = (inter, hidden)
        shapes[f"{layer}.mlp.down_proj.weight"] = (hidden, inter)
    shapes["model.norm.weight"] = (hidden,)
    if not spec.tie_word_embeddings:
        shapes["lm_head.weight"] = (spec.vocab_size, hidden)
    return shapes


def demo_param_count(size: str | DemoSize) -> int:
    """Number of parameters of a demo size, name or spec (tied embeddings counted once).

    Raises:
        DemoModelError: unknown size.
    """
    return sum(math.prod(shape) for shape in demo_tensor_shapes(size).values())
