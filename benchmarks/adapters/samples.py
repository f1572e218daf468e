"""The adapter benchmark's samples and the targets computed from them (pure: no I/O)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

TtftCase = Literal["resident", "dram", "ssd", "cold"]
TTFT_CASES: tuple[TtftCase, ...] = ("resident", "dram", "ssd", "cold")
TTFT_LABELS: dict[TtftCase, str] = {
    "resident": "(a) adapter resident",
    "dram": "(b) adapter from the DRAM tier",
    "ssd": "(b) adapter from the SSD tier",
    "cold": "(c) merged model, cold start from DRAM",
}
# "one": every stream on the same adapter, a diagnostic that separates the cost of LoRA itself
# from that of mixing eight adapters in one batch.
TputCase = Literal["mixed", "one", "base"]
TPUT_CASES: tuple[TputCase, ...] = ("mixed", "one", "base")
TPUT_LABELS: dict[TputCase, str] = {
    "mixed": "(i) 8 adapters mixed",
    "one": "(diagnostic) 1 adapter, every stream",
    "base": "(ii) base alone",
}
SLACK_S = 0.050  # the target's allowance over (a) + bytes / bandwidth
TPUT_TARGET = 0.7  # mixed / base tokens/s


@dataclass
class TtftSample:
    """One timed request of a TTFT case; ``worker`` is what the worker logged or reported
    (the adapter's ``resident in`` line; the merged model's instance and load)."""

    case: TtftCase
    round: int
    ttft_s: float
    total_s: float
    worker: dict[str, Any] = field(default_factory=dict)


@dataclass
class TputSample:
    """One throughput phase: ``streams`` concurrent streams of ``requests`` requests each."""

    case: TputCase
    round: int
    streams: int
    requests: int
    tokens: int
    seconds: float
    errors: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class Stats:
    median: float
    lo: float
    hi: float
    n: int


def stats(xs: Sequence[float]) -> Stats:
    """Median, min and max (NaN when empty)."""
    if not xs:
        nan = float("nan")
        return Stats(nan, nan, nan, 0)
    return Stats(statistics.median(xs), min(xs), max(xs), len(xs))


def ttft_stats(samples: Sequence[TtftSample]) -> dict[TtftCase, Stats]:
    return {c: stats([s.ttft_s for s in samples if s.case == c]) for c in TTFT_CASES}


def tput_stats(samples: Sequence[TputSample]) -> dict[TputCase, Stats]:
    return {c: stats([s.tokens_per_s for s in samples if s.case == c]) for c in TPUT_CASES}


@dataclass(frozen=True)
class Target:
    """(b) from ``tier`` against (a) + bytes / bandwidth + 50 ms."""

    tier: str
    measured_s: float
    bound_s: float
    transfer_s: float  # bytes / bandwidth (NaN: the bandwidth is unknown)

    @property
    def met(self) -> bool:
        return self.measured_s <= self.bound_s


def targets(
    by_case: dict[TtftCase, Stats], nbytes: int, bandwidth: dict[str, float | None]
) -> list[Target]:
    """The target of each (b) case; an unknown bandwidth counts as no transfer time (said in
    the report, where ``transfer_s`` is NaN)."""
    out = []
    tiers: tuple[TtftCase, ...] = ("dram", "ssd")
    for tier in tiers:
        bw = bandwidth.get(tier)
        transfer = nbytes / bw if bw else float("nan")
        extra = 0.0 if transfer != transfer else transfer
        bound = by_case["resident"].median + SLACK_S + extra
        out.append(Target(tier, by_case[tier].median, bound, transfer))
    return out
