# ruff: noqa: RUF001
"""The adapter benchmark's figure: TTFT per case and tokens/s of one worker, median bars with
whiskers from the fastest to the slowest sample."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import plotting

from .samples import (
    TPUT_CASES,
    TPUT_TARGET,
    TTFT_CASES,
    Stats,
    TputSample,
    TtftSample,
    tput_stats,
    ttft_stats,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TTFT_TICKS = {
    "resident": "(a) resident",
    "dram": "(b) from DRAM",
    "ssd": "(b) from SSD",
    "cold": "(c) merged model\ncold start",
}
TPUT_TICKS = {
    "mixed": "(i) 8 adapters\nmixed",
    "one": "1 adapter\n(diagnostic)",
    "base": "(ii) base\nalone",
}


def _bars(ax: Axes, stats: Sequence[Stats], ticks: Sequence[str], colors: Sequence[str]) -> None:
    """Median bars (NaN: no bar) with min-to-max whiskers, each labelled with its median."""
    meds = [0.0 if math.isnan(s.median) else s.median for s in stats]
    lows = [0.0 if math.isnan(s.lo) else s.median - s.lo for s in stats]
    highs = [0.0 if math.isnan(s.hi) else s.hi - s.median for s in stats]
    x = list(range(len(stats)))
    ax.bar(x, meds, color=colors, yerr=[lows, highs], capsize=4, zorder=2)
    ax.set_xticks(x, list(ticks), fontsize=8)
    for i, s in enumerate(stats):
        if not math.isnan(s.median):
            text = f"{s.median:.0f}" if s.median >= 100 else f"{s.median:.3g}"
            ax.text(i, s.median + highs[i], text, ha="center", va="bottom", fontsize=8)
    top = max((m + h for m, h in zip(meds, highs, strict=True)), default=1.0)
    ax.set_ylim(0, 1.18 * top if top > 0 else 1.0)


def figure(ttft: Sequence[TtftSample], tput: Sequence[TputSample], title: str = "") -> Figure:
    """Left: TTFT (ms) per case, adapters blue, the merged model's cold start orange. Right:
    tokens/s of one worker, with the target (mixed at least 0.7 of base) as a dashed line."""
    fig, (left, right) = plotting.figure(2, width=5.6, height=4.4)
    t = ttft_stats(ttft)
    ms = [type(s)(s.median * 1e3, s.lo * 1e3, s.hi * 1e3, s.n) for s in (t[c] for c in TTFT_CASES)]
    _bars(left, ms, [TTFT_TICKS[c] for c in TTFT_CASES], ["C0", "C0", "C0", "C1"])
    left.set_ylabel("time to first token, ms (median; whiskers: min–max)")
    left.set_title("Time to first token", fontsize=10)
    p = tput_stats(tput)
    _bars(
        right, [p[c] for c in TPUT_CASES], [TPUT_TICKS[c] for c in TPUT_CASES], ["C0", "C7", "C2"]
    )
    base = p["base"].median
    if not math.isnan(base):
        right.axhline(
            TPUT_TARGET * base, color="C3", linestyle="--", label=f"target: {TPUT_TARGET} × base"
        )
        right.legend(fontsize=8, loc="lower right")
    right.set_ylabel("tokens/s (median; whiskers: min–max)")
    right.set_title("Throughput of one worker", fontsize=10)
    if title:
        fig.suptitle(plotting.wrap(title, 120), fontsize=10)
    return fig


def plot(
    ttft: Sequence[TtftSample], tput: Sequence[TputSample], path: Path, title: str = ""
) -> Path:
    """Draw `figure` and save it as a PNG at ``path``."""
    return plotting.save(figure(ttft, tput, title), path)
