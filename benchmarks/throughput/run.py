# ruff: noqa: RUF001
"""One model's run: sllm, the peer and the in-process bound started side by side, then every
(prompt length, concurrency) point against each of them in turn."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.serving.client import Api
from benchmarks.serving.cluster import UpCluster
from benchmarks.serving.common import log
from benchmarks.serving.models import ModelFiles

from .inprocess import InProcess
from .loadgen import Endpoint, accepts, run_point
from .models import cb_memory_fraction
from .peer import TransformersServe
from .prompts import Prompt, corpus_ids, exact_prompts
from .report import Row
from .stats import per_client, summarize

SYSTEMS = ("sllm", "peer", "inproc")


@dataclass(frozen=True)
class Plan:
    prompts: tuple[int, ...]
    concurrency: tuple[int, ...]
    total_requests: int  # per point and system, shared out over the clients
    min_per_client: int
    max_tokens: int
    systems: frozenset[str]
    inproc_reps: int
    inproc_methods: tuple[str, ...]
    kv_cache_gb: float
    peer_threads: int  # 0: its default
    sllm_env: dict[str, str]
    request_timeout: float = 900.0

    def points(self) -> list[tuple[int, int, int]]:
        """(prompt length, concurrency, requests per client) in the order they run."""
        return [
            (p, c, per_client(self.total_requests, c, self.min_per_client))
            for p in self.prompts
            for c in self.concurrency
        ]


@dataclass
class ModelRun:
    size: str
    rows: list[Row] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def _prompt_pools(model: ModelFiles, plan: Plan, warmup: int) -> dict[int, list[Prompt]]:
    """Per prompt length, distinct prompts for the warm-up and then every point in turn."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model.hf)

    def encode(text: str) -> list[int]:
        return list(tok(text)["input_ids"])

    def decode(ids: list[int]) -> str:
        return str(tok.decode(ids))

    ids = corpus_ids(encode)
    pools = {}
    for p in plan.prompts:
        need = warmup + sum(c * k for pp, c, k in plan.points() if pp == p)
        pools[p] = exact_prompts(encode, decode, ids, p, need, seed=p)
    return pools


def _worker_threads(cluster: UpCluster) -> str:
    """SLLM_TORCH_THREADS as `sllm up` gave it to its worker (read from the process)."""
    import psutil

    if cluster.proc is None:
        return "?"
    for proc in psutil.Process(cluster.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "services.worker" in proc.cmdline():
                return proc.environ().get("SLLM_TORCH_THREADS", "torch default")
    return "?"


class Systems(contextlib.ExitStack):
    """The systems of one model's run, stopped in reverse order on exit."""

    def __init__(self, plan: Plan, model: ModelFiles, logs: Path, run: ModelRun) -> None:
        super().__init__()
        self.plan, self.model, self.logs, self.run = plan, model, logs, run
        self.endpoints: dict[str, Endpoint] = {}
        self.inproc: InProcess | None = None

    def start(self, state_dir: Path) -> None:
        from libs.cli.settings import UpSettings
        from libs.cli.up import torch_threads_per_worker

        plan, model, info = self.plan, self.model, self.run.info
        threads = str(torch_threads_per_worker(UpSettings(nodes=1, workers_per_node=1)))
        memory = cb_memory_fraction(plan.kv_cache_gb, model.hf_bytes)
        info["kv_cache_gb"] = plan.kv_cache_gb
        info["transformers_cb_max_memory_percent"] = round(memory, 4)
        if "sllm" in plan.systems:
            env = {
                "SLLM_MAX_BATCH": "64",
                "SLLM_PREFILL_CHUNK": "256",
                "SLLM_KV_CACHE_GB": f"{plan.kv_cache_gb:g}",
                "SLLM_START_TIMEOUT": "900",
                "SLLM_LOAD_TIMEOUT": "900",
                "SLLM_STREAM_IDLE_TIMEOUT": "600",
                **plan.sllm_env,
            }
            cluster = UpCluster(
                state_dir, nodes=1, model=model.sllm, log_path=self.logs / "up.log", env=env
            )
            self.callback(cluster.stop)
            cluster.start()
            api = Api(cluster.base_url, timeout=120.0)
            self.callback(api.close)
            api.deploy(model.sllm.name, model.sllm.as_uri())  # keep_alive 3600 s: stays loaded
            threads = _worker_threads(cluster)
            info["sllm_env"] = env
            info["sllm_torch_threads"] = threads
            log(f"sllm worker: SLLM_TORCH_THREADS={threads} (sllm up's sizing)")
            self.endpoints["sllm"] = Endpoint(
                "sllm", cluster.base_url, model.sllm.name, True, {"ignore_eos": True}
            )
        if "peer" in plan.systems:
            peer = TransformersServe(
                model.hf, self.logs / "peer.log", threads=plan.peer_threads, memory=memory
            )
            self.callback(peer.stop)
            peer.start()
            info["peer_argv"] = peer.argv[1:]
            info["peer_threads"] = plan.peer_threads or "torch default (every core)"
            # `transformers serve` refuses `ignore_eos` (422); its own way to the same end is a
            # request's `generation_config`: with eos_token_id -1 the batching manager has no
            # end-of-sequence token.
            no_eos = {"generation_config": '{"eos_token_id": -1}'}
            self.endpoints["peer"] = Endpoint("peer", peer.base_url, peer.model_name, False, no_eos)
        if "inproc" in plan.systems:
            info["inproc_threads"] = int(threads) if threads.isdigit() else 0
            self.inproc = InProcess(
                model.hf, info["inproc_threads"], memory, self.logs / "inproc.log"
            )
            self.callback(self.inproc.close)
            self.inproc.start()
            info["inproc"] = self.inproc.info

    def probe_and_warm_up(self, pools: dict[int, list[Prompt]]) -> None:
        """The first request of each server (sllm: a cold start), which also finds out whether
        it takes its end-of-sequence override; then one untimed request per prompt length."""
        plan = self.plan
        for name, ep in self.endpoints.items():
            extra = next(iter(ep.extra))
            t0 = time.monotonic()
            ok, detail = accepts(ep, pools[plan.prompts[0]][0], extra, plan.request_timeout)
            self.run.info[f"{name}_{extra}"] = ok
            if not ok:
                note = f"{name} refused `{extra}` ({detail}); its requests go without it"
                self.run.notes.append(note)
                log(note)
            for p in plan.prompts:
                run_point(ep, pools[p][:1], 1, 1, plan.max_tokens, plan.request_timeout)
            log(f"{name}: first request and warm-up in {time.monotonic() - t0:.1f}s")
        if self.inproc is not None:
            warm = [list(pools[plan.prompts[0]][0].ids)] * 2
            self.inproc.bound(warm, 4, 1, plan.inproc_methods)


def _measure(systems: Systems, p: int, c: int, k: int, prompts: list[Prompt], order: int) -> Row:
    plan, run = systems.plan, systems.run
    row = Row(prompt=p, concurrency=c, per_client=k)
    names = [n for n in ("sllm", "peer") if n in systems.endpoints]
    for name in names if order % 2 == 0 else names[::-1]:
        try:
            records, wall = run_point(
                systems.endpoints[name], prompts, c, k, plan.max_tokens, plan.request_timeout
            )
        except Exception as exc:
            run.failures.append(f"{name} prompt {p} × {c}: {exc!r}")
            log(f"{name} prompt {p} × {c} failed: {exc!r}")
            continue
        point = summarize(records, wall, plan.max_tokens)
        setattr(row, name, point)
        run.records[f"{name}/{p}/{c}"] = [dataclasses.asdict(r) for r in records]
        log(
            f"prompt {p} × {c}: {name:4} {point.tokens_per_s:8.1f} tok/s, TTFT p50 "
            f"{point.ttft_p50_s:.3f} p99 {point.ttft_p99_s:.3f} s, ITL p50 "
            f"{point.itl_p50_s * 1e3:.1f} ms ({point.requests} requests, {point.failed} failed, "
            f"{wall:.1f}s)"
        )
    if systems.inproc is not None:
        try:
            batch = [list(x.ids) for x in prompts[:c]]
            row.bound = systems.inproc.bound(
                batch, plan.max_tokens, plan.inproc_reps, plan.inproc_methods
            )
            rates = ", ".join(f"{m} {v:.1f}" for m, v in row.bound.tokens_per_s.items())
            log(f"prompt {p} × {c}: in-process tok/s: {rates} {row.bound.errors or ''}")
        except Exception as exc:
            run.failures.append(f"in-process prompt {p} × {c}: {exc!r}")
            log(f"in-process prompt {p} × {c} failed: {exc!r}")
    return row


def run_model(plan: Plan, model: ModelFiles, state_dir: Path, logs: Path) -> ModelRun:
    """Start the systems, warm them up, measure every point, stop them (also on failure)."""
    run = ModelRun(model.size)
    warmup = 1
    pools = _prompt_pools(model, plan, warmup)
    logs.mkdir(parents=True, exist_ok=True)
    try:
        with Systems(plan, model, logs, run) as systems:
            systems.start(state_dir)
            systems.probe_and_warm_up(pools)
            used = dict.fromkeys(plan.prompts, warmup)
            for i, (p, c, k) in enumerate(plan.points()):
                prompts = pools[p][used[p] : used[p] + c * k]
                used[p] += c * k
                run.rows.append(_measure(systems, p, c, k, prompts, i))
    except Exception as exc:
        run.failures.append(f"{model.size}: run aborted: {exc!r}")
        log(f"{model.size}: run aborted: {exc!r}")
    return run
