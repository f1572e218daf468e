"""Calibrated startup estimates from real loads (pure: no NATS, no Redis, no clocks).

Each finished load gives one sample per (node, source tier): the bytes it moved, the seconds
spent moving them (storage ensure + weight read: the tier-dependent part) and the seconds of
fixed work around them (building the model, the tokenizer: the same from any tier). The one-off
start-up of a fresh worker (its imports) is left out: it is not a cost of the next load.

Estimates are robust to odd loads (a busy disk, a cold page cache):

- data seconds = overhead + bytes / bandwidth, fitted by Theil-Sen (median of pairwise slopes,
  median intercept) when the samples' sizes differ enough to tell the two apart; otherwise the
  storage-measured (or prior) bandwidth is kept and only the overhead is the median residual;
- fixed seconds = the median over the node's samples.

A node without samples of its own borrows the whole cluster's (same software, similar
machines) until it has some.
"""

from __future__ import annotations

import functools
import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

# Sizes must differ by this factor before a pair of samples says anything about bandwidth.
MIN_SIZE_SPREAD = 1.5
# At most this many samples enter one fit (pairwise slopes grow with the square).
MAX_FIT_SAMPLES = 64
FITS_REMEMBERED = 4096


class LoadSample(NamedTuple):
    bytes: int
    data_s: float  # storage ensure + weight read
    fixed_s: float = 0.0  # the rest of the load, apart from a fresh worker's one-off start-up


@dataclass(frozen=True)
class Fit:
    """Data seconds of a load from one tier: ``overhead_s + bytes / bandwidth``, with the
    fitted bandwidth, or the caller's (storage-measured or prior) where ``bytes_per_s`` is
    None."""

    overhead_s: float
    bytes_per_s: float | None
    samples: int

    def seconds(self, nbytes: int, base_s_per_byte: float) -> float:
        s_per_byte = 1.0 / self.bytes_per_s if self.bytes_per_s else base_s_per_byte
        return self.overhead_s + nbytes * s_per_byte


def _valid(samples: Iterable[LoadSample]) -> list[LoadSample]:
    return [
        s
        for s in samples
        if s.bytes > 0 and s.data_s > 0 and math.isfinite(s.data_s) and math.isfinite(s.fixed_s)
    ]


def fit(
    samples: Sequence[LoadSample], base_s_per_byte: float, *, min_spread: float = MIN_SIZE_SPREAD
) -> Fit | None:
    """The data-time model of ``samples`` (None without any usable sample).

    Remembered for the last `FITS_REMEMBERED` inputs: a placement ranks every node, and a
    node's samples change only when one of its loads reports (the pairwise slopes of 64
    samples are 2,016 divisions; 125 nodes x 3 tiers of them took ~0.3 s per placement)."""
    return _fit(tuple(samples), base_s_per_byte, min_spread)


@functools.lru_cache(maxsize=FITS_REMEMBERED)
def _fit(samples: tuple[LoadSample, ...], base_s_per_byte: float, min_spread: float) -> Fit | None:
    good = _valid(samples)[:MAX_FIT_SAMPLES]
    if not good:
        return None
    slopes = [
        (b.data_s - a.data_s) / (b.bytes - a.bytes)
        for i, a in enumerate(good)
        for b in good[i + 1 :]
        if max(a.bytes, b.bytes) >= min_spread * min(a.bytes, b.bytes)
    ]
    if slopes:
        slope = statistics.median(slopes)
        if slope > 0:
            intercept = statistics.median(s.data_s - slope * s.bytes for s in good)
            if intercept >= 0:
                return Fit(intercept, 1.0 / slope, len(good))
    residual = statistics.median(s.data_s - base_s_per_byte * s.bytes for s in good)
    if residual >= 0:
        return Fit(residual, None, len(good))
    # Faster than the measured bandwidth says (a cached read): the loads are the better guide.
    return Fit(0.0, statistics.median(s.bytes / s.data_s for s in good), len(good))


def fixed_seconds(samples: Iterable[LoadSample]) -> float:
    """The median fixed part of a load (0 without samples)."""
    values = [max(0.0, s.fixed_s) for s in _valid(samples)]
    return statistics.median(values) if values else 0.0


def samples_for(
    recorded: Mapping[tuple[str, str], Sequence[LoadSample]], node_id: str, tier: str
) -> list[LoadSample]:
    """The node's own samples of ``tier``, else every node's (sorted by node: deterministic)."""
    own = recorded.get((node_id, tier))
    if own:
        return list(own)
    return _interleave(ss for (_, t), ss in sorted(recorded.items()) if t == tier)


def node_samples(
    recorded: Mapping[tuple[str, str], Sequence[LoadSample]], node_id: str
) -> list[LoadSample]:
    """Every tier's samples of the node, else every node's (for the fixed part)."""
    own = _interleave(ss for (n, _), ss in sorted(recorded.items()) if n == node_id)
    if own:
        return own
    return _interleave(ss for _, ss in sorted(recorded.items()))


def per_node(
    recorded: Mapping[tuple[str, str], Sequence[LoadSample]],
    node_ids: Iterable[str],
    tiers: Sequence[str],
) -> dict[str, tuple[dict[str, list[LoadSample]], float]]:
    """Per node: `samples_for` each tier, and `fixed_seconds` of its `node_samples`. The same
    as calling them node by node, with the records sorted and grouped once instead of once
    per node and tier (at 125 nodes, that was most of a placement snapshot's time)."""
    items = sorted(recorded.items())
    everyone = {t: _interleave(ss for (_, tt), ss in items if tt == t) for t in tiers}
    own: dict[str, list[Sequence[LoadSample]]] = {}
    for (n, _), ss in items:
        own.setdefault(n, []).append(ss)
    fixed_everyone: float | None = None
    out: dict[str, tuple[dict[str, list[LoadSample]], float]] = {}
    for n in node_ids:
        samples = {t: list(recorded.get((n, t)) or everyone[t]) for t in tiers}
        mine = _interleave(own.get(n, ()))
        if mine:
            fixed = fixed_seconds(mine)
        else:
            if fixed_everyone is None:
                fixed_everyone = fixed_seconds(_interleave(ss for _, ss in items))
            fixed = fixed_everyone
        out[n] = (samples, fixed)
    return out


def _interleave(lists: Iterable[Sequence[LoadSample]]) -> list[LoadSample]:
    """One from each list in turn (each newest first), so that a truncated prefix is a mix."""
    return [s for group in itertools.zip_longest(*lists) for s in group if s is not None]


def sample_of_load(
    nbytes: int, seconds: float, one_off_s: float, phases: Mapping[str, float]
) -> LoadSample | None:
    """A load report as a calibration sample; None if it cannot be one (nothing read)."""
    data_s = phases.get("ensure", 0.0) + phases.get("read", 0.0)
    if nbytes <= 0 or data_s <= 0:
        return None
    fixed = max(0.0, seconds - one_off_s - data_s)
    return LoadSample(nbytes, data_s, fixed)


def relative_error(estimated_s: float, actual_s: float) -> float:
    """(estimated - actual) / actual: positive when the estimate was pessimistic."""
    return (estimated_s - actual_s) / max(actual_s, 1e-6)
