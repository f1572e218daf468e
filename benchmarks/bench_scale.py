"""Scale benchmark: the real router, scheduler, NATS and Valkey with hundreds of hollow workers
(`benchmarks/scale`), 200 deployed models and a bursty open-loop trace at increasing rates.

``python -m benchmarks.bench_scale [--workers 100] [--rates 25,50,100,200] [--step-s 40]
[--models 200] [--quick]``

Per step it reports placement latency (a ``sched.place`` request to its reply, as seen on the
NATS server), scheduler CPU per placement, router CPU per request, Valkey commands and NATS
messages per request, event volume, and the TTFT overhead: the client's TTFT minus what the
hollow worker simulated (the part of the load the request waited for, and the prefill). It
prints one Markdown table and saves it with every number as JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.scale.cluster import ClusterSpec, ScaleCluster
from benchmarks.scale.load import replay
from benchmarks.scale.probes import BusMonitor, Counters, Readings
from benchmarks.scale.report import OVERHEAD_LIMIT_S, knee, summarise, table
from benchmarks.scale.sim import GB, checkpoint_uri
from benchmarks.serving.common import log
from benchmarks.trace.workload import TraceSpec, make_trace
from libs.common.service import fast_loop_factory

RESULTS = Path(__file__).resolve().parent / "results"
IDLE_S = 10.0  # the background is measured this long, without requests, before the steps


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=100, help="hollow workers (8 per node)")
    p.add_argument("--workers-per-node", type=int, default=8)
    p.add_argument("--nodes-per-process", type=int, default=32)
    p.add_argument("--rates", default="25,50,100,200", help="requests/s, one step each")
    p.add_argument("--step-s", type=float, default=40.0, help="seconds per rate")
    p.add_argument("--models", type=int, default=200)
    p.add_argument("--min-gb", type=float, default=2.0)
    p.add_argument("--max-gb", type=float, default=30.0)
    p.add_argument("--keep-alive", type=float, default=30.0, help="keep_alive_s of every model")
    p.add_argument("--cv", type=float, default=4.0, help="burstiness of the trace")
    p.add_argument("--max-tokens", default="8,32", help="range of max_tokens, min,max")
    p.add_argument("--settle-s", type=float, default=10.0, help="wait after deploying")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="100 workers, rates 10,25, 10 s each")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--hollow-arg", action="append", default=[], help="passed to hollow.py")
    p.add_argument(
        "--profile", action="store_true", help="py-spy the services during the last step"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.workers, args.rates, args.step_s, args.settle_s = 100, "10,25", 10.0, 3.0
    args.rate_list = [float(x) for x in args.rates.split(",") if x.strip()]
    lo, hi = (int(x) for x in args.max_tokens.split(","))
    args.token_range = (lo, hi)
    return args


def model_sizes(n: int, lo_gb: float, hi_gb: float, seed: int) -> list[int]:
    """Log-uniform sizes in [lo, hi] GB: many small models, a few large ones."""
    rng = random.Random(seed)
    return [int(math.exp(rng.uniform(math.log(lo_gb), math.log(hi_gb))) * GB) for _ in range(n)]


def deploy_all(c: ScaleCluster, args: argparse.Namespace) -> list[str]:
    names = [f"m{i:03d}" for i in range(args.models)]
    sizes = model_sizes(args.models, args.min_gb, args.max_gb, args.seed)
    with httpx.Client(base_url=c.base_url, timeout=60) as http:
        for name, size in zip(names, sizes, strict=True):
            body = {
                "name": name,
                "checkpoint_uri": checkpoint_uri(c.spec.registry, name, size),
                "keep_alive_s": args.keep_alive,
                "min_instances": 0,
                "max_instances": 1,
            }
            r = http.post("/v1/deployments", json=body)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"deploy {name}: HTTP {r.status_code}: {r.text[:300]}")
    return names


async def run_steps(c: ScaleCluster, args: argparse.Namespace, names: list[str]) -> list[Any]:
    pids = {**c.pids(), "client": os.getpid()}
    readings = Readings(c.varz_url, c.redis.url, pids)
    monitor = BusMonitor(c.root)
    await monitor.start(c.nats.url)
    steps: list[Any] = []
    try:
        await asyncio.sleep(args.settle_s)  # the deployments' prefetches settle
        before = readings.read()
        await asyncio.sleep(IDLE_S)
        steps.append(idle_baseline(readings.read().minus(before), c.spec.workers))
        log(json.dumps(steps[0]))
        for k, rate in enumerate(args.rate_list):
            trace = make_trace(
                TraceSpec(
                    tuple(names),
                    duration_s=args.step_s,
                    total_rate=rate,
                    cv=args.cv,
                    seed=args.seed + k,
                )
            )
            log(f"step {rate:g} req/s: {len(trace)} requests over {args.step_s:g}s")
            monitor.take()
            if args.profile and k == len(args.rate_list) - 1:
                profile(c, pids, args.step_s)
            before = readings.read()
            outcomes = await replay(
                "127.0.0.1", c.port, trace, max_tokens=args.token_range, seed=args.seed + k
            )
            delta = readings.read().minus(before)
            events, placements, loads, received = monitor.take()
            step = summarise(
                workers=c.spec.workers,
                rate=rate,
                outcomes=outcomes,
                delta=delta,
                events=events,
                placements=placements,
                loads=loads,
                monitor_received=received,
            )
            log(json.dumps({k: v for k, v in step.items() if not isinstance(v, dict)}))
            steps.append(step)
    finally:
        await monitor.close()
        readings.close()
    return steps


def idle_baseline(delta: Counters, workers: int) -> dict[str, Any]:
    """What the cluster costs with no requests: heartbeats, refreshes, housekeeping."""
    secs = max(delta.at, 1e-9)
    return {
        "workers": workers,
        "rate": 0.0,
        "seconds": round(secs, 1),
        "redis_cmds_per_s": delta.redis_commands / secs,
        "nats_in_per_s": delta.nats_in / secs,
        "redis_top_per_s": {
            k: round(v / secs)
            for k, v in sorted(delta.redis_by_command.items(), key=lambda kv: -kv[1])[:6]
        },
        **{f"{name}_cpu_pct": v / secs * 100 for name, v in delta.cpu_s.items()},
        "others_cpu_pct": (delta.machine_busy_s - sum(delta.cpu_s.values())) / secs * 100,
    }


def profile(c: ScaleCluster, pids: dict[str, int], step_s: float) -> None:
    """py-spy (raw collapsed stacks) of every Python process, from a third into the step for
    half of it, written next to the cluster's logs; runs in the background."""
    spy = Path(sys.executable).with_name("py-spy")
    out = c.tmp / "profiles"
    out.mkdir(exist_ok=True)
    for name, pid in pids.items():
        if name in ("nats", "valkey"):
            continue
        cmd = (
            f"sleep {step_s / 3:.0f}; exec {spy} record -d {step_s / 2:.0f} -r 50 -f raw "
            f"--nonblocking -o {out / name}.txt --pid {pid}"
        )
        subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log(f"profiling into {out}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nodes = math.ceil(args.workers / args.workers_per_node)
    spec = ClusterSpec(
        nodes=nodes,
        workers_per_node=args.workers_per_node,
        nodes_per_process=args.nodes_per_process,
        hollow_args=tuple(a for h in args.hollow_arg for a in h.split()),
    )
    with ScaleCluster(spec) as c:
        t0 = time.monotonic()
        names = deploy_all(c, args)
        log(f"deployed {len(names)} models in {time.monotonic() - t0:.1f}s")
        with asyncio.Runner(loop_factory=fast_loop_factory()) as runner:
            steps = runner.run(run_steps(c, args, names))
        logs = str(c.tmp)
    idle, steps = steps[0], steps[1:]
    rate = knee(steps)
    report = table(steps) + (
        f"\n\np99 TTFT overhead passes {OVERHEAD_LIMIT_S * 1000:.0f} ms at "
        + (f"{rate:g} req/s" if rate is not None else "none of the rates")
        + f" ({spec.workers} workers, {nodes} nodes). Logs: {logs}\n"
    )
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    path = args.out / f"scale-{spec.workers}w-{stamp}.json"
    payload = {
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "idle": idle,
        "steps": steps,
        "knee_rate": rate,
    }
    path.write_text(json.dumps(payload, indent=1, default=str))
    log(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
