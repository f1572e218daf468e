"""Request checks and model limits, as pure functions of plain data."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from libs.protocol.errors import BadRequestError

if TYPE_CHECKING:
    from .sampling import Sampling

# Config attributes that name a model's context length, most common first.
_CONTEXT_ATTRS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def check_fits_context(prompt_tokens: int, max_tokens: int, context: int | None) -> None:
    """Prompt plus every token the request may produce must fit the model's context."""
    if context is not None and prompt_tokens + max_tokens > context:
        raise BadRequestError(
            f"prompt of {prompt_tokens} tokens + max_tokens {max_tokens} = "
            f"{prompt_tokens + max_tokens} exceeds the model's context of {context} tokens",
            detail={"prompt_tokens": prompt_tokens, "max_tokens": max_tokens, "context": context},
        )


def check_token_ids(ids: Sequence[int], vocab_size: int, what: str) -> None:
    """Every id must index the model's embedding table."""
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise BadRequestError(
            f"{what} holds token id {bad}, outside the model's vocabulary [0, {vocab_size})"
        )


def check_sampling(sampling: Sampling, vocab_size: int) -> None:
    """Token ids a request's sampling names must index the model's vocabulary."""
    check_token_ids([t for t, _ in sampling.logit_bias], vocab_size, "logit_bias")
    check_token_ids(sorted(sampling.stop_token_ids), vocab_size, "stop_token_ids")
    if sampling.top_logprobs > 0 and not sampling.logprobs:
        raise BadRequestError("top_logprobs needs logprobs")


def check_generated(generated: int, max_tokens: int) -> None:
    """Tokens produced elsewhere count toward ``max_tokens``; more than that is a caller bug."""
    if generated > max_tokens:
        raise BadRequestError(
            f"generated_token_ids has {generated} tokens, more than max_tokens {max_tokens}"
        )


def eos_ids(*sources: Any) -> frozenset[int]:
    """The union of end-of-sequence ids from config values that are an int, a list, or None."""
    out: set[int] = set()
    for value in sources:
        if isinstance(value, int) and not isinstance(value, bool):
            out.add(value)
        elif isinstance(value, Iterable) and not isinstance(value, str | bytes):
            out.update(v for v in value if isinstance(v, int) and not isinstance(v, bool))
    return frozenset(out)


def context_length(config: Any) -> int | None:
    """The model's maximum sequence length from its config, or None if it names none."""
    for attr in _CONTEXT_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def kv_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """Bytes of keys and values one token takes in every layer of a model with ``config``."""
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    kv_heads = int(getattr(config, "num_key_value_heads", 0) or heads)
    head_dim = getattr(config, "head_dim", None) or (
        int(getattr(config, "hidden_size", 0) or 0) // max(heads, 1)
    )
    if layers <= 0 or kv_heads <= 0 or head_dim <= 0:
        raise ValueError("the model config does not say its layers, heads and head size")
    return 2 * layers * kv_heads * int(head_dim) * dtype_bytes


def kv_budget_tokens(budget_bytes: int, per_token: int) -> int:
    """The KV budget in tokens: what ``budget_bytes`` holds (at least one token). A request
    whose prompt plus ``max_tokens`` exceeds it is refused, even when the model's context is
    longer: the operator's memory bound wins."""
    return max(budget_bytes // max(per_token, 1), 1)
