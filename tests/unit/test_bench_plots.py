# ruff: noqa: RUF001
"""The benchmarks' figures (loader, migration, trace) drawn from rows shaped like a real run's."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

pytest.importorskip("matplotlib")  # the ``bench`` extra

from matplotlib.patches import Rectangle

from benchmarks.loader.common import Sample
from benchmarks.loader.plot import figure as loader_figure
from benchmarks.loader.plot import plot as loader_plot
from benchmarks.loader.report import Row
from benchmarks.migration.plot import figure as migration_figure
from benchmarks.migration.plot import plot as migration_plot
from benchmarks.migration.trial import Trial
from benchmarks.plotting import DPI
from benchmarks.trace.plot import figure as trace_figure
from benchmarks.trace.plot import plot as trace_plot
from benchmarks.trace.run import Outcome, PolicyRun

if TYPE_CHECKING:
    from matplotlib.lines import Line2D

pytestmark = pytest.mark.unit

PNG = b"\x89PNG\r\n\x1a\n"
GB4 = 4_211_000_000


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR, after checking the signature and a real payload."""
    data = path.read_bytes()
    assert data[:8] == PNG
    assert data[12:16] == b"IHDR"
    assert len(data) > 10_000  # axes, text and bars, not an empty canvas
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _xs(line: Line2D) -> list[float]:
    return [float(x) for x in cast("Sequence[float]", line.get_xdata())]


def _ys(line: Line2D) -> list[float]:
    return [float(y) for y in cast("Sequence[float]", line.get_ydata())]


def _row(key: str, kind: str, condition: str, *seconds: float, error: str | None = None) -> Row:
    row = Row(key=key, kind=kind, label=key, how="how", condition=condition, error=error)
    row.samples = [Sample(seconds=s, nbytes=GB4, cold=condition == "cold") for s in seconds]
    return row


def _loader_rows() -> list[Row]:
    return [
        _row("limit-odirect", "limit", "cold", 2.39, 2.47, 2.5),
        _row("limit-odirect-read", "limit", "cold", 2.23, 2.29, 2.3),
        _row("sllm-worker", "sllm", "cold", 2.16, 2.68, 2.7),
        _row("sllm-fresh", "sllm", "cold", 3.12, 3.78, 3.9),
        _row("safetensors", "peer", "cold", 3.72, 4.09, 4.1),
        _row("torch", "peer", "cold", 3.15, 3.38, 3.4),
        _row("runai", "peer", "cold", error="exit 1: No module named 'runai_model_streamer'"),
        _row("limit-tmpfs", "limit", "tmpfs", 0.29, 0.31, 0.31),
        _row("sllm-shm", "sllm", "tmpfs", 0.54, 0.57, 0.6),
        _row("sllm-shm-worker", "sllm", "tmpfs", 0.36, 0.36, 0.37),
    ]


def test_loader_plot_has_a_bar_per_loader_and_a_line_per_limit(tmp_path: Path) -> None:
    rows = _loader_rows()
    fig = loader_figure(rows, "title")
    cold, tmpfs = fig.axes
    assert len(cold.patches) == 4  # sllm worker + fresh, safetensors, torch; runai failed
    assert len(tmpfs.patches) == 2
    heights = [p.get_height() for p in cold.patches if isinstance(p, Rectangle)]
    assert heights[0] == pytest.approx(GB4 / 2.68 / 1e9)  # sllm worker's median GB/s
    assert sorted(_ys(line)[0] for line in cold.get_lines()) == pytest.approx(
        [GB4 / 2.47 / 1e9, GB4 / 2.29 / 1e9]  # read + touch and the raw read: the limits
    )
    assert len(tmpfs.get_lines()) == 1
    texts = [t.get_text() for t in cold.texts]
    assert "failed, not shown: runai" in cold.get_title()
    assert texts[-2].startswith("limit: parallel O_DIRECT read + touch: 1.70 GB/s")
    assert texts[0] == f"{GB4 / 2.68 / 1e9:.2f}\n0.92× limit"  # 2.47 s / 2.68 s
    path = loader_plot(rows, tmp_path / "nested" / "loader.png", "title")
    width, height = _png_size(path)
    assert width > height > 0


def test_loader_plot_of_the_cold_rows_alone_has_one_panel(tmp_path: Path) -> None:
    rows = [r for r in _loader_rows() if r.condition == "cold"]
    assert len(loader_figure(rows).axes) == 1
    _png_size(loader_plot(rows, tmp_path / "cold.png"))


def _trial(context: int, pause: float, free: float) -> Trial:
    return Trial(
        context_tokens=context,
        outcome="committed",
        rounds=3,
        tokens_recomputed=context + 40,
        migrate_s=free,
        load_s=0.06,
        pause_s=pause,
        pause_event_s=pause + 0.03,
        median_gap_s=0.036,
    )


def test_migration_plot_lines_for_ours_the_kv_transfer_and_freeing_the_source(
    tmp_path: Path,
) -> None:
    trials = [
        _trial(256, 0.12, 1.7),
        _trial(256, 0.10, 1.8),
        _trial(1024, 0.09, 3.9),
        _trial(1024, 0.09, 3.8),
        _trial(4096, 0.10, 14.0),
        _trial(4096, 0.14, 16.0),
    ]
    fig = migration_figure(trials, kv_bytes_per_token=16384, after_tokens=8, bandwidth_bps=0.41e9)
    (ax,) = fig.axes
    pause, kv, free = ax.get_lines()
    assert _xs(pause) == [256, 1024, 4096]
    assert _ys(pause) == pytest.approx([0.11, 0.09, 0.12])  # medians
    assert _ys(kv)[0] == pytest.approx(16384 * 264 / 0.41e9)
    assert _ys(free) == pytest.approx([1.75, 3.85, 15.0])
    assert ax.get_xscale() == "log"  # 256 to 4096 tokens
    assert ax.get_yscale() == "log"  # 2 ms to 15 s
    assert "context length" in ax.get_xlabel()
    width, height = _png_size(
        migration_plot(
            trials,
            tmp_path / "migration.png",
            kv_bytes_per_token=16384,
            after_tokens=8,
            bandwidth_bps=0.41e9,
        )
    )
    assert (width, height) == (round(7.5 * DPI), round(4.5 * DPI))


def test_migration_plot_without_a_bandwidth_or_with_a_zero_pause_stays_linear() -> None:
    trials = [_trial(256, 0.0, 1.7), _trial(512, 0.1, 2.5)]
    fig = migration_figure(trials, kv_bytes_per_token=16384, after_tokens=8, bandwidth_bps=math.nan)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 2  # no KV line without a measured bandwidth
    assert (ax.get_xscale(), ax.get_yscale()) == ("linear", "linear")


def _run(policy: str, ttfts: list[float | None]) -> PolicyRun:
    outcomes = [
        Outcome(f"m{i % 3}", float(i), t, "" if t is not None else "HTTP 503: busy")
        for i, t in enumerate(ttfts)
    ]
    return PolicyRun(policy, outcomes=outcomes, wall_s=120.0)


def test_trace_plot_draws_one_cdf_per_policy_and_failures_keep_it_below_one(
    tmp_path: Path,
) -> None:
    runs = [
        _run("startup_time", [0.05, 0.06, 0.9, 1.2, 7.4]),
        _run("round_robin", [0.05, 1.4, 1.5, 7.1, None]),
    ]
    fig = trace_figure(runs)
    (ax,) = fig.axes
    ours, rr = ax.get_lines()
    assert _ys(ours)[-1] == pytest.approx(1.0)
    assert _ys(rr)[-1] == pytest.approx(0.8)  # 1 of 5 never answered
    assert _xs(ours)[1:] == [0.05, 0.06, 0.9, 1.2, 7.4]
    assert ax.get_xscale() == "log"
    legend = ax.get_legend()
    assert legend is not None
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[0].startswith("startup_time (ours")
    assert "1 failed" in labels[1]
    _png_size(trace_plot(runs, tmp_path / "trace.png", "a title"))
