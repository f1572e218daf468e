"""Ragged batching for transformers models: one forward pass over many sequences of any length.

A step's input is every sequence's new tokens laid end to end (``[1, T]``, with each token's
absolute position), as vLLM and transformers' own continuous batching do. Everything but
attention (embeddings, projections, MLPs, the LM head) then runs once over the ``T`` tokens:
that is where batching pays, since the weights are read once per step instead of once per
sequence. Attention is the one place where sequences must not see each other: this module
registers an attention function with transformers (``AttentionInterface``) that writes each
sequence's new keys and values into that sequence's own KV store and attends, per sequence,
over exactly its own past (causal within a prefill chunk; sliding windows and logit soft-caps
as the layer asks).

Why not transformers' ``ContinuousBatchingManager``: it schedules on its own (no pausing one
sequence at a token boundary, no shadow prefill for a migration, no per-request seeded
sampling, logprobs or grammar masks), and its CPU path attends over the gathered KV of the
whole batch with a block-diagonal mask, which costs O(batch²) per step.

The model is called without a transformers cache (``use_cache=False``): the KV lives here, so
nothing depends on the cache classes' API, which transformers 5 is still changing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F
from transformers import AttentionInterface

ATTN_IMPLEMENTATION = "sllm_ragged"

# Growth of a sequence's KV store: at least this many tokens at a time (then doubling), so a
# decoding sequence re-allocates O(log n) times, never per token.
MIN_GROWTH = 64


class UnsupportedModelError(RuntimeError):
    """The model's attention asks for something this engine does not implement."""


class SeqKV:
    """One sequence's keys and values, per layer: ``[kv_heads, capacity, head_dim]`` tensors
    that grow by doubling, up to ``limit`` tokens (the budget the engine reserved for it)."""

    __slots__ = ("keys", "length", "limit", "values")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.length = 0  # tokens stored (in every layer once a step is over)
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> int:
        """Store ``[kv_heads, n, dim]`` keys/values after the first ``length`` tokens of
        ``layer``; returns how many tokens the layer then holds."""
        n = key.shape[1]
        end = self.length + n
        if end > self.limit:
            raise RuntimeError(f"KV store overflow: {end} tokens > {self.limit} reserved")
        k = self.keys.get(layer)
        v = self.values.get(layer)
        if k is None or v is None or k.shape[1] < end:
            cap = min(max(end, MIN_GROWTH, 2 * (k.shape[1] if k is not None else 0)), self.limit)
            k = _grown(k, self.length, key, cap)
            v = _grown(v, self.length, value, cap)
            self.keys[layer], self.values[layer] = k, v
        k[:, self.length : end] = key
        v[:, self.length : end] = value
        return end

    def copy_prefix(self, length: int, limit: int) -> SeqKV:
        """A store of its own for another sequence that starts with this one's first
        ``length`` tokens (a parallel sample of the same prompt, a shared prefix)."""
        if length > min(self.length, limit):
            raise ValueError(f"cannot copy {length} tokens of {self.length} into {limit}")
        out = SeqKV(limit)
        out.length = length
        cap = min(max(length, MIN_GROWTH), limit)
        for layer, k in self.keys.items():
            v = self.values[layer]
            out.keys[layer] = _grown(k, length, k, cap)
            out.values[layer] = _grown(v, length, v, cap)
        return out

    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values())
        )


def _grown(old: torch.Tensor | None, keep: int, like: torch.Tensor, cap: int) -> torch.Tensor:
    new = like.new_empty((like.shape[0], cap, like.shape[2]))
    if old is not None and keep:
        new[:, :keep] = old[:, :keep]
    return new


@dataclass(frozen=True)
class Segment:
    """``count`` consecutive tokens of the step's input, starting at ``start``, that belong to
    the sequence whose store is ``kv`` (which holds ``kv.length`` earlier tokens)."""

    kv: SeqKV
    start: int
    count: int


class _Step(threading.local):
    segments: tuple[Segment, ...] | None = None
    # Masks of this step's prefill chunks, by (tokens, past, first key, window, query heads per
    # key head): every layer
    # of the forward pass needs the same ones.
    masks: dict[tuple[int, int, int, int | None, int], torch.Tensor | None] | None = None


_STEP = _Step()


@contextlib.contextmanager
def step_layout(segments: tuple[Segment, ...]) -> Iterator[None]:
    """Makes ``segments`` the layout of the forward passes run inside the block, on this thread;
    afterwards (if nothing raised) every sequence's store counts its new tokens."""
    _STEP.segments, _STEP.masks = segments, {}
    try:
        yield
    finally:
        _STEP.segments = _STEP.masks = None
    for seg in segments:
        seg.kv.length += seg.count


def ragged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: ``query`` ``[1, heads, T, dim]``, ``key`` and
    ``value`` ``[1, kv_heads, T, dim]`` for the step's new tokens; returns ``[1, T, heads, dim]``."""
    segments = _STEP.segments
    if segments is None:
        raise RuntimeError("ragged attention called outside a step (no layout)")
    if kwargs.get("s_aux") is not None:
        raise UnsupportedModelError("attention sinks (s_aux) are not supported")
    layer = int(getattr(module, "layer_idx", 0))
    out = query.new_empty((query.shape[2], query.shape[1], value.shape[-1]))
    for seg in segments:
        s, n = seg.start, seg.count
        total = seg.kv.write(layer, key[0, :, s : s + n], value[0, :, s : s + n])
        past = total - n
        first = 0
        if sliding_window is not None and sliding_window > 0:
            first = max(0, past + 1 - sliding_window)  # earliest key the first query may see
        keys = seg.kv.keys[layer][:, first:total]
        values = seg.kv.values[layer][:, first:total]
        q = query[0, :, s : s + n]
        groups = q.shape[0] // keys.shape[0]
        mask = _step_mask(n, past, first, sliding_window, groups, query.device)
        out[s : s + n] = _attend(q, keys, values, mask, scaling, softcap).transpose(0, 1)
    return out.unsqueeze(0), None


def _step_mask(
    n: int, past: int, first: int, window: int | None, groups: int, device: torch.device
) -> torch.Tensor | None:
    """`_mask` for the ``groups`` query heads that share a key head, stacked (see `_attend`),
    built once per step for all layers."""
    masks = _STEP.masks
    key = (n, past, first, window, groups)
    if masks is None or key not in masks:
        mask = _mask(n, past, first, window)
        if mask is not None:
            mask = mask.repeat(groups, 1).to(device)
        if masks is None:
            return mask
        masks[key] = mask
    return masks[key]


def _mask(n: int, past: int, first: int, window: int | None) -> torch.Tensor | None:
    """Which of keys ``first..past+n`` each of the ``n`` new queries may see (None: all)."""
    if n == 1 and (window is None or window <= 0):
        return None
    q_pos = torch.arange(past, past + n).unsqueeze(1)
    k_pos = torch.arange(first, past + n).unsqueeze(0)
    allowed = k_pos <= q_pos
    if window is not None and window > 0:
        allowed &= k_pos > q_pos - window
    return allowed


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float | None,
    softcap: float | None,
) -> torch.Tensor:
    """Attention of ``q`` ``[heads, n, dim]`` over ``k``/``v`` ``[kv_heads, L, dim]``; ``mask``
    is ``[groups * n, L]`` (the ``n`` rows repeated for each query head of a key head).

    The query heads that share a key head (grouped-query attention) are stacked along the
    query axis, so that one plain 4-D attention call serves them: on a CPU that is 8-50x faster
    than ``enable_gqa`` (which falls back to a slow path) and 2-3x faster for prefill chunks.
    """
    heads, n, dim = q.shape
    kv_heads = k.shape[0]
    groups = heads // kv_heads
    qg = q.reshape(kv_heads, groups * n, dim)
    if softcap is None or softcap <= 0:
        out = F.scaled_dot_product_attention(
            qg.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_mask=mask, scale=scaling
        )[0]
    else:
        scale = scaling if scaling is not None else dim**-0.5
        scores = torch.matmul(qg, k.transpose(1, 2)) * scale
        scores = torch.tanh(scores / softcap) * softcap
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        out = torch.matmul(probs, v)
    return out.reshape(heads, n, v.shape[-1])


AttentionInterface.register(ATTN_IMPLEMENTATION, ragged_attention)


def use_ragged_attention(model: Any) -> None:
    """Switch ``model`` (and its sub-models) to the ragged attention function."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(ATTN_IMPLEMENTATION)
    else:  # pragma: no cover - every PreTrainedModel of transformers 5 has it
        model.config._attn_implementation = ATTN_IMPLEMENTATION
