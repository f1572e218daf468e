"""TTFT against request rate per system, like the paper's figures (PNG, matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .run import Point
from .systems import SYSTEMS


def plot(points: Sequence[Point], path: Path, title: str) -> Path | None:
    """Mean and p99 TTFT per system against the rate; None when matplotlib is missing (it
    comes with the ``bench`` extra: ``pip install -e '.[bench]'``)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for name, system in SYSTEMS.items():
        mine = sorted((p for p in points if p.system == name), key=lambda p: p.rate)
        if not mine:
            continue
        rates = [p.rate for p in mine]
        for ax, key in zip(axes, ("mean_ttft_s", "p99_ttft_s"), strict=True):
            ax.plot(rates, [p.summary[key] for p in mine], marker="o", label=system.label)
    for ax, what in zip(axes, ("mean", "p99"), strict=True):
        ax.set_xlabel("requests / s")
        ax.set_ylabel(f"{what} time to first token (s)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
