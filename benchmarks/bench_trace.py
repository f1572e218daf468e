# ruff: noqa: RUF001
"""Trace benchmark: a bursty many-model workload on the local multi-node set-up, startup-time
placement against a locality-blind round-robin baseline, measured in the same run.

``python -m benchmarks.bench_trace [--nodes 4] [--models 8] [--duration 120] [--rate 1.0]
[--cv 4] [--keep-alive 5]``

Writes ``--models`` demo models (``medium``: 90 M params, 0.36 GB each; cached under
``--dir``), converts them to sllm checkpoints (the registry), generates one trace (per-model
gamma arrivals, Zipf popularity), and replays it open-loop against a fresh ``sllm up`` per
placement policy. Prints ONE Markdown report (mean and p99 TTFT, cold starts, DRAM hit rate)
and saves it with every request's outcome as JSON under ``<dir>/results/``; the TTFT CDF per
policy goes to ``--plot``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from benchmarks import plotting
from benchmarks.serving.common import REPO_ROOT, log, save_results
from benchmarks.serving.models import prepare_model
from benchmarks.trace.report import summarise, table
from benchmarks.trace.run import PolicyRun, Setup, pool, run_policy
from benchmarks.trace.workload import TraceSpec, burstiness, make_trace

DEFAULT_DIR = REPO_ROOT / ".bench" / "trace"
POLICIES = ("startup_time", "round_robin")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_trace", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=4, help="simulated nodes (1 CPU worker each)")
    p.add_argument("--models", type=int, default=8, help="deployed models")
    p.add_argument("--size", default="medium", help="demo model size of every model")
    p.add_argument("--duration", type=float, default=120.0, help="trace length in seconds")
    p.add_argument("--rate", type=float, default=1.0, help="requests per second, all models")
    p.add_argument("--cv", type=float, default=4.0, help="burstiness: CV of inter-arrivals")
    p.add_argument("--zipf", type=float, default=1.0, help="popularity exponent")
    p.add_argument("--keep-alive", type=float, default=5.0, help="keep_alive_s of every model")
    p.add_argument(
        "--dram-models", type=float, default=2.0, help="DRAM tier capacity per node, in models"
    )
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--reps", type=int, default=2, help="replays per policy (alternating), pooled in the table"
    )
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="cache and results directory")
    p.add_argument(
        "--plot", type=Path, default=plotting.RESULTS / "trace.png", help="the figure (PNG)"
    )
    args = p.parse_args(argv)
    args.policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    if args.nodes < 1 or args.models < 1 or not args.policies or args.reps < 1:
        p.error("need at least one node, one model, one policy and one rep")
    return args


def _models(root: Path, size: str, n: int) -> dict[str, Path]:
    """``n`` demo models of ``size`` with different weights, as sllm checkpoints."""
    from libs.demo import write_demo_model
    from libs.loader import convert_hf

    out = {}
    for i in range(n):
        base = root / "models" / f"{size}-{i}"
        t0 = time.monotonic()
        hf = write_demo_model(base / "hf", size=size, seed=i)
        sllm = base / "sllm"
        stamp = base / "converted-from.json"
        marker = (hf / "sllm-demo.json").read_text()
        if (
            not (sllm / "sllm-index.json").is_file()
            or not stamp.is_file()
            or stamp.read_text() != marker
        ):
            convert_hf(hf, sllm, overwrite=True)
            stamp.write_text(marker)
        if time.monotonic() - t0 > 1.0:
            log(f"model {i}: written and converted in {time.monotonic() - t0:.1f}s")
        out[f"m{i}"] = sllm.resolve()
    return out


def _kept(event: dict[str, object]) -> bool:
    """Events worth keeping with the results: decisions and instance life, not every request."""
    kind = str(event.get("kind", ""))
    return kind.split(".")[0] in ("scheduler", "instance", "storage") and kind != "storage.progress"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    when = dt.datetime.now()
    root = args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    models = _models(root, args.size, args.models)
    tiny = prepare_model(root, "tiny")
    model_gb = sum(f.stat().st_size for f in next(iter(models.values())).iterdir()) / 1e9
    setup = Setup(
        nodes=args.nodes,
        models=models,
        warmup_model=tiny.sllm,
        keep_alive_s=args.keep_alive,
        dram_capacity_gb=round(args.dram_models * model_gb * 1.05, 3),
        max_tokens=args.max_tokens,
        prompt="Once upon a time",
        request_timeout_s=600.0,
    )
    spec = TraceSpec(
        models=tuple(models),
        duration_s=args.duration,
        total_rate=args.rate,
        cv=args.cv,
        zipf_s=args.zipf,
        seed=args.seed,
    )
    trace = make_trace(spec)
    per_model = {m: [a.at_s for a in trace if a.model == m] for m in models}
    log(
        f"trace: {len(trace)} requests over {args.duration:.0f}s; per model "
        + ", ".join(f"{m}={len(t)}" for m, t in per_model.items())
    )
    env = {
        "SLLM_TORCH_THREADS": "1",
        "SLLM_START_TIMEOUT": "600",
        "SLLM_QUEUE_SIZE": "4096",
        "SLLM_STREAM_IDLE_TIMEOUT": "600",
        # `sllm up` lets storage fetch only its own models folder and the model it serves;
        # the registry here is this benchmark's folder of checkpoints (and the warm-up model).
        "SLLM_REGISTRY_ALLOW": str(root),
    }
    runs: list[PolicyRun] = []
    for rep in range(1, args.reps + 1):
        for policy in args.policies:  # alternating, so that background load hits both alike
            log(f"rep {rep}/{args.reps}: {policy}")
            state = root / "run" / policy
            shutil.rmtree(state, ignore_errors=True)
            runs.append(run_policy(policy, trace, setup, state / "state", env))
            shutil.rmtree(state, ignore_errors=True)
    pooled = [pool([r for r in runs if r.policy == policy]) for policy in args.policies]
    summaries = [summarise(r) for r in pooled]
    per_rep = {
        policy: [round(summarise(r).mean_ttft_s, 3) for r in runs if r.policy == policy]
        for policy in args.policies
    }
    cvs = [c for c in (burstiness(t) for t in per_model.values()) if c == c]
    lines = [
        f"## Trace benchmark: {args.models} models, bursty arrivals, {args.nodes} nodes",
        "",
        f"Run: {when:%Y-%m-%d %H:%M}, {platform.node()}, {os.cpu_count()} CPUs; "
        f"`sllm up` with {args.nodes} nodes × 1 CPU worker, DRAM tier "
        f"{setup.dram_capacity_gb:.2f} GB per node (≈{args.dram_models:g} models), SSD unbounded.",
        f"Models: {args.models} × demo `{args.size}` ({model_gb:.2f} GB sllm checkpoint each), "
        f"registry = a local directory of sllm checkpoints; keep_alive {args.keep_alive:g}s, "
        f"min 0, max 1 instance each.",
        f"Trace: {len(trace)} requests in {args.duration:.0f}s, total rate {args.rate:g}/s, "
        f"Zipf({args.zipf:g}) popularity, gamma inter-arrivals with CV {args.cv:g} (measured "
        f"median CV {sorted(cvs)[len(cvs) // 2] if cvs else float('nan'):.1f}), seed {args.seed}; "
        f"streamed completions, max_tokens={args.max_tokens}; TTFT measured by the client; "
        f"the same trace replayed against a fresh cluster per policy.",
        "",
    ]
    lines += table(summaries[0], summaries[1] if len(summaries) > 1 else None)
    lines.append(
        f"- {args.reps} replay(s) per policy, pooled; mean TTFT of each replay: "
        + "; ".join(f"{p}: {', '.join(f'{x:.3f}' for x in xs)} s" for p, xs in per_rep.items())
    )
    report = "\n".join(lines) + "\n"
    print(report)
    save_results(
        root,
        f"trace-{when:%Y%m%d-%H%M%S}",
        report,
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "summaries": [dataclasses.asdict(s) for s in summaries],
            "runs": [
                {
                    "policy": r.policy,
                    "outcomes": [dataclasses.asdict(o) for o in r.outcomes],
                    "events": [e for e in r.events if _kept(e)],
                }
                for r in runs
            ],
        },
    )
    if plotting.available():
        from benchmarks.trace.plot import plot

        title = (
            f"{len(trace)} requests to {args.models} models in {args.duration:.0f}s (CV "
            f"{args.cv:g}), {args.nodes} CPU workers: {when:%Y-%m-%d %H:%M}, {os.cpu_count()} "
            f"CPUs, {args.reps} replay(s) pooled"
        )
        log(f"plot: {plot(pooled, args.plot, title)}")
    else:
        log(plotting.MISSING)
    return 0 if all(s.failed == 0 for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
