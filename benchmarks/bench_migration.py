# ruff: noqa: RUF001
"""Live-migration benchmark: the pause a migration puts into a token stream, and the time to
free the source worker, against context length; compared with what sending the KV cache of
the same context would take at the bus bandwidth measured in the same run.

``python -m benchmarks.bench_migration [--size medium] [--contexts 256,1024,2048] [--reps 2]``

Starts ``sllm up`` with 2 nodes x 1 CPU worker, deploys one demo model, stages it in both
nodes' DRAM tiers, and per trial streams a greedy completion whose prompt has the given number
of tokens; after a few tokens it asks the scheduler to migrate the generation to the other
worker (`sched.migrate`, freeing the source), while the client timestamps every token.
Prints ONE Markdown report and saves it with every trial as JSON under ``<dir>/results/``; the
figure (pause against context length) goes to ``--plot``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

from benchmarks import plotting
from benchmarks.migration.trial import Trial, bus_bandwidth, measure
from benchmarks.serving.cluster import BusClient, UpCluster
from benchmarks.serving.common import REPO_ROOT, log, save_results
from benchmarks.serving.models import prepare_model

DEFAULT_DIR = REPO_ROOT / ".bench" / "migration"
MODEL = "mig"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_migration", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="medium", help="demo model size")
    p.add_argument("--contexts", default="256,1024,2048", help="prompt lengths in tokens")
    p.add_argument("--reps", type=int, default=2, help="trials per context length")
    p.add_argument("--after", type=int, default=8, help="tokens streamed before migrating")
    p.add_argument("--max-tokens", type=int, default=480, help="max_tokens of each generation")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="cache and results directory")
    p.add_argument(
        "--plot", type=Path, default=plotting.RESULTS / "migration.png", help="the figure (PNG)"
    )
    args = p.parse_args(argv)
    args.contexts = [int(x) for x in args.contexts.split(",") if x.strip()]
    if not args.contexts or args.reps < 1 or args.after < 1 or args.max_tokens <= args.after:
        p.error("need contexts, --reps >= 1 and --max-tokens > --after >= 1")
    return args


def kv_bytes_per_token(size: str) -> tuple[int, str]:
    """KV-cache bytes per token of the demo model (every layer's keys and values)."""
    from libs.demo import DEMO_SIZES
    from services.scheduler.migration_policy import kv_cache_bytes

    spec = DEMO_SIZES[size]
    head_dim = spec.hidden_size // spec.num_attention_heads
    dtype_bytes = 4 if spec.dtype == "float32" else 2
    per = kv_cache_bytes(
        1,
        layers=spec.num_hidden_layers,
        kv_heads=spec.num_key_value_heads,
        head_dim=head_dim,
        dtype_bytes=dtype_bytes,
    )
    how = (
        f"2 × {spec.num_hidden_layers} layers × {spec.num_key_value_heads} KV heads × "
        f"{head_dim} × {dtype_bytes} B"
    )
    return per, how


def _ready_instance(cluster: UpCluster, bus: BusClient) -> tuple[str, str]:
    """The one ready instance of the model: (instance id, worker id)."""
    from libs.cluster import ClusterState

    async def read() -> list[tuple[str, str]]:
        import redis.asyncio as aioredis

        from libs.protocol import Keys

        client = aioredis.Redis.from_url(cluster.redis_url, socket_timeout=10)
        try:
            recs = await ClusterState(client, Keys(cluster.root)).instances(MODEL)
        finally:
            await client.aclose()
        return [(r.instance_id, r.worker_id) for r in recs if r.status == "ready"]

    deadline = time.monotonic() + 120
    while True:
        ready = bus._call(read(), 30)
        if len(ready) == 1:
            return ready[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"expected one ready instance of {MODEL}, found {ready}")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    when = dt.datetime.now()
    root = args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    model = prepare_model(root, args.size)
    state = root / "run"
    shutil.rmtree(state, ignore_errors=True)
    cluster = UpCluster(
        state,
        nodes=2,
        model=model.sllm,
        log_path=root / "up.log",
        env={
            "SLLM_TORCH_THREADS": "1",
            "SLLM_START_TIMEOUT": "600",
            "SLLM_STREAM_IDLE_TIMEOUT": "600",
            "SLLM_PREFETCH_REPLICAS": "0",
        },
    )
    trials: list[Trial] = []
    failures: list[str] = []
    bandwidth = float("nan")
    cluster.start()
    bus = None
    try:
        import httpx

        bus = BusClient(cluster.nats_url, cluster.root)
        with httpx.Client(base_url=cluster.base_url, timeout=120) as http:
            body = {
                "name": MODEL,
                "checkpoint_uri": model.sllm.as_uri(),
                "keep_alive_s": 3600.0,
                "max_instances": 1,
            }
            r = http.post("/v1/deployments", json=body)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"deploy: HTTP {r.status_code}: {r.text}")
            for node in cluster.node_ids:  # both workers read the model from DRAM
                bus.ensure(MODEL, model.sllm.as_uri(), "dram", node, 600.0)
            warm = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "temperature": 0.0}
            if http.post("/v1/completions", json=warm, timeout=600).status_code != 200:
                raise RuntimeError("the first request failed")
        bandwidth = bus_bandwidth(bus)
        log(f"bus bandwidth: {bandwidth / 1e9:.2f} GB/s")
        rng = random.Random(0)
        for rep in range(1, args.reps + 1):
            for ctx in args.contexts:
                prompt = [rng.randrange(3, 1000) for _ in range(ctx)]
                source, worker = _ready_instance(cluster, bus)
                others = [f"{n}-w0" for n in cluster.node_ids if f"{n}-w0" != worker]
                log(f"rep {rep}: context {ctx}: {worker} -> {others[0]}")
                try:
                    t = measure(
                        bus,
                        cluster.base_url,
                        MODEL,
                        prompt,
                        source_instance=source,
                        destination_worker=others[0],
                        migrate_after_tokens=args.after,
                        max_tokens=args.max_tokens,
                        timeout=600.0,
                    )
                    trials.append(t)
                    log(f"  {t.outcome}: migrate {t.migrate_s:.3f}s, pause {t.pause_s:.3f}s")
                except Exception as exc:
                    failures.append(f"context {ctx} rep {rep}: {exc!r}")
                    log(f"  failed: {exc!r}")
    finally:
        if bus is not None:
            bus.close()
        cluster.stop()
        shutil.rmtree(state, ignore_errors=True)
    report = _report(args, when, trials, failures, bandwidth)
    print(report)
    save_results(
        root,
        f"migration-{when:%Y%m%d-%H%M%S}",
        report,
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "bandwidth_bps": bandwidth,
            "trials": [dataclasses.asdict(t) for t in trials],
            "failures": failures,
        },
    )
    _draw(args, when, trials, bandwidth)
    return 1 if failures else 0


def _draw(
    args: argparse.Namespace, when: dt.datetime, trials: list[Trial], bandwidth: float
) -> None:
    if not trials:
        return
    if not plotting.available():
        log(plotting.MISSING)
        return
    from benchmarks.migration.plot import plot

    title = (
        f"Live migration, {args.size} demo model, 2 CPU workers: {when:%Y-%m-%d %H:%M}, "
        f"{os.cpu_count()} CPUs, median of {args.reps} trial(s) per length"
    )
    path = plot(
        trials,
        args.plot,
        kv_bytes_per_token=kv_bytes_per_token(args.size)[0],
        after_tokens=args.after,
        bandwidth_bps=bandwidth,
        title=title,
    )
    log(f"plot: {path}")


def _report(
    args: argparse.Namespace,
    when: dt.datetime,
    trials: list[Trial],
    failures: list[str],
    bandwidth: float,
) -> str:
    per_token, how = kv_bytes_per_token(args.size)
    lines = [
        f"## Migration benchmark: {args.size} demo model, 2 nodes",
        "",
        f"Run: {when:%Y-%m-%d %H:%M}, {platform.node()}, {os.cpu_count()} CPUs; `sllm up` with 2 "
        f"nodes × 1 CPU worker (torch threads 1 each), the model in both DRAM tiers. Per trial: a "
        f"greedy streamed completion (max_tokens {args.max_tokens}) with a prompt of N random "
        f"token ids; after {args.after} tokens, `sched.migrate` moves it to the other worker "
        f"(free_source). Medians of {args.reps} trials.",
        f"KV cache of this model: {per_token} bytes per token ({how}); bus bandwidth measured "
        f"in this run (NATS, one connection to another, 1 MiB messages): "
        f"{bandwidth / 1e9:.2f} GB/s. Token ids on the wire: 4 bytes each (msgpack ≤ 5).",
        "",
        "| context tokens | moved | rounds | tokens recomputed | pause in the stream s | "
        "pause (destination's measure) s | usual gap between tokens s | time to free the source s "
        "| of which loading the destination s | KV cache MB | KV transfer at the bus bandwidth s "
        "| token ids KB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ctx in args.contexts:
        ts = [t for t in trials if t.context_tokens == ctx]
        if not ts:
            lines.append(f"| {ctx} | 0/{args.reps} |" + " — |" * 10)
            continue
        moved = sum(t.outcome == "committed" for t in ts)
        ev = [t.pause_event_s for t in ts if t.pause_event_s is not None]
        kv = per_token * (ctx + args.after)
        ev_cell = f"{statistics.median(ev):.3f}" if ev else "—"
        lines.append(
            f"| {ctx} | {moved}/{len(ts)} | {statistics.median(t.rounds for t in ts):g} "
            f"| {statistics.median(t.tokens_recomputed for t in ts):g} "
            f"| {statistics.median(t.pause_s for t in ts):.3f} | {ev_cell} "
            f"| {statistics.median(t.median_gap_s for t in ts):.3f} "
            f"| {statistics.median(t.migrate_s for t in ts):.3f} "
            f"| {statistics.median(t.load_s for t in ts):.3f} "
            f"| {kv / 1e6:.1f} | {kv / bandwidth:.3f} | {(ctx + args.after) * 4 / 1e3:.1f} |"
        )
    lines += [
        "",
        "- pause in the stream: the longest gap between two tokens after the migrate request, "
        "minus the stream's median gap. Time to free the source: from the request to the "
        "scheduler's answer (every generation left the source).",
        "- KV transfer: the bytes a KV-cache migration of the same context would send, at the "
        "bus bandwidth above, before the destination could continue (no recomputation); token "
        "migration sends the ids instead and recomputes while the source keeps decoding.",
    ]
    if failures:
        lines += ["", "Failures:", *[f"- {f}" for f in failures]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
