# ruff: noqa: RUF001
"""Serving benchmark: time to first token through the running system, against a typical
serverless cold start, and the router + bus overhead of a warm request.

``python -m benchmarks.bench_serving [--reps 3] [--size 1b] [--dir .bench/serving]
[--only warm,dram,ssd,registry,baseline,overhead]``

Starts the whole system with ``sllm up`` (its own root, port and data directory), measures
TTFT warm and cold from the DRAM tier, the SSD tier and the registry, runs the baseline (a
fresh process doing ``from_pretrained`` + ``generate``) in the same run, and prints ONE report
in Markdown, saved with every sample (JSON) under ``<dir>/results/``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

from benchmarks import plotting
from benchmarks.serving.baseline import baseline_sample
from benchmarks.serving.cases import Case, Ctx, cold_case
from benchmarks.serving.client import Api, LeanClient
from benchmarks.serving.cluster import BusClient, UpCluster
from benchmarks.serving.common import DEFAULT_DIR, cpu_busy, log, own_cpu
from benchmarks.serving.models import ModelFiles, prepare_model
from benchmarks.serving.overhead import measure_overhead
from benchmarks.serving.report import Run, jsonable, markdown
from benchmarks.serving.samples import Overhead, Sample

CASE_NAMES = ("warm", "dram", "ssd", "registry", "baseline", "overhead")
PROMPT = "Once upon a time"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_serving", description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="repetitions of each cold case")
    p.add_argument("--size", default="1b", help="demo model size (tiny for a smoke run)")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="cache and results directory")
    p.add_argument("--only", default=",".join(CASE_NAMES), help="comma-separated cases")
    p.add_argument("--nodes", type=int, default=2, help="simulated nodes (1 CPU worker each)")
    p.add_argument("--registry-reps", type=int, default=0, help="registry reps (0: --reps)")
    p.add_argument("--warm-per-rep", type=int, default=3, help="warm requests after each load")
    p.add_argument("--overhead-n", type=int, default=200, help="requests of the overhead case")
    p.add_argument("--max-tokens", type=int, default=1, help="max_tokens of TTFT requests")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch threads of the workers, the in-process step and the baseline (0: default)",
    )
    p.add_argument("--keep", action="store_true", help="keep the run's state directory")
    p.add_argument(
        "--prefetch-replicas",
        type=int,
        default=0,
        help="the scheduler's SLLM_PREFETCH_REPLICAS (copies made on deploy; system default 1)",
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="PNG of TTFT by case (default: benchmarks/results/serving-<size>.png)",
    )
    args = p.parse_args(argv)
    args.only = {c.strip() for c in args.only.split(",") if c.strip()}
    unknown = args.only - set(CASE_NAMES)
    if unknown or args.reps < 1 or args.nodes < 1:
        p.error(f"bad --only {sorted(unknown)}, --reps or --nodes")
    return args


def _meminfo_gib() -> float:
    try:
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        return int(first.split()[1]) / (1 << 20)
    except (OSError, ValueError, IndexError):
        return float("nan")


def _header(args: argparse.Namespace, model: ModelFiles, when: dt.datetime) -> list[str]:
    import torch

    from libs.demo import DEMO_SIZES, demo_param_count

    spec = DEMO_SIZES[model.size]
    params = demo_param_count(spec)
    count = f"{params / 1e9:.2f} B" if params >= 1e9 else f"{params / 1e6:.1f} M"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU workers)"
    sllm_bytes = sum(f.stat().st_size for f in model.sllm.iterdir() if f.is_file())
    return [
        f"## Serving benchmark: time to first token, {model.size} demo model",
        "",
        f"Model: Llama-shaped demo model `{model.size}` ({count} "
        f"params, {spec.dtype}, hidden {spec.hidden_size}, {spec.num_hidden_layers} layers, "
        f"vocab {spec.vocab_size}); Hugging Face directory {model.hf_bytes / 1e9:.2f} GB, "
        f"sllm checkpoint {sllm_bytes / 1e9:.2f} GB.",
        f"Run: {when:%Y-%m-%d %H:%M}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"{_meminfo_gib():.0f} GiB RAM, GPU: {gpu}; Python {platform.python_version()}, "
        f"torch {metadata.version('torch')}, transformers {metadata.version('transformers')}.",
        f"System: `sllm up` with {args.nodes} nodes × 1 CPU worker; staged tiers are on "
        f"{_chosen(args)}; every cold start is a fresh deployment (then deleted, its copies "
        f"evicted); copies made on deploy (SLLM_PREFETCH_REPLICAS): {args.prefetch_replicas}. "
        f"Requests: `/v1/completions`, prompt {args.prompt!r}, greedy, "
        f"max_tokens={args.max_tokens}, streamed; TTFT = client side, from sending the request "
        f"to the first SSE event carrying a choice.",
    ]


def _chosen(args: argparse.Namespace) -> str:
    return "node-1" if args.nodes > 1 else "node-0"


def _warm_up_workers(ctx: Ctx, tiny: ModelFiles) -> list[str]:
    """Fetch (convert) and load the tiny model once on every node, as long-running services would
    have done: the storage service imports the converter, the worker the model code; returns the
    deployments, left loaded."""
    names = []
    for node in ctx.cluster.node_ids:
        name = f"warmup-{node}"
        uri = tiny.hf.as_uri()
        ctx.api.deploy(name, uri)
        ctx.bus.ensure(name, uri, "dram", node, 300.0)
        ctx.api.stream(name, ctx.prompt, 1)
        names.append(name)
    return names


def _run_cases(
    args: argparse.Namespace, ctx: Ctx, tiny: ModelFiles, samples: list[Sample], failures: list[str]
) -> Overhead | None:
    overhead = None
    warmups = _warm_up_workers(ctx, tiny)
    log(f"workers warmed up: {', '.join(warmups)}")
    try:
        if "overhead" in args.only:
            log(f"overhead: {args.overhead_n} warm requests through HTTP and in process")
            lean = LeanClient(ctx.cluster.base_url, timeout=60.0)
            try:
                overhead = measure_overhead(
                    lean,
                    ctx.bus,
                    warmups[0],
                    tiny.sllm,
                    args.prompt,
                    args.overhead_n,
                    cpu_seconds=ctx.cluster.cpu_seconds,
                )
            finally:
                lean.close()
    except Exception as exc:
        failures.append(f"overhead: {exc!r}")
        log(f"overhead failed: {exc!r}")
    finally:
        for name in warmups:
            ctx.api.delete(name)
    warm_n = args.warm_per_rep if "warm" in args.only else 0
    for rep in range(1, args.reps + 1):
        plan: list[Case] = []
        if "dram" in args.only or warm_n:
            plan.append("dram" if "dram" in args.only else "warm")
        if "ssd" in args.only:
            plan.append("ssd")
        if "registry" in args.only and rep <= (args.registry_reps or args.reps):
            plan.append("registry")
        for case in plan:
            log(f"rep {rep}: {case}")
            try:
                warm = warm_n if case in ("dram", "warm") else 0
                samples.extend(cold_case(ctx, case, rep, warm))
            except Exception as exc:
                failures.append(f"{case} rep {rep}: {exc!r}")
                log(f"{case} rep {rep} failed: {exc!r}")
            _check_alive(ctx.cluster)
        if "baseline" in args.only:
            for cold in (True, False):
                log(f"rep {rep}: baseline ({'cold' if cold else 'warm'} page cache)")
                try:
                    samples.append(
                        baseline_sample(
                            ctx.model, args.prompt, rep, cold=cold, threads=args.torch_threads
                        )
                    )
                    log(f"  TTFT {samples[-1].ttft_s:.3f}s")
                except Exception as exc:
                    failures.append(f"baseline rep {rep}: {exc!r}")
    return overhead


def _check_alive(cluster: UpCluster) -> None:
    if cluster.proc is not None and cluster.proc.poll() is not None:
        raise RuntimeError(f"sllm up exited:\n{cluster.log_tail()}")


def _plot(args: argparse.Namespace, samples: list[Sample], when: dt.datetime) -> None:
    if not plotting.available():
        log(plotting.MISSING)
        return
    from benchmarks.serving.plot import plot

    path = args.plot or plotting.RESULTS / f"serving-{args.size}.png"
    title = (
        f"Time to first token, {args.size} demo model, {os.cpu_count()} CPUs, "
        f"{when:%Y-%m-%d %H:%M}\nsllm by tier vs a fresh from_pretrained process"
    )
    log(f"plot: {plot(samples, path, title)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    when = dt.datetime.now()
    root = args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    model = prepare_model(root, args.size)
    tiny = model if args.size == "tiny" else prepare_model(root, "tiny")
    state = root / "run"
    shutil.rmtree(state, ignore_errors=True)
    sllm_gb = sum(f.stat().st_size for f in model.sllm.iterdir()) / 1e9
    env = {
        "SLLM_DRAM_CAPACITY_GB": str(max(8, math.ceil(3 * sllm_gb) + 1)),
        "SLLM_START_TIMEOUT": "900",
        "SLLM_LOAD_TIMEOUT": "900",
        "SLLM_STREAM_IDLE_TIMEOUT": "600",
        "SLLM_TORCH_THREADS": str(args.torch_threads),
        # The registry case deploys the Hugging Face directory itself: storage (and the
        # router's check of the URI) must allow fetching from the benchmark's models folder.
        "SLLM_REGISTRY_ALLOW": str(root / "models"),
        # No copy on deploy (the scheduler's default prefetches into one node's DRAM tier): the
        # "nodes" here share one disk and two cores, so a prefetch of the registry case ran a
        # second conversion of the same directory beside the one the request waited for,
        # doubling its time (measured 2026-12-05). Each case stages what it measures itself.
        "SLLM_PREFETCH_REPLICAS": str(args.prefetch_replicas),
    }
    if args.torch_threads > 0:
        import torch

        torch.set_num_threads(args.torch_threads)
    out = root / "results"
    out.mkdir(exist_ok=True)
    stem = out / f"serving-{args.size}-{when:%Y%m%d-%H%M%S}"
    log_path = stem.with_name(stem.name + "-up.log")
    cluster = UpCluster(state, nodes=args.nodes, model=tiny.sllm, log_path=log_path, env=env)
    samples: list[Sample] = []
    failures: list[str] = []
    overhead: Overhead | None = None
    busy0, total0 = cpu_busy()
    own0 = own_cpu()
    t0 = time.monotonic()
    try:
        cluster.start()
        bus = BusClient(cluster.nats_url, cluster.root)
        api = Api(cluster.base_url, timeout=900.0)
        try:
            ctx = Ctx(cluster, api, bus, model, args.prompt, args.max_tokens, _chosen(args))
            overhead = _run_cases(args, ctx, tiny, samples, failures)
        finally:
            api.close()
            bus.close()
    except Exception as exc:
        failures.append(f"run aborted: {exc!r}")
        log(f"run aborted: {exc!r}")
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(state, ignore_errors=True)
    busy1, total1 = cpu_busy()
    total = max(total1 - total0, 1e-9)
    others = max(busy1 - busy0 - (own_cpu() - own0), 0.0)
    notes = [
        f"the machine's CPUs were {100 * (busy1 - busy0) / total:.0f}% busy during the run, "
        f"{100 * others / total:.0f}% of their time used by other processes than this benchmark "
        f"and its cluster (a shared machine); the run took {time.monotonic() - t0:.0f}s",
        "services were warmed up first (the tiny model fetched from its Hugging Face directory "
        "and loaded once on every node), as long-running ones would be; the SSD→DRAM "
        "promotion reads with O_DIRECT (page cache bypassed)",
    ]
    run = Run(_header(args, model, when), samples, overhead, failures, notes)
    text = markdown(run)
    print(text)
    stem.with_suffix(".md").write_text(text + "\n")
    payload = {
        "args": {
            **vars(args),
            "only": sorted(args.only),
            "dir": str(args.dir),
            "plot": str(args.plot or ""),
        },
        "samples": [dataclasses.asdict(s) for s in samples],
        "overhead": dataclasses.asdict(overhead) if overhead else None,
        "failures": failures,
        "notes": notes,
        "cluster_log": str(cluster.log_path),
    }
    stem.with_suffix(".json").write_text(json.dumps(jsonable(payload), indent=1) + "\n")
    log(f"saved {stem}.md and .json")
    _plot(args, samples, when)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
