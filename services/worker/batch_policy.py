"""The engine's admission and batch-composition rules, as pure functions of plain numbers.

Admission is first come, first served by free KV budget: a request that does not fit waits,
and so does everyone behind it (no overtaking, so a long prompt is never starved by short
ones). Each step then carries one token for every decoding sequence and shares a bounded
number of prompt tokens among the sequences being prefilled, oldest first (chunked prefill:
a long prompt costs every stream a little latency per step instead of one long stall).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one engine may hold and do per step."""

    max_batch: int  # sequences that join one forward pass
    kv_tokens: int  # KV cache budget, in tokens, over every admitted sequence
    prefill_chunk: int  # prompt tokens one step may feed (besides one per decoding sequence)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.kv_tokens < 1 or self.prefill_chunk < 1:
            raise ValueError(f"engine limits must be positive: {self}")


def admissible(waiting: Sequence[int], *, reserved: int, running: int, limits: Limits) -> int:
    """How many of the ``waiting`` requests (their KV reservations, in arrival order) start now,
    given the tokens already ``reserved`` and the sequences ``running``: strictly in order,
    while each fits."""
    n = 0
    for need in waiting:
        if running + n >= limits.max_batch or reserved + need > limits.kv_tokens:
            break
        reserved += need
        n += 1
    return n


def compose(feeds: Sequence[int], limits: Limits) -> list[int]:
    """Tokens each sequence feeds this step, from its pending ``feeds`` (in admission order).

    A one-token feed (a decode) always goes; longer feeds (prompts) share ``prefill_chunk``
    oldest first; at most ``max_batch`` sequences take part (the rest wait a step). Returns a
    count per sequence, 0 for those that sit this step out.
    """
    out = [0] * len(feeds)
    rows = 0
    for i, n in enumerate(feeds):
        if n == 1 and rows < limits.max_batch:
            out[i] = 1
            rows += 1
    budget = limits.prefill_chunk
    for i, n in enumerate(feeds):
        if n > 1 and budget > 0 and rows < limits.max_batch:
            out[i] = min(n, budget)
            budget -= out[i]
            rows += 1
    return out
