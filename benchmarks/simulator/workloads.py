"""Workloads for the simulator: the trace benchmark's gamma/Zipf generator
(`benchmarks/trace/workload.py`, imported, not copied) with a prompt and output length per
request, and the request shapes both workloads share."""

from __future__ import annotations

import random
from collections.abc import Sequence

from benchmarks.trace.workload import TraceSpec, make_trace

from .llms import SimModel
from .scenario import Arrival

# Prompt and output lengths, uniform: the range of the paper's GSM8K / ShareGPT-like
# conversations (a few hundred prompt tokens, a hundred or two out).
PROMPT_TOKENS = (64, 512)
OUTPUT_TOKENS = (32, 256)


def shaped(times_models: Sequence[tuple[float, str]], seed: int) -> list[Arrival]:
    """Arrivals with a prompt and output length each (seeded, so deterministic)."""
    rng = random.Random(seed ^ 0x5EED)
    return [
        Arrival(t, m, rng.randint(*PROMPT_TOKENS), rng.randint(*OUTPUT_TOKENS))
        for t, m in times_models
    ]


def gamma_zipf(
    models: Sequence[SimModel],
    *,
    duration_s: float,
    rate: float,
    cv: float = 4.0,
    zipf_s: float = 1.0,
    seed: int = 0,
) -> list[Arrival]:
    """Per-model gamma renewal arrivals (inter-arrival CV ``cv``), Zipf(``zipf_s``)
    popularity in model order, ``rate`` requests/s in all (`benchmarks.trace.workload`)."""
    spec = TraceSpec(
        models=tuple(m.name for m in models),
        duration_s=duration_s,
        total_rate=rate,
        cv=cv,
        zipf_s=zipf_s,
        seed=seed,
    )
    return shaped([(a.at_s, a.model) for a in make_trace(spec)], seed)
