# ruff: noqa: RUF001
"""The loader benchmark's figure: GB/s per loader (bars) against the limits measured in the same
run (horizontal lines), one panel per page-cache condition (cold from disk, DRAM tier)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import plotting
from benchmarks.loader.report import Row, reference

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Labels that tell rows apart (the table's "Loader" column repeats; its "How" column is long).
SHORT = {
    "sllm-worker": "sllm worker (HostPool, steady state)",
    "sllm-fresh": "sllm load_checkpoint (fresh process)",
    "sllm-model": "sllm load_model (fresh process)",
    "sllm-shm": "sllm defaults",
    "sllm-shm-noverify": "sllm verify=False",
    "sllm-shm-worker": "sllm as the worker (sealed copy)",
    "sllm-shm-hash": "sllm hashed at load",
    "sllm-shm-lazy": "sllm unverified (the worker before)",
}
LIMIT_STYLE = {  # key -> (line style, legend label)
    "limit-odirect": ("-", "limit: parallel O_DIRECT read + touch"),
    "limit-odirect-read": ("--", "limit: O_DIRECT read alone (raw disk)"),
    "limit-tmpfs": ("-", "limit: tmpfs map + touch"),
}
KIND_COLOR = {"sllm": "C0", "peer": "C1"}
PANEL_TITLE = {"cold": "cold: from disk", "tmpfs": "DRAM tier: from a tmpfs copy"}


def figure(rows: Sequence[Row], title: str = "") -> Figure:
    """One panel per condition with rows: a bar per loader (median GB/s, whiskers min to max
    sample), a line per limit; each bar labelled with its median and its ratio to the limit."""
    conditions = [c for c in ("cold", "tmpfs") if any(r.condition == c and r.ok for r in rows)]
    widest = max((sum(r.condition == c for r in rows) for c in conditions), default=1)
    fig, axes = plotting.figure(
        max(len(conditions), 1), width=max(4.5, 0.85 * widest + 1.5), height=5.0
    )
    for ax, condition in zip(axes, conditions, strict=False):
        _panel(ax, [r for r in rows if r.condition == condition], list(rows), condition)
    fig.suptitle(title or "Checkpoint loading: load + touch of every byte", fontsize=10)
    return fig


def plot(rows: Sequence[Row], path: Path, title: str = "") -> Path:
    """:func:`figure` written as a PNG at ``path``."""
    return plotting.save(figure(rows, title), path)


def _name(row: Row) -> str:
    return SHORT.get(row.key, row.label)


def _panel(ax: Axes, mine: list[Row], every: list[Row], condition: str) -> None:
    loaders = [r for r in mine if r.kind != "limit" and r.ok]
    for kind, color in KIND_COLOR.items():
        xs = [i for i, r in enumerate(loaders) if r.kind == kind]
        if not xs:
            continue
        got = [loaders[i] for i in xs]
        medians = [r.median_gbps for r in got]
        lows = [m - min(s.gbps for s in r.samples) for m, r in zip(medians, got, strict=True)]
        highs = [r.best_gbps - m for m, r in zip(medians, got, strict=True)]
        ax.bar(
            xs,
            medians,
            color=color,
            yerr=[lows, highs],
            error_kw={"ecolor": "0.3", "elinewidth": 1},
            label="sllm" if kind == "sllm" else "peers (as normally used)",
        )
    top = max([r.best_gbps for r in mine if r.ok] or [1.0])
    ref = reference(every, condition)
    for i, r in enumerate(loaders):
        note = f"{r.median_gbps:.2f}"
        if ref is not None:
            note += f"\n{r.median_gbps / ref.median_gbps:.2f}× limit"
        ax.text(i, r.best_gbps + top * 0.03, note, ha="center", va="bottom", fontsize=7)
    for r in mine:  # each limit named on its line, at the right end
        if r.kind == "limit" and r.ok and r.key in LIMIT_STYLE:
            style, label = LIMIT_STYLE[r.key]
            ax.axhline(r.median_gbps, color="C3", linestyle=style, linewidth=1.2, label=label)
            ax.text(
                len(loaders) - 0.5,
                r.median_gbps,
                f"{label}: {r.median_gbps:.2f} GB/s",
                ha="right",
                va="bottom",
                fontsize=7,
                color="C3",
            )
    ax.set_xlim(-0.6, max(len(loaders), 1) - 0.4)
    ax.set_xticks(
        range(len(loaders)),
        [textwrap.fill(_name(r), 15, break_long_words=False) for r in loaders],
        fontsize=7,
    )
    ax.set_ylim(0, top * 1.35)
    ax.grid(False, axis="x")
    ax.set_ylabel("GB/s (10⁹ bytes/s): median, whiskers min–max")
    dropped = condition != "cold" or all(r.really_cold for r in mine if r.ok)
    heading = PANEL_TITLE.get(condition, condition) + ("" if dropped else " (cache NOT dropped)")
    failed = [_name(r) for r in mine if not r.ok]
    if failed:
        heading += "\nfailed, not shown: " + ", ".join(failed)
    ax.set_title(heading, fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    bars = [(h, lab) for h, lab in zip(handles, labels, strict=True) if not lab.startswith("limit")]
    if bars:
        ax.legend(*zip(*bars, strict=True), fontsize=7, loc="upper left")
