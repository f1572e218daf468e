# ruff: noqa: RUF001
"""The serving benchmark's figure: median time to first token per case (bars, whiskers from
the fastest to the slowest sample) against the fresh-process baseline of the same run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import plotting

from .common import median
from .report import REGISTRY_TARGET
from .samples import Sample

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ORDER = ("warm", "dram", "ssd", "registry", "baseline-cold", "baseline-warm")
LABEL = {
    "warm": "sllm warm",
    "dram": "sllm cold:\nDRAM tier",
    "ssd": "sllm cold:\nSSD tier",
    "registry": "sllm cold:\nregistry (HF dir)",
    "baseline-cold": "baseline\n(cold cache)",
    "baseline-warm": "baseline\n(warm cache)",
}


def figure(samples: Sequence[Sample], title: str = "") -> Figure:
    """One bar per case with samples, labelled with its median and its ratio to the cold-cache
    baseline; a line at that baseline and one at the registry target (baseline / 2)."""
    cases = [c for c in ORDER if any(s.case == c for s in samples)]
    fig, (ax,) = plotting.figure(1, width=max(6.0, 1.2 * len(cases) + 1.5), height=4.6)
    meds, lows, highs = [], [], []
    for c in cases:
        t = [s.ttft_s for s in samples if s.case == c]
        m = median(t)
        meds.append(m)
        lows.append(m - min(t))
        highs.append(max(t) - m)
    colors = ["C1" if c.startswith("baseline") else "C0" for c in cases]
    x = list(range(len(cases)))
    ax.bar(x, meds, color=colors, yerr=[lows, highs], capsize=4, zorder=2)
    base = median([s.ttft_s for s in samples if s.case == "baseline-cold"])
    if not math.isnan(base):
        ax.axhline(base, color="C1", linestyle="--", label="baseline, cold cache (median)")
        ax.axhline(
            base / REGISTRY_TARGET,
            color="C3",
            linestyle=":",
            label=f"registry target: {REGISTRY_TARGET:g}× faster than the baseline",
        )
    for i, (c, m) in enumerate(zip(cases, meds, strict=True)):
        ratio = "" if c.startswith("baseline") or math.isnan(base) else f"\n{base / m:.1f}×"
        ax.text(i, m + highs[i], f"{m:.2f} s{ratio}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.15 * max((m + h for m, h in zip(meds, highs, strict=True)), default=1.0))
    ax.set_xticks(x, [LABEL[c] for c in cases], fontsize=8)
    ax.set_ylabel("time to first token, s (median; whiskers: min–max)")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(
        title or "Time to first token by tier against a fresh from_pretrained", fontsize=10
    )
    return fig


def plot(samples: Sequence[Sample], path: Path, title: str = "") -> Path:
    """Draw `figure` and save it as a PNG at ``path``."""
    return plotting.save(figure(samples, title), path)
