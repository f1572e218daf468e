# ruff: noqa: RUF001
"""The adapter benchmark's report, targets and figure, from rows shaped like a real run's."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest

from benchmarks.adapters.report import Run, markdown
from benchmarks.adapters.samples import (
    TputSample,
    TtftSample,
    stats,
    targets,
    ttft_stats,
)

pytestmark = pytest.mark.unit

BYTES = 462_904
BANDWIDTH: dict[str, float | None] = {"dram": 3.7e9, "ssd": 1.22e9}


def _ttft() -> list[TtftSample]:
    worker = {"tier": "dram", "bytes": 458_752}
    rows = {
        "resident": [0.012, 0.008, 0.013],
        "dram": [0.021, 0.016, 0.023],
        "ssd": [0.027, 0.020, 0.035],
        "cold": [0.061, 0.053, 0.208],
    }
    out = []
    for case, xs in rows.items():
        for i, x in enumerate(xs):
            logged = {**worker, "source": case, "ms": 5.0 + i} if case in ("dram", "ssd") else {}
            out.append(TtftSample(case, i + 1, x, x + 0.01, logged))  # type: ignore[arg-type]
    return out


def _tput() -> list[TputSample]:
    seconds = {"mixed": [4.1, 4.5, 5.0], "one": [3.4, 3.4, 3.6], "base": [3.5, 3.1, 3.7]}
    return [
        TputSample(case, i + 1, 16, 4, 4096, s)  # type: ignore[arg-type]
        for case, xs in seconds.items()
        for i, s in enumerate(xs)
    ]


def _run(**kw: object) -> Run:
    args: dict[str, object] = {
        "header": ["## title"],
        "ttft": _ttft(),
        "tput": _tput(),
        "adapter_bytes": BYTES,
        "worker_bytes": 458_752,
        "bandwidth": BANDWIDTH,
    }
    return Run(**{**args, **kw})  # type: ignore[arg-type]


def test_stats_are_median_min_max_and_nan_when_empty() -> None:
    s = stats([3.0, 1.0, 2.0])
    assert (s.median, s.lo, s.hi, s.n) == (2.0, 1.0, 3.0, 3)
    assert stats([]).n == 0


def test_target_is_resident_plus_transfer_plus_fifty_ms() -> None:
    dram, ssd = targets(ttft_stats(_ttft()), BYTES, BANDWIDTH)
    assert dram.bound_s == pytest.approx(0.012 + 0.050 + BYTES / 3.7e9)
    assert ssd.transfer_s == pytest.approx(BYTES / 1.22e9)
    assert dram.met
    assert ssd.met
    slow = [s for s in _ttft() if s.case != "ssd"] + [TtftSample("ssd", 1, 0.2, 0.2)]
    assert not targets(ttft_stats(slow), BYTES, BANDWIDTH)[1].met


def test_unknown_bandwidth_counts_no_transfer_and_says_so() -> None:
    (dram, _) = targets(ttft_stats(_ttft()), BYTES, {"dram": None})
    assert dram.bound_s == pytest.approx(0.062)
    assert "unknown (0 used)" in markdown(_run(bandwidth={}))


def test_report_shows_each_case_the_targets_and_the_ratios() -> None:
    text = markdown(_run(failures=["cold round 2: boom"], notes=["a note"]))
    assert "| (a) adapter resident | 12.0 | 8.0 | 13.0 | 3 | – |" in text
    assert "| (b) adapter from the DRAM tier | 21.0 | 16.0 | 23.0 | 3 | 6.0 |" in text
    assert "| dram | 21.0 | 62.1 | 0.125 | **yes** | 2.90 |" in text  # (c) 61 / (b) 21
    assert "462,904 bytes" in text
    assert "458,752 bytes installed" in text
    assert "DRAM 3.70 GB/s, SSD 1.22 GB/s" in text
    # medians: mixed 4096 / 4.5 s, base 4096 / 3.5 s
    assert f"Mixed / base: {3.5 / 4.5:.2f} (target ≥ 0.7): met **yes**" in text
    assert "16 concurrent streams × 4 requests, 64 tokens each" in text
    assert "- cold round 2: boom" in text
    assert "- a note" in text


def test_report_says_no_when_the_throughput_target_is_missed() -> None:
    slow = [
        TputSample(s.case, s.round, 16, 4, 4096, s.seconds * (2 if s.case == "mixed" else 1))
        for s in _tput()
    ]
    assert "met **NO**" in markdown(_run(tput=slow))


def test_report_of_an_aborted_run_has_no_numbers_but_renders() -> None:
    text = markdown(_run(ttft=[], tput=[], worker_bytes=None, failures=["run aborted"]))
    assert "| (a) adapter resident | n/a | n/a | n/a | 0 | – |" in text
    assert "not logged" in text
    assert "no samples" in text


def test_plot_has_a_ttft_bar_per_case_and_a_throughput_bar_per_phase(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")  # the ``bench`` extra
    from matplotlib.patches import Rectangle

    from benchmarks.adapters.plot import figure, plot

    fig = figure(_ttft(), _tput(), "title")
    left, right = fig.axes
    heights = [p.get_height() for p in left.patches if isinstance(p, Rectangle)]
    assert heights == pytest.approx([12.0, 21.0, 27.0, 61.0])  # medians, ms
    tput = [p.get_height() for p in right.patches if isinstance(p, Rectangle)]
    assert tput == pytest.approx([4096 / 4.5, 4096 / 3.4, 4096 / 3.5])
    (target,) = right.get_lines()[-1:]
    ys = cast("Sequence[float]", target.get_ydata())
    assert [float(y) for y in ys] == pytest.approx([0.7 * 4096 / 3.5] * 2)
    path = plot(_ttft(), _tput(), tmp_path / "nested" / "adapters.png", "title")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    width, height = struct.unpack(">II", data[16:24])
    assert width > height > 0
