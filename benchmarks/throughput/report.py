# ruff: noqa: RUF001
"""The throughput report: one table per model, the targets, and the plot."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .inprocess import Bound
from .stats import Point

# The targets.
PEER_RATIO = 1.0  # sllm tokens/s at concurrency >= 4, over transformers serve's
BOUND_RATIO = 0.8  # ... over the in-process upper bound's
FAIR_CONCURRENCY = 16
FAIR_TAIL = 3.0  # TTFT p99 at most this many times its p50 (FIFO)
C1_TOLERANCE = 0.10  # concurrency 1 within 10% of the reference run
T_PEER = "≥ 1.0× peer"
T_BOUND = "≥ 0.8× in-process"
T_FAIR = "TTFT p99 ≤ 3× p50"
T_C1 = "within 10% of reference"
# The property the TTFT ratio stands for, measured directly: no request overtakes one sent
# before it. (A closed loop's first wave sends every client's request at once, so the ratio
# also measures the queue of that wave: with 16 equal prefills the 16th waits for 15, which no
# order of service avoids.)
T_FIFO = "first tokens in send order"
TARGETS = (T_PEER, T_BOUND, T_FAIR, T_FIFO, T_C1)


@dataclass
class Row:
    """One (prompt length, concurrency) point of one model: each system's figures."""

    prompt: int
    concurrency: int
    per_client: int
    sllm: Point | None = None
    peer: Point | None = None
    bound: Bound | None = None
    reference_tps: float | None = None  # sllm tokens/s at this point in the reference run


def _ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return float("nan")
    return a / b


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _tps(p: Point | None) -> float | None:
    return None if p is None else p.tokens_per_s


def targets(row: Row) -> dict[str, str]:
    """PASS / FAIL / n/a of each target that applies to the row."""
    out: dict[str, str] = {}
    if row.concurrency >= 4:
        r = _ratio(_tps(row.sllm), _tps(row.peer))
        out[T_PEER] = _verdict(None if math.isnan(r) else r >= PEER_RATIO)
        b = _ratio(_tps(row.sllm), row.bound.best[1] if row.bound else None)
        out[T_BOUND] = _verdict(None if math.isnan(b) else b >= BOUND_RATIO)
    if row.concurrency == FAIR_CONCURRENCY:
        s = row.sllm
        ok = (
            None
            if s is None or math.isnan(s.ttft_p50_s)
            else s.ttft_p99_s <= FAIR_TAIL * s.ttft_p50_s
        )
        out[T_FAIR] = _verdict(ok)
    if row.concurrency >= 4 and row.sllm is not None and row.sllm.fifo_pairs:
        out[T_FIFO] = _verdict(row.sllm.fifo_inversions == 0)
    if row.concurrency == 1:
        r = _ratio(_tps(row.sllm), row.reference_tps)
        out[T_C1] = _verdict(None if math.isnan(r) else r >= 1.0 - C1_TOLERANCE)
    return out


def _f(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _pair_s(p: Point | None, a: str, b: str, scale: float = 1.0, digits: int = 3) -> str:
    if p is None:
        return "—"
    return f"{_f(getattr(p, a) * scale, digits)} / {_f(getattr(p, b) * scale, digits)}"


def _failed(p: Point | None) -> str:
    """Failed requests, and finished ones shorter than asked (the end-of-sequence override
    was not applied)."""
    if p is None:
        return "—"
    return f"{p.failed}" + (f" ({p.short} short)" if p.short else "")


def _fifo(p: Point | None) -> str:
    return "—" if p is None or not p.fifo_pairs else f"{p.fifo_inversions}/{p.fifo_pairs}"


def table(rows: Sequence[Row]) -> list[str]:
    """The Markdown table of one model."""
    lines = [
        "| prompt | conc. | requests | sllm tok/s | peer tok/s | in-process tok/s (method) "
        "| sllm ÷ peer | sllm ÷ in-process | sllm TTFT p50 / p99 s | peer TTFT p50 / p99 s "
        "| sllm ITL p50 / p99 ms | peer ITL p50 / p99 ms | failed sllm / peer "
        "| overtaken sllm / peer | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        method, best = r.bound.best if r.bound else ("", float("nan"))
        bound = f"{_f(best)} ({method})" if method else "—"
        marks = "; ".join(f"{k}: {v}" for k, v in targets(r).items()) or "—"
        failed = " / ".join(_failed(p) for p in (r.sllm, r.peer))
        lines.append(
            f"| {r.prompt} | {r.concurrency} | {r.concurrency * r.per_client} "
            f"| {_f(_tps(r.sllm))} | {_f(_tps(r.peer))} | {bound} "
            f"| {_f(_ratio(_tps(r.sllm), _tps(r.peer)), 2)}× "
            f"| {_f(_ratio(_tps(r.sllm), best), 2)}× "
            f"| {_pair_s(r.sllm, 'ttft_p50_s', 'ttft_p99_s')} "
            f"| {_pair_s(r.peer, 'ttft_p50_s', 'ttft_p99_s')} "
            f"| {_pair_s(r.sllm, 'itl_p50_s', 'itl_p99_s', 1e3, 1)} "
            f"| {_pair_s(r.peer, 'itl_p50_s', 'itl_p99_s', 1e3, 1)} | {failed} "
            f"| {_fifo(r.sllm)} / {_fifo(r.peer)} | {marks} |"
        )
    return lines


def summary(rows: Sequence[Row]) -> list[str]:
    """Each target over the model's points: how many PASS, and which failed."""
    out = []
    for name in TARGETS:
        got = [(r, targets(r).get(name)) for r in rows]
        judged = [(r, v) for r, v in got if v in ("PASS", "FAIL")]
        if not judged:
            continue
        failed = [f"prompt {r.prompt} × {r.concurrency}" for r, v in judged if v == "FAIL"]
        verdict = "PASS" if not failed else "FAIL (" + ", ".join(failed) + ")"
        out.append(f"- {name}: {len(judged) - len(failed)}/{len(judged)} points → {verdict}")
    return out


def plot(models: Mapping[str, Sequence[Row]], path: Path) -> Path:
    """Tokens/s and TTFT p99 against concurrency, one row of two plots per model (PNG): a
    colour and a marker per system, a line style per prompt length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(models), 2, figsize=(12, 4.2 * len(models)), squeeze=False)
    looks = {"sllm": ("C0", "o"), "peer": ("C1", "s"), "in-process": ("C2", "^")}
    dashes = ["-", "--", ":", "-."]
    for (size, rows), (ax_tps, ax_ttft) in zip(models.items(), axes, strict=True):
        for i, prompt in enumerate(sorted({r.prompt for r in rows})):
            pts = sorted((r for r in rows if r.prompt == prompt), key=lambda r: r.concurrency)
            xs = [r.concurrency for r in pts]
            tps = {
                "sllm": [_tps(r.sllm) for r in pts],
                "peer": [_tps(r.peer) for r in pts],
                "in-process": [r.bound.best[1] if r.bound else None for r in pts],
            }
            ttft = {
                "sllm": [None if r.sllm is None else r.sllm.ttft_p99_s for r in pts],
                "peer": [None if r.peer is None else r.peer.ttft_p99_s for r in pts],
            }
            for ax, series in ((ax_tps, tps), (ax_ttft, ttft)):
                for name, ys in series.items():
                    if any(y is not None for y in ys):
                        color, marker = looks[name]
                        ax.plot(
                            xs,
                            _nan(ys),
                            color=color,
                            marker=marker,
                            linestyle=dashes[i % len(dashes)],
                            label=f"{name}, prompt {prompt}",
                        )
        ticks = sorted({r.concurrency for r in rows})
        for ax, title, unit in (
            (ax_tps, "output tokens/s", "tokens/s"),
            (ax_ttft, "TTFT p99", "seconds"),
        ):
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_xlabel("concurrency (closed-loop clients)")
            ax.set_ylabel(unit)
            ax.set_ylim(bottom=0)
            ax.set_title(f"{size}: {title}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _nan(ys: Sequence[float | None]) -> list[float]:
    return [float("nan") if y is None else y for y in ys]
