"""What one measurement records (every sample goes to the JSON result as-is)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    """One time-to-first-token measurement with the phases that made it up (seconds)."""

    case: str  # warm, dram, ssd, registry, baseline-cold, baseline-warm
    rep: int
    ttft_s: float
    cache_dropped: bool | None = None  # None: the case does not drop the page cache
    node: str = ""  # where the scheduler placed the instance
    tier: str = ""  # the source tier the scheduler expected
    phases: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Overhead:
    """Router + bus overhead of warm requests against the same step in this process."""

    n: int
    http_s: list[float]  # end to end through HTTP, router, NATS, worker and back
    inproc_s: list[float]  # tokenize + prefill + 1 token + decode in this process
    router_total_s: list[float] = field(default_factory=list)  # request.completed total_s
    worker_prefill_s: list[float] = field(default_factory=list)  # request.completed prefill_s
    minus_prefill_s: list[float] = field(default_factory=list)  # HTTP - that request's prefill
    same_token: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def paired_s(self) -> list[float]:
        """Per-iteration differences (the two calls of an iteration run back to back)."""
        return [h - i for h, i in zip(self.http_s, self.inproc_s, strict=True)]
