"""A bursty multi-model request trace (pure): per-model gamma renewal processes.

Like the Azure Functions trace the ServerlessLLM paper replays, arrivals are bursty: the
inter-arrival times of each model follow a gamma distribution whose coefficient of variation
(CV) is well above 1 (CV 1 would be Poisson). Model popularity is Zipf-like, so a few models
are hot and the tail is cold most of the time.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Arrival:
    at_s: float  # seconds after the trace starts
    model: str


@dataclass(frozen=True)
class TraceSpec:
    models: tuple[str, ...]
    duration_s: float = 120.0
    total_rate: float = 1.0  # requests per second over all models
    cv: float = 4.0  # coefficient of variation of each model's inter-arrival times
    zipf_s: float = 1.0  # popularity exponent (0: uniform)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("a trace needs at least one model")
        if self.duration_s <= 0 or self.total_rate <= 0 or self.cv <= 0 or self.zipf_s < 0:
            raise ValueError("duration, rate and cv must be positive, zipf_s non-negative")


def popularity(n: int, s: float) -> list[float]:
    """Zipf weights of ``n`` models (rank 1 first), summing to 1."""
    raw = [1.0 / (rank**s) for rank in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def gamma_arrivals(rng: random.Random, rate: float, cv: float, duration_s: float) -> list[float]:
    """Arrival times in ``[0, duration_s)`` of a renewal process with gamma inter-arrival
    times of mean ``1/rate`` and coefficient of variation ``cv``.

    The first arrival is drawn from the same distribution shifted by a uniform phase, so that
    every model does not start with a request at t=0.
    """
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    t = -rng.uniform(0.0, 1.0 / rate)
    out: list[float] = []
    while True:
        t += rng.gammavariate(shape, scale)
        if t >= duration_s:
            return out
        if t >= 0:
            out.append(t)


def make_trace(spec: TraceSpec) -> list[Arrival]:
    """Every arrival of the trace, in time order; the same spec gives the same trace."""
    rng = random.Random(spec.seed)
    weights = popularity(len(spec.models), spec.zipf_s)
    arrivals: list[Arrival] = []
    for model, w in zip(spec.models, weights, strict=True):
        arrivals += [
            Arrival(t, model)
            for t in gamma_arrivals(rng, spec.total_rate * w, spec.cv, spec.duration_s)
        ]
    arrivals.sort(key=lambda a: (a.at_s, a.model))
    return arrivals


def burstiness(times: Sequence[float]) -> float:
    """The CV of the inter-arrival times (NaN with fewer than three arrivals)."""
    if len(times) < 3:
        return math.nan
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = sum(gaps) / len(gaps)
    var = sum((g - mean) ** 2 for g in gaps) / (len(gaps) - 1)
    return math.sqrt(var) / mean if mean > 0 else math.nan
