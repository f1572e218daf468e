"""Next-token choice for one sequence: the request's logits processors (bias, penalties,
min_tokens), then greedy or temperature sampling with top-k / top-p / min-p, whose randomness is
a pure function of (seed, position), so a generation resumed on another worker continues
exactly. Everything here is per sequence: nothing depends on the rest of the batch.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from libs.protocol.messages import SamplingParams

_MASK63 = (1 << 63) - 1


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens; ``temperature == 0`` is greedy. The defaults change
    nothing (OpenAI's and vLLM's meanings)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0  # end-of-sequence and stop tokens are masked before this many tokens
    ignore_eos: bool = False  # the model's end-of-sequence token does not end the generation
    stop_token_ids: frozenset[int] = frozenset()
    logprobs: bool = False
    top_logprobs: int = 0

    @classmethod
    def of(cls, p: SamplingParams, seed: int) -> Sampling:
        """The worker's form of a request's sampling parameters, with the seed it uses."""
        return cls(
            temperature=p.temperature,
            top_p=p.top_p,
            seed=seed,
            top_k=p.top_k,
            min_p=p.min_p,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            repetition_penalty=p.repetition_penalty,
            logit_bias=tuple((b.token_id, b.bias) for b in p.logit_bias),
            min_tokens=p.min_tokens,
            ignore_eos=p.ignore_eos,
            stop_token_ids=frozenset(p.stop_token_ids),
            logprobs=p.logprobs or p.top_logprobs > 0,
            top_logprobs=p.top_logprobs,
        )

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalised(self) -> bool:
        """Whether the tokens so far change the logits (the sequence keeps a history)."""
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )

    @property
    def plain(self) -> bool:
        """Greedy on the raw logits: an argmax over the whole batch does for this row."""
        return (
            self.greedy
            and not self.penalised
            and not self.logit_bias
            and not self.min_tokens
            and not self.logprobs
        )


def random_seed() -> int:
    """A seed for a request that did not bring one."""
    return secrets.randbits(63)


def position_seed(seed: int, position: int) -> int:
    """The generator seed for sampling the token at absolute ``position`` of a sequence.

    A hash rather than ``seed + position``: neighbouring (seed, position) pairs must not share
    random streams, and requests with seeds s and s+1 must not be shifted copies of each other.
    """
    digest = hashlib.blake2b(struct.pack("<QQ", seed & ((1 << 64) - 1), position), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & _MASK63


class History:
    """The tokens a sequence's penalties look at: the prompt (repetition penalty) and the
    generated tokens with their counts (presence and frequency penalties, OpenAI's formula:
    ``logit -= frequency * count + presence * (count > 0)``)."""

    def __init__(self, vocab: int, prompt: Iterable[int], device: torch.device) -> None:
        self.counts = torch.zeros(vocab, dtype=torch.float32, device=device)
        self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        ids = [i for i in prompt if 0 <= i < vocab]
        if ids:
            self.seen[torch.tensor(ids, device=device)] = True

    def add(self, token: int) -> None:
        if 0 <= token < self.counts.shape[0]:
            self.counts[token] += 1
            self.seen[token] = True

    def apply(self, logits: torch.Tensor, s: Sampling) -> None:
        """Penalise ``logits`` (float32, one row) in place."""
        if s.repetition_penalty != 1.0:
            # HF/vLLM's repetition penalty: positive logits shrink, negative ones grow.
            seen = logits[self.seen]
            logits[self.seen] = torch.where(
                seen > 0, seen / s.repetition_penalty, seen * s.repetition_penalty
            )
        if s.frequency_penalty != 0.0:
            logits -= s.frequency_penalty * self.counts
        if s.presence_penalty != 0.0:
            logits -= s.presence_penalty * (self.counts > 0).float()


def process_logits(
    logits: torch.Tensor,
    s: Sampling,
    *,
    produced: int,
    end_ids: frozenset[int],
    history: History | None,
) -> torch.Tensor:
    """The request's logits processors on one row (float32, a copy): logit bias, penalties,
    and, before ``min_tokens`` tokens, a ban on ``end_ids`` (end-of-sequence and stop ids)."""
    out = logits.float().clone()
    vocab = out.shape[0]
    for token, bias in s.logit_bias:
        if token < vocab:
            out[token] += bias
    if history is not None:
        history.apply(out, s)
    if produced < s.min_tokens:
        banned = [t for t in end_ids if t < vocab]
        if banned:
            out[torch.tensor(banned, device=out.device)] = float("-inf")
    return out


def top_p_filter(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of descending-sorted probabilities outside the nucleus ``top_p``.

    The nucleus is the smallest prefix whose mass reaches ``top_p``; the most likely token is
    always kept. Returns unnormalised probabilities of the same shape.
    """
    if top_p >= 1.0:
        return sorted_probs
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    keep = mass_before < top_p
    keep[..., 0] = True
    return torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))


def filter_sorted(sorted_probs: torch.Tensor, s: Sampling) -> torch.Tensor:
    """top-k, then top-p, then min-p (relative to the most likely token) on descending-sorted
    probabilities; the most likely token always survives."""
    kept = sorted_probs
    if 0 < s.top_k < kept.shape[-1]:
        kept = kept.clone()
        kept[s.top_k :] = 0.0
    kept = top_p_filter(kept, s.top_p)
    if s.min_p > 0.0:
        kept = torch.where(kept >= s.min_p * kept[0], kept, torch.zeros_like(kept))
    return kept


def choose_token(logits: torch.Tensor, sampling: Sampling, position: int) -> int:
    """The next token from one row of (processed) logits, shape ``[vocab]``, for absolute
    ``position``."""
    if sampling.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True, stable=True)
    kept = filter_sorted(sorted_probs, sampling)
    cdf = torch.cumsum(kept, dim=-1)
    # One uniform draw from a CPU generator seeded by (seed, position), then an inverse-CDF
    # lookup on the logits' device: the draw is the same whatever the device (CUDA generators
    # give other streams), and nothing vocab-sized crosses to the host.
    gen = torch.Generator(device="cpu")
    gen.manual_seed(position_seed(sampling.seed, position))
    u = float(torch.rand((), generator=gen, dtype=torch.float64))
    target = torch.tensor([u * float(cdf[-1])], dtype=cdf.dtype, device=cdf.device)
    # Kept tokens are a prefix of the sorted order; clamping to it guards against rounding
    # at the very end of the CDF, so a filtered token is never returned.
    last = max(int(torch.count_nonzero(kept)) - 1, 0)
    index = int(torch.searchsorted(cdf, target, right=True).clamp_(max=last))
    return int(order[index])


def token_logprobs(
    logits: torch.Tensor, token: int, top: int
) -> tuple[float, tuple[tuple[int, float], ...]]:
    """The log-probability of ``token`` under the raw distribution of ``logits`` (before the
    request's processors, temperature and filters, as OpenAI and vLLM report it) and the
    ``top`` most likely tokens with theirs."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    alternatives: tuple[tuple[int, float], ...] = ()
    if top > 0:
        values, ids = torch.topk(logp, min(top, logp.shape[0]))
        alternatives = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return float(logp[token]), alternatives
