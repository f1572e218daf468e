# ruff: noqa: RUF001
"""The trace benchmark's Markdown: per policy, TTFT, cold starts and the DRAM hit rate."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from benchmarks.serving.common import percentile

from .run import PolicyRun


@dataclass(frozen=True)
class Summary:
    policy: str
    requests: int
    failed: int
    mean_ttft_s: float
    p50_ttft_s: float
    p99_ttft_s: float
    cold_starts: int  # instances that became ready during the trace
    tiers: dict[str, int]  # where those loads read the checkpoint from
    evictions: int
    wall_s: float

    @property
    def dram_hit_rate(self) -> float:
        return self.tiers.get("dram", 0) / self.cold_starts if self.cold_starts else math.nan


def summarise(run: PolicyRun) -> Summary:
    ttfts = [o.ttft_s for o in run.outcomes if o.ttft_s is not None]
    ready = [e for e in run.events if e.get("kind") == "instance.ready"]
    evicted = [e for e in run.events if e.get("kind") == "storage.evicted"]
    return Summary(
        policy=run.policy,
        requests=len(run.outcomes),
        failed=len(run.outcomes) - len(ttfts),
        mean_ttft_s=sum(ttfts) / len(ttfts) if ttfts else math.nan,
        p50_ttft_s=percentile(ttfts, 50),
        p99_ttft_s=percentile(ttfts, 99),
        cold_starts=len(ready),
        tiers=dict(Counter(str(e.get("source_tier", "?")) for e in ready)),
        evictions=len(evicted),
        wall_s=run.wall_s,
    )


def _s(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.3f}"


def _pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.0%}"


def _ratio(base: float, ours: float) -> str:
    return "—" if math.isnan(base) or math.isnan(ours) or ours <= 0 else f"{base / ours:.2f}×"


def table(ours: Summary, base: Summary | None) -> list[str]:
    """One row per policy, then the baseline ÷ ours ratios (without a baseline: one row)."""
    lines = [
        "| placement | requests | failed | mean TTFT s | p50 TTFT s | p99 TTFT s | cold starts "
        "| from DRAM / SSD / registry | DRAM hit rate | evictions |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in (ours, base) if base is not None else (ours,):
        t = s.tiers
        lines.append(
            f"| {s.policy} | {s.requests} | {s.failed} | {_s(s.mean_ttft_s)} | {_s(s.p50_ttft_s)} "
            f"| {_s(s.p99_ttft_s)} | {s.cold_starts} | {t.get('dram', 0)} / {t.get('ssd', 0)} / "
            f"{t.get('registry', 0)} | {_pct(s.dram_hit_rate)} | {s.evictions} |"
        )
    if base is None:
        return lines
    lines += [
        "",
        f"- {base.policy} ÷ {ours.policy}: mean TTFT {_ratio(base.mean_ttft_s, ours.mean_ttft_s)}, "
        f"p99 TTFT {_ratio(base.p99_ttft_s, ours.p99_ttft_s)} (above 1×: ours is faster)",
    ]
    return lines
