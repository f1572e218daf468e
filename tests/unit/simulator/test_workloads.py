"""Workloads: the Azure Functions format (read, write, rescale, map) and the gamma/Zipf one."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.simulator import azure_trace
from benchmarks.simulator.azure_trace import MINUTES, FunctionRow
from benchmarks.simulator.llms import model_fleet
from benchmarks.simulator.make_azure_sample import make_rows
from benchmarks.simulator.run import SAMPLE_TRACE
from benchmarks.simulator.workloads import gamma_zipf


def row(name: str, per_minute: dict[int, int]) -> FunctionRow:
    counts = [0] * MINUTES
    for m, n in per_minute.items():
        counts[m] = n
    return FunctionRow(name, "http", tuple(counts))


def test_the_shipped_sample_is_in_the_azure_format_and_small() -> None:
    assert SAMPLE_TRACE.stat().st_size < 500_000
    header = SAMPLE_TRACE.read_text().splitlines()[0].split(",")
    assert header[:4] == ["HashOwner", "HashApp", "HashFunction", "Trigger"]
    assert header[4:] == [str(m) for m in range(1, MINUTES + 1)]
    rows = azure_trace.read_trace(SAMPLE_TRACE)
    assert len(rows) == 100
    assert rows == make_rows(100, 2019)  # the generator made it; nothing edited by hand


def test_write_then_read_gives_the_same_rows(tmp_path: Path) -> None:
    rows = [row("o/a/f1", {0: 3, 1439: 1}), row("o/a/f2", {5: 7})]
    path = tmp_path / "t.csv"
    azure_trace.write_trace(path, rows)
    assert azure_trace.read_trace(path) == rows


def test_a_file_without_the_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not an Azure Functions trace"):
        azure_trace.read_trace(path)


def test_functions_map_to_models_by_popularity() -> None:
    rows = [row("c", {0: 1}), row("a", {0: 50}), row("b", {0: 9})]
    models = model_fleet(2)
    assert azure_trace.assign_models(rows, models) == {"a": "m0000", "b": "m0001", "c": "m0000"}


def test_arrivals_are_rescaled_to_the_rate_and_spread_within_their_minute() -> None:
    rows = [row("a", {m: 100 for m in range(10)}), row("b", {3: 400})]
    models = model_fleet(2)
    out = azure_trace.arrivals(rows, models, rate=2.0, start_minute=0, minutes=10, seed=4)
    assert len(out) / 600 == pytest.approx(2.0, rel=0.1)
    b = [a.at_s for a in out if a.model == "m0001"]  # "b" is the less busy function
    assert b
    assert all(180.0 <= t < 240.0 for t in b)
    assert out == azure_trace.arrivals(rows, models, rate=2.0, minutes=10, seed=4)
    assert [a.at_s for a in out] == sorted(a.at_s for a in out)


def test_gamma_zipf_reuses_the_trace_generator_and_is_deterministic() -> None:
    models = model_fleet(8)
    one = gamma_zipf(models, duration_s=600, rate=2.0, seed=5)
    assert one == gamma_zipf(models, duration_s=600, rate=2.0, seed=5)
    counts = {m.name: sum(a.model == m.name for a in one) for m in models}
    assert counts["m0000"] == max(counts.values())
    assert all(64 <= a.prompt_tokens <= 512 and 32 <= a.output_tokens <= 256 for a in one)
