"""Tokens/s of one worker: concurrent streams of back-to-back greedy completions, over eight
adapters mixed in one batch or over the base alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx

from benchmarks.serving.common import log

from .samples import TputCase, TputSample


def _one_stream(
    http: httpx.Client, model: str, prompt: str, max_tokens: int, requests: int, start: float
) -> tuple[int, int]:
    """``requests`` completions back to back: ``(tokens, errors)``. ``min_tokens`` = max_tokens
    so that every request generates the same number of tokens whatever the model says."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "temperature": 0.0,
    }
    tokens = errors = 0
    while time.perf_counter() < start:  # every stream starts together
        time.sleep(0.001)
    for _ in range(requests):
        r = http.post("/v1/completions", json=body)
        if r.status_code != 200:
            errors += 1
            log(f"  {model}: HTTP {r.status_code}: {r.text[:200]}")
            continue
        tokens += int(r.json()["usage"]["completion_tokens"])
    return tokens, errors


def measure(
    base_url: str,
    case: TputCase,
    rnd: int,
    models: Sequence[str],
    *,
    streams: int,
    requests: int,
    max_tokens: int,
    prompt: str,
) -> TputSample:
    """One phase: stream ``i`` asks for ``models[i % len(models)]``; tokens/s over the phase's
    wall time, from the common start to the last stream's end."""
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    lock = threading.Lock()
    total = [0, 0]
    with (
        httpx.Client(base_url=base_url, timeout=600.0, limits=limits) as http,
        ThreadPoolExecutor(streams) as pool,
    ):
        start = time.perf_counter() + 0.2

        def run(i: int) -> None:
            t, e = _one_stream(http, models[i % len(models)], prompt, max_tokens, requests, start)
            with lock:
                total[0] += t
                total[1] += e

        list(pool.map(run, range(streams)))
        seconds = time.perf_counter() - start
    sample = TputSample(case, rnd, streams, requests, total[0], seconds, total[1])
    log(
        f"  round {rnd} {case}: {sample.tokens} tokens in {seconds:.2f}s = "
        f"{sample.tokens_per_s:.1f} tokens/s ({sample.errors} errors)"
    )
    return sample
