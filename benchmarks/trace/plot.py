"""The trace benchmark's figure: the client's TTFT as a CDF, one line per placement policy."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import plotting
from benchmarks.serving.common import percentile

from .run import PolicyRun

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LABEL = {
    "startup_time": "startup_time (ours: locality + bandwidth + queues)",
    "round_robin": "round_robin (locality-blind)",
}


def figure(runs: Sequence[PolicyRun], title: str = "") -> Figure:
    """A step CDF of TTFT per policy over all its requests: a failed request never arrives, so a
    policy with failures stays below 1; the legend gives its mean and p99."""
    fig, (ax,) = plotting.figure(width=7.5, height=4.5)
    shown: list[float] = []
    for i, run in enumerate(runs):
        ttfts = sorted(o.ttft_s for o in run.outcomes if o.ttft_s is not None)
        total = len(run.outcomes)
        if not ttfts:
            continue
        ys = [(k + 1) / total for k in range(len(ttfts))]
        shown += ttfts
        failed = total - len(ttfts)
        label = (
            f"{LABEL.get(run.policy, run.policy)}: mean {statistics.fmean(ttfts):.2f} s, "
            f"p99 {percentile(ttfts, 99):.2f} s, n={total}"
            + (f", {failed} failed" if failed else "")
        )
        ax.step([ttfts[0], *ttfts], [0.0, *ys], where="post", color=f"C{i}", label=label)
    positive = [x for x in shown if x > 0]
    if positive and max(positive) >= 10 * min(positive):
        ax.set_xscale("log")  # warm requests take tens of ms, cold starts seconds
        plotting.plain_log_ticks(ax.xaxis)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time to first token (s, measured by the client)")
    ax.set_ylabel("share of requests with TTFT ≤ x")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(
        plotting.wrap(title or "Bursty many-model trace: TTFT by placement policy"), fontsize=10
    )
    return fig


def plot(runs: Sequence[PolicyRun], path: Path, title: str = "") -> Path:
    """:func:`figure` written as a PNG at ``path``."""
    return plotting.save(figure(runs, title), path)
