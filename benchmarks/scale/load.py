"""The scale benchmark's client: open-loop streamed completions at a trace's arrival times,
each with its time to first token and what the hollow worker says it simulated."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass

from benchmarks.trace.workload import Arrival

from .http import SsePool
from .sim import SimMark

PROMPT = "Summarise the following paragraph about serverless inference. " * 3


@dataclass(frozen=True)
class Outcome:
    model: str
    max_tokens: int
    sent_at: float  # wall clock
    ttft_s: float | None  # None: failed
    lag_s: float  # how late the client sent it (the client's own saturation)
    simulated_s: float | None = None  # load wait + prefill the hollow worker simulated
    hot: bool = False  # its instance was ready before it was sent
    error: str = ""

    @property
    def overhead_s(self) -> float | None:
        if self.ttft_s is None or self.simulated_s is None:
            return None
        return self.ttft_s - self.simulated_s


async def _one(pool: SsePool, a: Arrival, max_tokens: int, t0: float) -> Outcome:
    await asyncio.sleep(max(0.0, t0 + a.at_s - time.perf_counter()))
    lag = time.perf_counter() - (t0 + a.at_s)
    body = {"model": a.model, "prompt": PROMPT, "max_tokens": max_tokens, "stream": True}
    sent_wall, sent = time.time(), time.perf_counter()
    ttft: float | None = None
    text = err = ""
    try:
        async for data in pool.post_events("/v1/completions", json.dumps(body).encode()):
            # Only events up to the first token are parsed (it carries the mark); the rest
            # are drained, so that the client stays cheap.
            if ttft is not None or data == b"[DONE]":
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                err = str(chunk["error"])[:120]
                continue
            choices = chunk.get("choices") or []
            if choices:
                ttft = time.perf_counter() - sent
                text = choices[0].get("text") or ""
    except Exception as exc:  # one failed request is a result, not the benchmark's end
        return Outcome(a.model, max_tokens, sent_wall, None, lag, error=str(exc)[:120])
    if ttft is None:
        return Outcome(a.model, max_tokens, sent_wall, None, lag, error=err or "no token")
    mark = SimMark.parse(text)
    if mark is None:
        return Outcome(a.model, max_tokens, sent_wall, ttft, lag)
    hot = mark.ready_at <= sent_wall
    return Outcome(a.model, max_tokens, sent_wall, ttft, lag, mark.simulated_s(sent_wall), hot)


async def replay(
    host: str,
    port: int,
    trace: list[Arrival],
    *,
    max_tokens: tuple[int, int],
    seed: int,
    timeout_s: float = 60.0,
) -> list[Outcome]:
    """Every arrival of ``trace`` sent at its time (open loop), ``max_tokens`` drawn
    uniformly from the given range; a request still going ``timeout_s`` after it was due
    fails (a step then ends at most that long after its last arrival)."""
    rng = random.Random(seed)
    pool = SsePool(host, port)
    t0 = time.perf_counter()

    async def bounded(a: Arrival, n: int) -> Outcome:
        try:
            async with asyncio.timeout(a.at_s + timeout_s):
                return await _one(pool, a, n, t0)
        except TimeoutError:
            return Outcome(a.model, n, time.time(), None, 0.0, error="client timeout")

    try:
        return list(await asyncio.gather(*(bounded(a, rng.randint(*max_tokens)) for a in trace)))
    finally:
        await pool.close()
