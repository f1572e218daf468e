"""Experiments: a cluster preset, a workload at several request rates, every system; one
`simulate` per (system, rate)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.scheduler.autoscaler import Scaling

from . import azure_trace
from .cluster import GB, Hardware
from .llms import SimModel, model_fleet
from .scenario import Arrival, Result, Scenario
from .sim import simulate
from .workloads import gamma_zipf

SAMPLE_TRACE = Path(__file__).parent / "data" / "azure_functions_sample.csv"


@dataclass(frozen=True)
class Preset:
    name: str
    nodes: int
    hardware: Hardware
    models: int
    rates: tuple[float, ...]  # requests/s in all


PRESETS = {
    p.name: p
    for p in (
        # The paper's testbed: 4 servers x 4 GPUs.
        Preset(
            "testbed",
            4,
            Hardware(gpus=4, dram_bytes=int(256 * GB), ssd_bytes=int(2000 * GB)),
            models=64,
            rates=(0.1, 0.2, 0.4, 0.8, 1.6),
        ),
        Preset(
            "1000x8",
            1000,
            Hardware(gpus=8, dram_bytes=int(512 * GB), ssd_bytes=int(4000 * GB)),
            models=4000,
            rates=(25.0, 50.0, 100.0, 200.0),
        ),
    )
}


@dataclass(frozen=True)
class Workload:
    kind: str = "azure"  # "azure" (a trace in the Azure Functions format) or "gamma"
    trace: Path = SAMPLE_TRACE
    start_minute: int = 480  # 08:00, the morning rise of the trace's day
    duration_s: float = 3600.0
    cv: float = 4.0
    zipf_s: float = 1.0
    seed: int = 1


def arrivals_for(w: Workload, models: Sequence[SimModel], rate: float) -> list[Arrival]:
    if w.kind == "gamma":
        return gamma_zipf(
            models, duration_s=w.duration_s, rate=rate, cv=w.cv, zipf_s=w.zipf_s, seed=w.seed
        )
    rows = azure_trace.read_trace(w.trace)
    minutes = max(1, round(w.duration_s / 60))
    return azure_trace.arrivals(
        rows, models, rate=rate, start_minute=w.start_minute, minutes=minutes, seed=w.seed
    )


@dataclass
class Point:
    system: str
    rate: float
    requests: int
    result: Result
    summary: dict[str, float] = field(default_factory=dict)


def sweep(
    preset: Preset,
    systems: Sequence[str],
    workload: Workload,
    *,
    rates: Sequence[float] | None = None,
    keep_alive_s: float = 60.0,
    baseline_loader: float | None = None,
    log: Callable[[str], None] = print,
) -> list[Point]:
    """Every system at every rate on the same arrivals per rate."""
    models = model_fleet(preset.models)
    scaling = Scaling(
        min_instances=0, max_instances=4, target_concurrency=8, keep_alive_s=keep_alive_s
    )
    out = []
    for rate in rates or preset.rates:
        arrivals = arrivals_for(workload, models, rate)
        for system in systems:
            t0 = time.perf_counter()
            result = simulate(
                Scenario(
                    nodes=preset.nodes,
                    hardware=preset.hardware,
                    models=models,
                    arrivals=arrivals,
                    system=system,
                    scaling=scaling,
                    baseline_loader=baseline_loader,
                )
            )
            s = result.summary()
            log(
                f"{preset.name} {system:>15} rate {rate:g}/s: {len(arrivals)} requests, mean TTFT "
                f"{s['mean_ttft_s']:.2f}s, p99 {s['p99_ttft_s']:.2f}s, {int(s['cold_starts'])} "
                f"cold starts, {s['gpu_hours']:.1f} GPU-h; {time.perf_counter() - t0:.1f}s wall, "
                f"{result.cpu_s:.1f}s CPU"
            )
            out.append(Point(system, rate, len(arrivals), result, s))
    return out
