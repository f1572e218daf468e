"""One forward pass over a ragged batch, and the choice of each sequence's next token.

`BatchForward` turns "these sequences feed these tokens" into one call of the model (see
`ragged.py`) and returns the logits of the rows that need a next token; each sequence may go
through its own LoRA adapter (`lora.py`). `choose` picks a token per row: rows that are plain
greedy share one argmax over the batch; the others go through their own processors and seeded
sampling (`sampling.py`).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .lora import AdapterSegment, LoadedAdapter, adapter_layout, enable_lora
from .ragged import Segment, SeqKV, step_layout, use_ragged_attention
from .sampling import History, Sampling, choose_token, process_logits, token_logprobs


@dataclass(frozen=True)
class Feed:
    """``tokens`` go into ``kv`` at absolute positions ``kv.length`` onwards; ``logits``: the
    step must return the logits after the last of them; ``adapter``: the LoRA adapter these
    tokens go through (None: the base alone)."""

    kv: SeqKV
    tokens: Sequence[int]
    logits: bool
    adapter: LoadedAdapter | None = None


@dataclass(frozen=True)
class Choice:
    """What the logits of one row must yield."""

    sampling: Sampling
    position: int  # absolute position of the token being chosen (its random stream)
    produced: int  # tokens the sequence generated so far (for min_tokens)
    end_ids: frozenset[int]  # ids min_tokens holds back (end of sequence, stop ids)
    history: History | None = None
    mask: torch.Tensor | None = None  # bool [vocab]: tokens allowed (a grammar); None: all


@dataclass(frozen=True)
class Chosen:
    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


class BatchForward:
    """Runs ``model`` on ragged batches (its attention switched to `ragged.ragged_attention`).

    LoRA: a step that feeds an adapter first hooks the modules it adapts (`lora.enable_lora`,
    which does nothing for modules already hooked), so callers only put adapters (built for
    this model) into their feeds."""

    def __init__(self, model: Any) -> None:
        use_ragged_attention(model)
        self.model = model
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self._keep = "logits_to_keep" in params

    def __call__(self, feeds: Sequence[Feed]) -> torch.Tensor:
        """Logits ``[rows, vocab]`` for the feeds that ask for them, in order."""
        ids: list[int] = []
        positions: list[int] = []
        segments: list[Segment] = []
        rows: list[int] = []
        adapters: list[AdapterSegment] = []
        for f in feeds:
            start = len(ids)
            segments.append(Segment(f.kv, start, len(f.tokens)))
            adapters.append((f.adapter, start, len(f.tokens)))
            ids.extend(f.tokens)
            positions.extend(range(f.kv.length, f.kv.length + len(f.tokens)))
            if f.logits:
                rows.append(len(ids) - 1)
        kwargs: dict[str, Any] = {}
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        if self._keep:
            kwargs["logits_to_keep"] = index
        with step_layout(tuple(segments)), self._adapters(adapters):
            out = self.model(
                input_ids=torch.tensor([ids], device=self.device),
                position_ids=torch.tensor([positions], device=self.device),
                use_cache=False,
                **kwargs,
            )
        logits: torch.Tensor = out.logits[0]
        if not self._keep:
            logits = logits.index_select(0, index)
        return logits

    def _adapters(self, segments: list[AdapterSegment]) -> contextlib.AbstractContextManager[None]:
        """The step's `adapter_layout`, or nothing when no feed has an adapter (the base's own
        speed: the hooks then return at once)."""
        present = {a for a, _, _ in segments if a is not None}
        if not present:
            return contextlib.nullcontext()
        for adapter in present:  # a few dict lookups per module once hooked
            enable_lora(self.model, adapter.weights)
        return adapter_layout(segments)


def choose(logits: torch.Tensor, choices: Sequence[Choice]) -> list[Chosen]:
    """The next token of every row of ``logits`` (one `Choice` per row)."""
    out: list[Chosen | None] = [None] * len(choices)
    plain = [i for i, c in enumerate(choices) if c.sampling.plain and c.mask is None]
    if plain:
        index = torch.tensor(plain, device=logits.device)
        picks = logits.index_select(0, index).argmax(dim=-1).tolist()
        for i, token in zip(plain, picks, strict=True):
            out[i] = Chosen(int(token))
    for i, c in enumerate(choices):
        if out[i] is None:
            out[i] = _choose_row(logits[i], c)
    return [c for c in out if c is not None]


def _choose_row(raw: torch.Tensor, c: Choice) -> Chosen:
    s = c.sampling
    row = process_logits(raw, s, produced=c.produced, end_ids=c.end_ids, history=c.history)
    if c.mask is not None:
        row = row.masked_fill(~c.mask[: row.shape[0]].to(row.device), float("-inf"))
    token = choose_token(row, s, c.position)
    if not s.logprobs:
        return Chosen(token)
    logprob, top = token_logprobs(raw, token, s.top_logprobs)
    return Chosen(token, logprob, top)
