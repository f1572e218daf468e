# ruff: noqa: RUF001
"""``python -m benchmarks.simulator``: the paper's comparison in simulation, on the testbed
(4 servers x 4 GPUs) or at 1,000 servers x 8 GPUs.

``python -m benchmarks.simulator [--preset testbed|1000x8] [--systems sllm,...] [--rates 0.1,0.2]
[--workload azure|gamma] [--trace PATH] [--duration 3600] [--keep-alive 60] [--seed 1]``

Prints ONE Markdown report (the table per rate and system, the ordering per rate), saves it
with a JSON record under ``--dir`` and the plot as ``benchmarks/results/sim-<preset>.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

from .cluster import GB
from .plot import plot
from .report import ordering, save, table
from .run import PRESETS, SAMPLE_TRACE, Workload, sweep
from .systems import FRAMEWORK_LOADER_EFFICIENCY, SYSTEMS

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks.simulator", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="testbed")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    p.add_argument("--rates", default="", help="requests/s, comma-separated (default: preset's)")
    p.add_argument("--workload", choices=("azure", "gamma"), default="azure")
    p.add_argument(
        "--trace", type=Path, default=SAMPLE_TRACE, help="a file in the Azure Functions format"
    )
    p.add_argument("--start-minute", type=int, default=480, help="of the trace's day")
    p.add_argument("--duration", type=float, default=3600.0, help="seconds of trace")
    p.add_argument("--cv", type=float, default=4.0, help="gamma workload: inter-arrival CV")
    p.add_argument("--keep-alive", type=float, default=60.0, help="keep_alive_s of every model")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--registry-gbps", type=float, help="override: registry GB/s per server")
    p.add_argument("--dram-gb", type=float, help="override: DRAM tier GB per server")
    p.add_argument(
        "--baseline-loader",
        type=float,
        help="override: the baselines' loader as a fraction of a tier's bandwidth (1: sllm's)",
    )
    p.add_argument("--dir", type=Path, default=REPO / ".bench" / "simulator")
    p.add_argument("--plot", type=Path, default=None, help="default: results/sim-<preset>.png")
    args = p.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown or not args.systems:
        p.error(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    when = dt.datetime.now()
    preset = PRESETS[args.preset]
    hw = preset.hardware
    if args.registry_gbps:
        hw = dataclasses.replace(hw, registry_bw=args.registry_gbps * GB)
    if args.dram_gb:
        hw = dataclasses.replace(hw, dram_bytes=int(args.dram_gb * GB))
    preset = dataclasses.replace(preset, hardware=hw)
    workload = Workload(
        kind=args.workload,
        trace=args.trace,
        start_minute=args.start_minute,
        duration_s=args.duration,
        cv=args.cv,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    points = sweep(
        preset,
        args.systems,
        workload,
        rates=args.rates or None,
        keep_alive_s=args.keep_alive,
        baseline_loader=args.baseline_loader,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    wall = time.perf_counter() - t0
    source = (
        f"Azure Functions format trace `{workload.trace.name}`, minutes "
        f"{workload.start_minute}-{workload.start_minute + round(workload.duration_s / 60)}"
        if workload.kind == "azure"
        else f"gamma arrivals (CV {workload.cv:g}), Zipf({workload.zipf_s:g}) popularity"
    )
    lines = [
        f"## Simulation: {preset.name} ({preset.nodes} servers × {hw.gpus} GPUs)",
        "",
        f"Run: {when:%Y-%m-%d %H:%M}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"{wall:.0f} s in all. Servers: DRAM tier {hw.dram_bytes / GB:.0f} GB at "
        f"{hw.dram_bw / GB:g} GB/s, SSD {hw.ssd_bytes / GB:.0f} GB at {hw.ssd_bw / GB:g} GB/s, "
        f"registry {hw.registry_bw / GB:g} GB/s, {hw.fixed_s:g} s fixed per load. "
        f"{preset.models} models (6.7/13.4/26/66 GB in turn), keep-alive {args.keep_alive:g} s, "
        f"{workload.duration_s:g} s of {source}, seed {workload.seed}; baselines' loader at "
        f"{args.baseline_loader or FRAMEWORK_LOADER_EFFICIENCY:.2f} of a tier's bandwidth.",
        "",
        *table(points),
        "",
        "Ordering by mean TTFT:",
        *ordering(points),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    save(args.dir / f"sim-{preset.name}-{when:%Y%m%d-%H%M%S}", preset, workload, points, text)
    png = args.plot or REPO / "benchmarks" / "results" / f"sim-{preset.name}.png"
    title = f"{preset.name}: {preset.nodes} servers × {hw.gpus} GPUs, {workload.kind} workload"
    done = plot(points, png, title)
    print(f"plot: {done}" if done else "plot: skipped (matplotlib not installed)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
