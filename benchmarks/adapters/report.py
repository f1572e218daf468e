# ruff: noqa: RUF001
"""The adapter benchmark's one Markdown report: TTFT by case, the target, throughput."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .samples import (
    SLACK_S,
    TPUT_LABELS,
    TPUT_TARGET,
    TTFT_LABELS,
    TputSample,
    TtftSample,
    targets,
    tput_stats,
    ttft_stats,
)


@dataclass
class Run:
    """Everything the report shows: what ran, the samples, the adapter's size, the tiers."""

    header: list[str]
    ttft: list[TtftSample]
    tput: list[TputSample]
    adapter_bytes: int  # its safetensors files
    worker_bytes: int | None  # what the worker logged it installed (None: no log line)
    bandwidth: dict[str, float | None]  # tier -> bytes/s, from GET /v1/cluster
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 1e3:.1f}"


def _ratio(a: float, b: float) -> str:
    return "n/a" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}"


def _bw(x: float | None) -> str:
    return "unknown" if not x else f"{x / 1e9:.2f} GB/s"


def _install_ms(samples: Sequence[TtftSample], case: str) -> str:
    """Median of the worker's own ``resident in`` times for ``case`` (what the install took
    inside the worker, without the router, the queue and the prefill)."""
    xs = sorted(float(s.worker["ms"]) for s in samples if s.case == case and "ms" in s.worker)
    return f"{xs[len(xs) // 2]:.1f}" if xs else "n/a"


def markdown(run: Run) -> str:
    """The report (see benchmarks/README.md)."""
    by_case = ttft_stats(run.ttft)
    lines = [*run.header, "", "### Time to first token (client side, ms)", ""]
    lines += [
        "| case | median | min | max | n | worker: adapter resident in (median ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case, label in TTFT_LABELS.items():
        s = by_case[case]
        install = _install_ms(run.ttft, case) if case in ("dram", "ssd") else "–"
        lines.append(
            f"| {label} | {_ms(s.median)} | {_ms(s.lo)} | {_ms(s.hi)} | {s.n} | {install} |"
        )
    logged = f"{run.worker_bytes:,}" if run.worker_bytes is not None else "not logged"
    lines += [
        "",
        f"Adapter: {run.adapter_bytes:,} bytes of safetensors (the worker logged {logged} bytes "
        f"installed). Tier bandwidth (storage service's probe): DRAM {_bw(run.bandwidth.get('dram'))}"
        f", SSD {_bw(run.bandwidth.get('ssd'))}.",
        "",
        f"Target: (b) ≤ (a) + bytes / tier bandwidth + {SLACK_S * 1e3:.0f} ms (medians).",
        "",
        "| tier | (b) median ms | bound ms | bytes / bandwidth ms | met | (c) / (b) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    cold = by_case["cold"].median
    for t in targets(by_case, run.adapter_bytes, run.bandwidth):
        transfer = "unknown (0 used)" if math.isnan(t.transfer_s) else f"{t.transfer_s * 1e3:.3f}"
        met = "n/a" if math.isnan(t.measured_s) else ("**yes**" if t.met else "**NO**")
        lines.append(
            f"| {t.tier} | {_ms(t.measured_s)} | {_ms(t.bound_s)} | {transfer} | {met} | "
            f"{_ratio(cold, t.measured_s)} |"
        )
    lines += _throughput(run.tput)
    if run.failures:
        lines += ["", "### Failures", "", *[f"- {f}" for f in run.failures]]
    if run.notes:
        lines += ["", "Notes:", "", *[f"- {n}" for n in run.notes]]
    return "\n".join(lines)


def _throughput(samples: Sequence[TputSample]) -> list[str]:
    by_case = tput_stats(samples)
    first = samples[0] if samples else None
    shape = (
        f"{first.streams} concurrent streams × {first.requests} requests, "
        f"{first.tokens // max(first.streams * first.requests, 1)} tokens each"
        if first
        else "no samples"
    )
    lines = [
        "",
        f"### Throughput of one worker (tokens/s; {shape})",
        "",
        "| case | median | min | max | n | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case, label in TPUT_LABELS.items():
        s = by_case[case]
        errors = sum(x.errors for x in samples if x.case == case)
        lines.append(f"| {label} | {s.median:.1f} | {s.lo:.1f} | {s.hi:.1f} | {s.n} | {errors} |")
    base = by_case["base"].median
    ratio = by_case["mixed"].median / base if samples else float("nan")
    met = "n/a" if math.isnan(ratio) else ("**yes**" if ratio >= TPUT_TARGET else "**NO**")
    one = by_case["one"].median / base if samples else float("nan")
    lines += [
        "",
        f"Mixed / base: {ratio:.2f} (target ≥ {TPUT_TARGET}): met {met}. "
        f"One adapter / base: {one:.2f} (the cost of LoRA without the mixing).",
    ]
    return lines
