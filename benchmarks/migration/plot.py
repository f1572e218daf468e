"""The migration benchmark's figure: the pause a token migration puts into the stream against
context length, beside what sending the same context's KV cache would take at the bus bandwidth
measured in the same run (and the time until the source is free, the cost token migration pays
instead)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import plotting
from benchmarks.migration.trial import Trial

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WIDE = 8.0  # a context range at least this wide (max / min) gets a log x axis


def figure(
    trials: Sequence[Trial],
    *,
    kv_bytes_per_token: int,
    after_tokens: int,
    bandwidth_bps: float,
    title: str = "",
) -> Figure:
    """Medians per context length, one line each: the pause in the stream (ours), the KV-cache
    transfer of ``context + after_tokens`` tokens at ``bandwidth_bps``, the time to free the
    source."""
    contexts = sorted({t.context_tokens for t in trials})
    by = {c: [t for t in trials if t.context_tokens == c] for c in contexts}
    fig, (ax,) = plotting.figure(width=7.5, height=4.5)
    pause = [statistics.median(t.pause_s for t in by[c]) for c in contexts]
    ax.plot(contexts, pause, "o-", color="C0", label="token migration (ours): pause in the stream")
    shown = list(pause)
    if bandwidth_bps > 0:  # NaN or 0 when the bandwidth was not measured
        kv = [kv_bytes_per_token * (c + after_tokens) / bandwidth_bps for c in contexts]
        shown += kv
        ax.plot(
            contexts,
            kv,
            "s-",
            color="C1",
            label=f"KV-cache transfer at the bus bandwidth ({bandwidth_bps / 1e9:.2f} GB/s)",
        )
    free = [statistics.median(t.migrate_s for t in by[c]) for c in contexts]
    shown += free
    ax.plot(
        contexts, free, "^:", color="0.4", label="token migration: time until the source is free"
    )
    if contexts and contexts[-1] >= WIDE * contexts[0]:
        ax.set_xscale("log", base=2)
    ax.set_xticks(contexts, [str(c) for c in contexts])
    ax.minorticks_off()
    if shown and min(shown) > 0 and max(shown) >= 30 * min(shown):
        ax.set_yscale("log")  # the source's time and a small pause differ by 10-100x
        plotting.plain_log_ticks(ax.yaxis)
    else:
        ax.set_ylim(bottom=0)  # a pause can measure 0 s: no log scale then
    ax.set_xlabel("context length (prompt tokens)")
    ax.set_ylabel("seconds (median of the trials)")
    ax.legend(fontsize=8)
    ax.set_title(
        plotting.wrap(title or "Live migration: pause against context length"), fontsize=10
    )
    return fig


def plot(
    trials: Sequence[Trial],
    path: Path,
    *,
    kv_bytes_per_token: int,
    after_tokens: int,
    bandwidth_bps: float,
    title: str = "",
) -> Path:
    """:func:`figure` written as a PNG at ``path``."""
    fig = figure(
        trials,
        kv_bytes_per_token=kv_bytes_per_token,
        after_tokens=after_tokens,
        bandwidth_bps=bandwidth_bps,
        title=title,
    )
    return plotting.save(fig, path)
