# ruff: noqa: RUF001
"""LoRA adapter benchmark: TTFT of an adapter resident / from DRAM / from SSD against a cold
start of the merged model, and one worker's tokens/s over eight adapters mixed against the base.

``python -m benchmarks.bench_adapters [--size small] [--rounds 5] [--streams 16]
[--max-tokens 64] [--quick]``

Starts ``sllm up`` (1 node, 2 workers, SLLM_MAX_ADAPTERS=8), runs the cases alternated within
each round, prints ONE Markdown report and saves every sample (JSON) and the figure (PNG)
under benchmarks/results/. See benchmarks/README.md.
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
from collections.abc import Callable
from pathlib import Path

from benchmarks import plotting
from benchmarks.adapters.cases import NODE, Bench, case_cold, case_dram, case_resident, case_ssd
from benchmarks.adapters.report import Run, markdown
from benchmarks.adapters.samples import TPUT_CASES, TputSample, TtftSample
from benchmarks.adapters.throughput import measure
from benchmarks.serving.client import Api, RequestFailed
from benchmarks.serving.cluster import BusClient, UpCluster
from benchmarks.serving.common import REPO_ROOT, cpu_busy, log, own_cpu
from benchmarks.serving.models import ModelFiles, prepare_model
from benchmarks.serving.report import jsonable

DEFAULT_DIR = REPO_ROOT / ".bench" / "adapters"
PROMPT = "Once upon a time"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
N_ADAPTERS = 8  # = SLLM_MAX_ADAPTERS: the mixed batch's adapters, and what flushes the target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench_adapters", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small", help="demo model size of the base")
    p.add_argument("--rounds", type=int, default=5, help="rounds of every case, alternated")
    p.add_argument("--streams", type=int, default=16, help="concurrent streams (throughput)")
    p.add_argument("--requests", type=int, default=4, help="requests per stream (throughput)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens of each throughput request")
    p.add_argument("--ttft-tokens", type=int, default=1, help="max_tokens of TTFT requests")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank of the adapters")
    p.add_argument("--quick", action="store_true", help="2 rounds, 8 streams × 2 requests")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="models and cluster state")
    p.add_argument("--out", type=Path, default=plotting.RESULTS / "adapters", help="JSON/PNG stem")
    p.add_argument("--prompt", default=PROMPT)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.streams, args.requests = 2, 8, 2
    if min(args.rounds, args.streams, args.requests, args.max_tokens, args.ttft_tokens) < 1:
        p.error("--rounds, --streams, --requests and the token counts must be >= 1")
    return args


def _adapters(model: ModelFiles, rank: int) -> tuple[list[Path], Path]:
    """Nine adapters of the base (seeds 0-8) and the last merged into it, written once per
    demo model and rank (a stamp beside them says which)."""
    from libs.demo.adapters import write_merged_model, write_random_lora

    root = model.hf.parent / f"lora-r{rank}"
    stamp = root / "stamp.json"
    want = {"demo": json.loads((model.hf / "sllm-demo.json").read_text()), "targets": TARGETS}
    dirs = [root / f"lora-{i}" for i in range(N_ADAPTERS + 1)]
    merged = root / "merged"
    if stamp.is_file() and json.loads(stamp.read_text()) == jsonable(want):
        return dirs, merged
    t0 = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    for i, d in enumerate(dirs):
        write_random_lora(model.hf, d, r=rank, alpha=2 * rank, targets=TARGETS, seed=i)
    write_merged_model(model.hf, dirs[-1], merged)
    stamp.write_text(json.dumps(jsonable(want)))
    log(f"wrote {len(dirs)} adapters and the merged model in {time.monotonic() - t0:.1f}s")
    return dirs, merged


def _setup(b: Bench, dirs: list[Path]) -> None:
    """The base pinned on one worker (one instance, never idle-stopped, room for every stream),
    the adapters deployed, and every path warmed once, untimed: the storage service's
    conversion, the worker's adapter install, a cold start on the second worker."""
    r = b.api.http.patch(
        f"/v1/deployments/{b.base}",
        json={"min_instances": 1, "keep_alive_s": 3600.0, "target_concurrency": 256},
    )
    if r.status_code != 200:
        raise RequestFailed(f"patch {b.base}: HTTP {r.status_code}: {r.text}")
    for d in dirs:
        body = {"name": d.name, "base": b.base, "adapter_uri": d.as_uri()}
        r = b.api.http.post("/v1/deployments", json=body, timeout=120)
        if r.status_code not in (200, 201):
            raise RequestFailed(f"deploy {d.name}: HTTP {r.status_code}: {r.text}")
    b.stream(b.base)  # starts the base if min_instances has not yet
    log(f"base {b.base} ready on {b.base_worker()}; warming up")
    case_cold(b, 0, timed=False)
    case_resident(b, 0)
    case_dram(b, 0)
    case_ssd(b, 0)


def _bandwidth(b: Bench) -> dict[str, float | None]:
    for node in b.get("/v1/cluster")["nodes"]:
        if node["node_id"] == NODE:
            return {t["tier"]: t.get("bandwidth_bytes_per_s") for t in node["tiers"]}
    return {}


def _all_resident(b: Bench) -> None:
    for name in b.adapters:
        b.stream(name)
    missing = set(b.adapters) - set(b.resident())
    if missing:
        raise RuntimeError(f"not resident before the mixed phase: {sorted(missing)}")


def _rounds(
    args: argparse.Namespace, b: Bench, ttft: list[TtftSample], tput: list[TputSample]
) -> list[str]:
    failures: list[str] = []
    cases: list[tuple[str, Callable[[Bench, int], TtftSample | None]]] = [
        ("resident", case_resident),
        ("dram", case_dram),
        ("ssd", case_ssd),
        ("cold", case_cold),
    ]
    for rnd in range(1, args.rounds + 1):
        for case, fn in cases:
            try:
                sample = fn(b, rnd)
                if sample is not None:
                    ttft.append(sample)
            except Exception as exc:
                failures.append(f"{case} round {rnd}: {exc!r}")
                log(f"{case} round {rnd} failed: {exc!r}")
        # The phases rotate every round, so that none always runs first.
        shift = (rnd - 1) % len(TPUT_CASES)
        for phase in TPUT_CASES[shift:] + TPUT_CASES[:shift]:
            try:
                if phase != "base":
                    _all_resident(b)
                models = {"mixed": b.adapters, "one": b.adapters[:1], "base": [b.base]}[phase]
                tput.append(
                    measure(
                        b.cluster.base_url,
                        phase,
                        rnd,
                        models,
                        streams=args.streams,
                        requests=args.requests,
                        max_tokens=args.max_tokens,
                        prompt=args.prompt,
                    )
                )
            except Exception as exc:
                failures.append(f"throughput {phase} round {rnd}: {exc!r}")
                log(f"throughput {phase} round {rnd} failed: {exc!r}")
        if b.cluster.proc is not None and b.cluster.proc.poll() is not None:
            failures.append(f"sllm up exited:\n{b.cluster.log_tail()}")
            break
    return failures


def _header(
    args: argparse.Namespace, model: ModelFiles, nbytes: int, when: dt.datetime
) -> list[str]:
    from libs.demo import DEMO_SIZES, demo_param_count

    spec = DEMO_SIZES[model.size]
    return [
        f"## LoRA adapters: time to first token and mixed-batch throughput, {model.size} base",
        "",
        f"Base: demo Llama `{model.size}` ({demo_param_count(spec) / 1e6:.1f} M params, "
        f"{spec.dtype}, hidden {spec.hidden_size}, {spec.num_hidden_layers} layers). Adapters: "
        f"peft LoRA, rank {args.rank}, alpha {2 * args.rank}, on {', '.join(TARGETS)}, "
        f"{nbytes:,} bytes each.",
        f"Run: {when:%Y-%m-%d %H:%M}, {platform.node()}, {os.cpu_count()} CPUs, no GPU; "
        f"`sllm up` with 1 node × 2 CPU workers, SLLM_MAX_ADAPTERS={N_ADAPTERS}; the base "
        f"pinned on one worker (min_instances 1), the merged model's cold starts on the other.",
        f"TTFT: streamed `/v1/completions`, prompt {args.prompt!r}, greedy, "
        f"max_tokens={args.ttft_tokens}, client side from sending to the first SSE choice; "
        f"{args.rounds} rounds, the four cases alternated in each (a, b-DRAM, b-SSD, c); one "
        f"untimed warm-up round first. Throughput: {args.streams} concurrent streams × "
        f"{args.requests} back-to-back greedy completions of exactly {args.max_tokens} tokens "
        f"(min_tokens = max_tokens), stream i on adapter i % {N_ADAPTERS} (all resident) or "
        f"on the base, and (diagnostic) every stream on one adapter; the three phases rotate order "
        f"every round.",
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    when = dt.datetime.now()
    root = args.dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    model = prepare_model(root, args.size)
    dirs, merged = _adapters(model, args.rank)
    nbytes = sum(f.stat().st_size for f in dirs[-1].glob("*.safetensors"))
    state = root / "run"
    shutil.rmtree(state, ignore_errors=True)
    env = {
        "SLLM_MAX_ADAPTERS": str(N_ADAPTERS),
        "SLLM_REGISTRY_ALLOW": str(root / "models"),
        "SLLM_DRAM_CAPACITY_GB": "4",
        "SLLM_START_TIMEOUT": "600",
        "SLLM_LOAD_TIMEOUT": "600",
    }
    log_path = root / "up.log"
    cluster = UpCluster(
        state,
        nodes=1,
        model=model.sllm,
        log_path=log_path,
        env=env,
        extra_args=("--workers-per-node", "2"),
    )
    ttft: list[TtftSample] = []
    tput: list[TputSample] = []
    failures: list[str] = []
    bandwidth: dict[str, float | None] = {}
    busy0, total0 = cpu_busy()
    own0 = own_cpu()
    t0 = time.monotonic()
    try:
        cluster.start()
        bus = BusClient(cluster.nats_url, cluster.root)
        api = Api(cluster.base_url, timeout=600.0)
        try:
            names = [d.name for d in dirs]
            b = Bench(
                cluster, api, bus, model.sllm.name, names[:-1], names[-1], merged,
                args.prompt, args.ttft_tokens,
            )  # fmt: skip
            _setup(b, dirs)
            bandwidth = _bandwidth(b)
            failures += _rounds(args, b, ttft, tput)
        finally:
            api.close()
            bus.close()
    except Exception as exc:
        failures.append(f"run aborted: {exc!r}")
        log(f"run aborted: {exc!r}\n{cluster.log_tail()}")
    finally:
        cluster.stop()
        shutil.rmtree(state, ignore_errors=True)
    busy1, total1 = cpu_busy()
    total = max(total1 - total0, 1e-9)
    others = max(busy1 - busy0 - (own_cpu() - own0), 0.0)
    logged = [int(s.worker["bytes"]) for s in ttft if "bytes" in s.worker]
    cold = [s.worker for s in ttft if s.case == "cold"]
    notes = [
        f"the machine's CPUs were {100 * (busy1 - busy0) / total:.0f}% busy, "
        f"{100 * others / total:.0f}% of their time used by other processes than this "
        f"benchmark and its cluster; the run took {time.monotonic() - t0:.0f}s",
        "merged-model cold starts: "
        + "; ".join(
            f"{w.get('worker_id')} (base on {w.get('base_worker')}), from {w.get('source_tier')}"
            f", load {w.get('load_s') or float('nan'):.3f}s" for w in cold
        ),
    ]  # fmt: skip
    run = Run(
        _header(args, model, nbytes, when),
        ttft,
        tput,
        nbytes,
        logged[-1] if logged else None,
        bandwidth,
        failures,
        notes,
    )
    text = markdown(run)
    print(text)
    payload = {
        "report": text,
        "args": {**vars(args), "dir": str(args.dir), "out": str(args.out)},
        "when": when.isoformat(timespec="seconds"),
        "adapter_bytes": nbytes,
        "bandwidth": bandwidth,
        "ttft": [dataclasses.asdict(s) for s in ttft],
        "throughput": [{**dataclasses.asdict(s), "tokens_per_s": s.tokens_per_s} for s in tput],
        "failures": failures,
        "notes": notes,
        "cluster_log": str(log_path),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out_json = args.out.with_suffix(".json")
    out_json.write_text(json.dumps(jsonable(payload), indent=1) + "\n")
    log(f"saved {out_json}")
    if plotting.available():
        from benchmarks.adapters.plot import plot

        title = f"LoRA adapters on a {args.size} base, {os.cpu_count()} CPUs, {when:%Y-%m-%d %H:%M}"
        log(f"plot: {plot(ttft, tput, args.out.with_suffix('.png'), title)}")
    else:
        log(plotting.MISSING)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
