# ruff: noqa: RUF002
"""Throughput benchmark: one sllm worker against `transformers serve --continuous-batching` and
the in-process upper bound, closed-loop streamed requests at several concurrencies.

``python -m benchmarks.bench_throughput [--sizes medium,1b] [--concurrency 1,4,16,32]
[--prompts 64,512] [--max-tokens 64] [--quick]``

Per model: `sllm up` (1 node × 1 worker), `transformers serve --continuous-batching` and an
in-process child (`generate` / `generate_batch` of the same batch) run side by side; each
(prompt length, concurrency) point runs against sllm and the peer back to back, alternating
which goes first, then in process. Prints one Markdown table per model with the ratios and the
issue's targets; saves it with every request (JSON) and a plot (PNG). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.serving.common import REPO_ROOT, cpu_busy, log, own_cpu, save_results
from benchmarks.throughput.inprocess import METHODS
from benchmarks.throughput.models import prepare
from benchmarks.throughput.report import Row, plot, summary, table
from benchmarks.throughput.run import SYSTEMS, ModelRun, Plan, run_model

DEFAULT_DIR = REPO_ROOT / ".bench" / "throughput"
DEFAULT_PLOT = REPO_ROOT / "benchmarks" / "results" / "throughput.png"
# Per point and system. Medium on this 2-core VM (1 torch thread, in process): one request of
# 64 + 64 tokens takes ~2.2 s, so 16 requests make points of ~15-60 s (concurrency 32 with a
# 512-token prompt is longer: 32 x 2 x 512 prompt tokens to prefill).
DEFAULT_REQUESTS = "tiny=8,small=16,medium=16,1b=4"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _mapping(text: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in text.split(",") if kv.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="medium,1b", help="demo model sizes, run one after another")
    p.add_argument("--concurrency", default="1,4,16,32", help="closed-loop clients per point")
    p.add_argument("--prompts", default="64,512", help="prompt lengths in tokens")
    p.add_argument("--max-tokens", type=int, default=64, help="output tokens of every request")
    p.add_argument(
        "--requests",
        default=DEFAULT_REQUESTS,
        help="requests per point and system, by model size (shared out over the clients)",
    )
    p.add_argument("--min-per-client", type=int, default=2, help="requests of each client, min")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="of: sllm,peer,inproc")
    p.add_argument("--inproc-reps", type=int, default=2, help="timed in-process runs per point")
    p.add_argument(
        "--inproc-methods",
        default=",".join(METHODS),
        help="in-process methods tried for the bound (the faster one counts)",
    )
    p.add_argument("--kv-cache-gb", type=float, default=4.0, help="KV cache of every system")
    p.add_argument(
        "--peer-threads", type=int, default=0, help="OMP_NUM_THREADS of the peer (0: its default)"
    )
    p.add_argument(
        "--sllm-env", action="append", default=[], metavar="K=V", help="more env of `sllm up`"
    )
    p.add_argument("--reference", type=Path, help="an earlier run's JSON: the concurrency-1 target")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="cache and results directory")
    p.add_argument("--plot", type=Path, help=f"the PNG (default: {DEFAULT_PLOT}; --quick: --dir)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, 1 and 4 clients")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.concurrency, args.requests = "tiny", "1,4", "tiny=4"
        args.min_per_client, args.inproc_reps = 1, 1
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.concurrency, args.prompts = _ints(args.concurrency), _ints(args.prompts)
    args.requests = {k: int(v) for k, v in _mapping(args.requests).items()}
    args.systems = frozenset(s for s in args.systems.split(",") if s)
    args.inproc_methods = tuple(m for m in args.inproc_methods.split(",") if m)
    args.sllm_env = dict(kv.split("=", 1) for kv in args.sllm_env)
    if args.systems - set(SYSTEMS) or "sllm" not in args.systems:
        p.error(f"--systems: sllm and any of {SYSTEMS}")
    if not args.inproc_methods or set(args.inproc_methods) - set(METHODS):
        p.error(f"--inproc-methods: any of {METHODS}")
    if min(args.concurrency, default=0) < 1 or min(args.prompts, default=0) < 1:
        p.error("--concurrency and --prompts: positive integers")
    return args


def _reference(path: Path | None) -> dict[tuple[str, int, int], float]:
    """sllm's tokens/s per (size, prompt, concurrency) in an earlier run's JSON."""
    if path is None:
        return {}
    data = json.loads(path.read_text())
    return {
        (size, row["prompt"], row["concurrency"]): row["sllm"]["tokens_per_s"]
        for size, m in data["models"].items()
        for row in m["rows"]
        if row.get("sllm")
    }


def _header(args: argparse.Namespace, when: dt.datetime, runs: list[ModelRun]) -> list[str]:
    import psutil

    from libs.demo import DEMO_SIZES, demo_param_count

    models = []
    for run in runs:
        spec = DEMO_SIZES[run.size]
        n = demo_param_count(spec)
        count = f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"
        models.append(f"`{run.size}` ({count} params, {spec.dtype})")
    first = runs[0].info if runs else {}
    methods = " and ".join(f"`{m}`" for m in args.inproc_methods)
    return [
        "## Throughput benchmark: one sllm worker, `transformers serve`, in process",
        "",
        f"Run: {when:%Y-%m-%d %H:%M}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, no GPU; Python "
        f"{platform.python_version()}, torch {metadata.version('torch')}, transformers "
        f"{metadata.version('transformers')}. Models: {', '.join(models)}.",
        f"Workload: closed loop, per point {args.concurrency} clients each sending its requests "
        f"back to back; prompts of {', '.join(map(str, args.prompts))} tokens (distinct windows "
        f"of the demo corpus: sllm gets the ids, the peer the text that tokenizes to them), "
        f"{args.max_tokens} output tokens (sllm: `ignore_eos`; the peer: `generation_config` "
        f"with `eos_token_id` -1), greedy, streamed with usage. Requests per point and system: "
        f"{args.requests}, at least {args.min_per_client} per client.",
        f"sllm: `sllm up --nodes 1 --workers-per-node 1`, env {first.get('sllm_env', {})}, "
        f"worker torch threads {first.get('sllm_torch_threads', '?')}. Peer: `transformers "
        f"{' '.join(map(str, first.get('peer_argv', [])))}`, threads "
        f"{first.get('peer_threads', '?')}. In process: {methods} of the point's first C "
        f"prompts in one call, {first.get('inproc_threads', '?')} torch "
        f"threads (the sllm worker's), {args.inproc_reps} timed runs after a warm-up; the "
        f"faster method is the bound. KV cache: {args.kv_cache_gb:g} GB for each system.",
        "TTFT: to the first chunk with text; ITL: gaps between chunks with text, over the "
        "request's tokens per chunk; tokens/s: output tokens (usage) of the point over its wall "
        "time; overtaken: of the pairs of requests sent more than 50 ms apart, those whose "
        "first tokens came in the other order (a first-come-first-served server has none).",
    ]


def _rows_json(run: ModelRun) -> list[dict[str, Any]]:
    out = []
    for r in run.rows:
        d = dataclasses.asdict(r)
        if r.bound is not None:
            d["bound_best"] = list(r.bound.best)
        out.append(d)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    when = dt.datetime.now()
    root = args.dir.resolve()
    stem = f"throughput-{'-'.join(args.sizes)}-{when:%Y%m%d-%H%M%S}"
    logs = root / "results" / f"{stem}-logs"
    reference = _reference(args.reference)
    busy0, total0 = cpu_busy()
    own0, t0 = own_cpu(), time.monotonic()
    runs: list[ModelRun] = []
    for size in args.sizes:
        plan = Plan(
            prompts=args.prompts,
            concurrency=args.concurrency,
            total_requests=args.requests.get(size, 8),
            min_per_client=args.min_per_client,
            max_tokens=args.max_tokens,
            systems=args.systems,
            inproc_reps=args.inproc_reps,
            inproc_methods=args.inproc_methods,
            kv_cache_gb=args.kv_cache_gb,
            peer_threads=args.peer_threads,
            sllm_env=args.sllm_env,
        )
        model = prepare(root, size)
        state = root / "run"
        shutil.rmtree(state, ignore_errors=True)
        log(f"{size}: {len(plan.points())} points, systems {sorted(args.systems)}")
        run = run_model(plan, model, state, logs / size)
        shutil.rmtree(state, ignore_errors=True)
        for row in run.rows:
            row.reference_tps = reference.get((size, row.prompt, row.concurrency))
        runs.append(run)
    busy1, total1 = cpu_busy()
    total = max(total1 - total0, 1e-9)
    others = max(busy1 - busy0 - (own_cpu() - own0), 0.0)
    lines = _header(args, when, runs)
    for run in runs:
        lines += ["", f"### `{run.size}`", "", *table(run.rows), "", *summary(run.rows)]
        lines += [f"- note: {n}" for n in run.notes]
        lines += [f"- failure: {f}" for f in run.failures]
    lines += [
        "",
        f"- the machine's CPUs were {100 * (busy1 - busy0) / total:.0f}% busy during the run, "
        f"{100 * others / total:.0f}% of their time used by other processes than this benchmark "
        f"and the systems it ran; the run took {time.monotonic() - t0:.0f}s",
        f"- concurrency-1 reference: {args.reference or 'none given (--reference RUN.json)'}",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    payload: dict[str, object] = {
        "args": {k: sorted(v) if isinstance(v, frozenset) else v for k, v in vars(args).items()},
        "models": {
            r.size: {"info": r.info, "rows": _rows_json(r), "notes": r.notes}
            | {"failures": r.failures, "requests": r.records}
            for r in runs
        },
    }
    path = save_results(root, stem, report, json.loads(json.dumps(payload, default=str)))
    png = args.plot or (path.with_suffix(".png") if args.quick else DEFAULT_PLOT)
    rows: dict[str, list[Row]] = {r.size: r.rows for r in runs if r.rows}
    if rows:
        log(f"plot: {plot(rows, png)}")
    return 1 if any(r.failures for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
