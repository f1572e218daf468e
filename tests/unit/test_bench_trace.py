"""The trace benchmark's workload generator (pure): deterministic, bursty, Zipf-popular."""

from __future__ import annotations

import random
import statistics

import pytest

from benchmarks.trace.workload import (
    TraceSpec,
    burstiness,
    gamma_arrivals,
    make_trace,
    popularity,
)


def test_same_spec_same_trace_and_sorted() -> None:
    spec = TraceSpec(models=("a", "b", "c"), duration_s=300, total_rate=2.0, seed=7)
    one, two = make_trace(spec), make_trace(spec)
    assert one == two
    assert [a.at_s for a in one] == sorted(a.at_s for a in one)
    assert all(0 <= a.at_s < 300 for a in one)
    assert make_trace(TraceSpec(models=("a", "b", "c"), duration_s=300, seed=8)) != one


def test_gamma_arrivals_have_the_asked_rate_and_burstiness() -> None:
    rng = random.Random(0)
    times = gamma_arrivals(rng, rate=5.0, cv=3.0, duration_s=20_000)
    assert len(times) / 20_000 == pytest.approx(5.0, rel=0.1)
    assert burstiness(times) == pytest.approx(3.0, rel=0.15)
    poisson = gamma_arrivals(random.Random(1), rate=5.0, cv=1.0, duration_s=5_000)
    assert burstiness(poisson) == pytest.approx(1.0, rel=0.1)


def test_popularity_is_zipf_and_sums_to_one() -> None:
    w = popularity(4, 1.0)
    assert sum(w) == pytest.approx(1.0)
    assert w[0] / w[1] == pytest.approx(2.0)
    assert w[0] / w[3] == pytest.approx(4.0)
    assert popularity(3, 0.0) == pytest.approx([1 / 3] * 3)


def test_hot_model_gets_most_requests() -> None:
    trace = make_trace(TraceSpec(models=tuple("abcdefgh"), duration_s=2000, cv=2.0, seed=3))
    counts = {m: sum(a.model == m for a in trace) for m in "abcdefgh"}
    assert counts["a"] == max(counts.values())
    assert counts["a"] > 3 * statistics.median(counts.values())


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one model"):
        TraceSpec(models=())
    with pytest.raises(ValueError, match="positive"):
        TraceSpec(models=("a",), cv=0)
