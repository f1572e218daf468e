"""The simulator's public API: a `Scenario` in, a `Result` out (`simulate`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.scheduler.autoscaler import Scaling

from .cluster import Hardware
from .llms import SimModel


@dataclass(frozen=True)
class Arrival:
    """One request of the workload."""

    at_s: float
    model: str
    prompt_tokens: int = 256
    output_tokens: int = 128


# Every model's autoscaling knobs unless a scenario says otherwise.
DEFAULT_SCALING = Scaling(min_instances=0, max_instances=4, target_concurrency=8, keep_alive_s=60.0)


@dataclass(frozen=True)
class Scenario:
    """A cluster, its models and a workload, to be run under one system."""

    nodes: int
    hardware: Hardware
    models: Sequence[SimModel]
    arrivals: Sequence[Arrival]
    system: str = "sllm"
    scaling: Scaling = DEFAULT_SCALING
    slots: int = 8  # concurrent generations per instance (continuous batching)
    # Pass the policies every worker and every model, not only the ones that can matter
    # (`views`, `autoscale_view`): slower, the same decisions.
    exact: bool = False
    horizon_s: float | None = None  # stop here even if requests are left (None: drain)
    # The baselines' loader as a fraction of the tiers' bandwidth (None: the system's own,
    # `systems.FRAMEWORK_LOADER_EFFICIENCY`); 1.0 gives them sllm's loader.
    baseline_loader: float | None = None


@dataclass(frozen=True)
class ColdStartRecord:
    """One instance placed: when, where, from which tier, estimated against actual."""

    at: float
    model: str
    node_id: str
    worker_id: str
    source_tier: str  # where the load actually read from
    estimated_tier: str  # the tier the estimate assumed
    estimated_s: float
    actual_s: float
    why: str  # "cold" (first instance), "beside" (another while one loads), "scale"
    how: str = "elsewhere"  # the cold-start option taken: elsewhere, wait, migrate


@dataclass(frozen=True)
class RequestRecord:
    rid: int
    model: str
    arrival: float
    ttft: float  # NaN if it never got a first token (horizon reached)
    done_at: float
    cold: bool  # it waited for an instance to load


@dataclass
class Result:
    system: str
    cold_starts: list[ColdStartRecord] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    gpu_seconds: float = 0.0
    end_s: float = 0.0
    migrations: int = 0
    waits: int = 0
    evictions: int = 0
    autoscaler_steps: int = 0
    events: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # process CPU time of the run (the machine may be shared)

    def ttfts(self) -> list[float]:
        return sorted(r.ttft for r in self.requests if not math.isnan(r.ttft))

    def summary(self) -> dict[str, float]:
        t = self.ttfts()
        tiers = [c.source_tier for c in self.cold_starts]
        return {
            "requests": len(self.requests),
            "mean_ttft_s": sum(t) / len(t) if t else math.nan,
            "p50_ttft_s": percentile(t, 50),
            "p99_ttft_s": percentile(t, 99),
            "cold_starts": len(self.cold_starts),
            "dram_loads": tiers.count("dram"),
            "ssd_loads": tiers.count("ssd"),
            "registry_loads": tiers.count("registry"),
            "gpu_hours": self.gpu_seconds / 3600,
            "migrations": self.migrations,
            "waits": self.waits,
        }


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN if empty)."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]
