"""Router + bus overhead of a warm request: HTTP through the system against the same work done
in this process (tokenize, prefill with a fresh KV cache, pick one token greedily, decode)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .client import LeanClient
from .cluster import BusClient
from .common import log
from .samples import Overhead


def in_process(path: Path, prompt: str) -> Callable[[], str]:
    """What a worker does for a one-token request, as one call in this process."""
    import torch
    from transformers import AutoTokenizer

    from libs.loader import load_model

    model = load_model(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))

    def step() -> str:
        ids = tokenizer.encode(prompt, add_special_tokens=True)
        with torch.inference_mode():
            out = model(
                input_ids=torch.tensor([ids]),
                use_cache=True,  # a fresh KV cache, as a worker's prefill has
                logits_to_keep=1,
            )
            token = int(out.logits[0, -1].argmax())
        return str(tokenizer.decode([token], skip_special_tokens=True))

    return step


def measure_overhead(
    api: LeanClient,
    bus: BusClient,
    model: str,
    path: Path,
    prompt: str,
    n: int,
    warmup: int = 20,
    cpu_seconds: Callable[[], dict[str, float]] = dict,
) -> Overhead:
    """``n`` iterations of one HTTP request and one in-process step, back to back (the order
    alternates), after ``warmup`` untimed iterations; the instance of ``model`` must be ready."""
    import torch

    step = in_process(path, prompt)
    for _ in range(warmup):
        api.complete(model, prompt)
        step()
    http_s: list[float] = []
    inproc_s: list[float] = []
    ids: list[str] = []
    same = True
    cpu0 = cpu_seconds()
    for i in range(n):
        local = remote = ""
        for which in ("http", "local") if i % 2 == 0 else ("local", "http"):
            if which == "http":
                seconds, remote, rid = api.complete(model, prompt)
                http_s.append(seconds)
                ids.append(rid)
            else:
                t0 = time.perf_counter()
                local = step()
                inproc_s.append(time.perf_counter() - t0)
        same = same and local == remote
    cpu1 = cpu_seconds()
    # The cluster's CPU per request, by process (the in-process steps run in this process).
    cpu_ms = {k: round((cpu1[k] - cpu0.get(k, 0.0)) / max(n, 1) * 1e3, 3) for k in cpu1}
    # The router publishes request.completed as it finishes: let the last one arrive.
    last = ids[-1] if ids else ""
    bus.wait_for(
        lambda e: e.get("kind") == "request.completed" and e.get("request_id") == last, 5.0
    )
    done = {
        e["request_id"]: e
        for e in bus.snapshot(lambda e: e.get("kind") == "request.completed")
        if e.get("model") == model
    }
    matched = [(h, done[r]) for h, r in zip(http_s, ids, strict=True) if r in done]
    log(f"  overhead: {n} iterations, {len(matched)} matched request.completed events")
    return Overhead(
        n=n,
        http_s=http_s,
        inproc_s=inproc_s,
        router_total_s=[e["total_s"] for _, e in matched],
        worker_prefill_s=[e["prefill_s"] for _, e in matched],
        minus_prefill_s=[h - e["prefill_s"] for h, e in matched],
        same_token=same,
        extra={"torch_threads_in_process": torch.get_num_threads(), "cpu_ms_per_request": cpu_ms},
    )
