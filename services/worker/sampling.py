"""Next-token choice: greedy, or temperature + top-p sampling whose randomness is a pure
function of (seed, position), so a generation resumed on another worker continues exactly."""

from __future__ import annotations

import hashlib
import secrets
import struct
from dataclasses import dataclass

import torch

_MASK63 = (1 << 63) - 1


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens; ``temperature == 0`` is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


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


def choose_token(logits: torch.Tensor, sampling: Sampling, position: int) -> int:
    """The next token from one row of logits (shape ``[vocab]``), for absolute ``position``."""
    if sampling.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True, stable=True)
    kept = top_p_filter(sorted_probs, sampling.top_p)
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
