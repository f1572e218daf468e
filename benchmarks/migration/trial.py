"""One migration trial: a streamed generation with a long prompt, moved mid-stream to the other
worker while the client records when every token arrives."""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks.serving.cluster import BusClient


@dataclass
class Stream:
    """The client's view of one streamed generation: arrival time of every SSE chunk."""

    arrivals: list[float] = field(default_factory=list)  # time.time() of each chunk with text
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)


def stream_in_thread(
    base_url: str, model: str, prompt_ids: list[int], max_tokens: int, timeout: float
) -> tuple[Stream, threading.Thread]:
    """Start a greedy streamed completion on a thread of its own; returns at once."""
    out = Stream()

    def run() -> None:
        body = {
            "model": model,
            "prompt": prompt_ids,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
        }
        try:
            with (
                httpx.Client(base_url=base_url, timeout=timeout) as http,
                http.stream("POST", "/v1/completions", json=body) as resp,
            ):
                if resp.status_code != 200:
                    resp.read()
                    out.error = f"HTTP {resp.status_code}: {resp.text[:300]}"
                    return
                for line in resp.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[len("data: ") :])
                    if "error" in chunk:
                        out.error = str(chunk["error"])[:300]
                        return
                    if chunk.get("choices"):
                        out.arrivals.append(time.time())
        except (httpx.HTTPError, ValueError) as exc:
            out.error = repr(exc)[:300]
        finally:
            out.done.set()

    thread = threading.Thread(target=run, name="bench-stream", daemon=True)
    thread.start()
    return out, thread


@dataclass(frozen=True)
class Trial:
    context_tokens: int
    outcome: str
    rounds: int
    tokens_recomputed: int
    migrate_s: float  # from the migrate request to the source being free of the generation
    load_s: float  # of which: getting the destination instance ready
    pause_s: float  # the extra stall in the client's token stream at the hand-over
    pause_event_s: float | None  # the destination's own measure (migration.committed)
    median_gap_s: float  # the stream's usual time between tokens


def measure(
    bus: BusClient,
    base_url: str,
    model: str,
    prompt_ids: list[int],
    *,
    source_instance: str,
    destination_worker: str,
    migrate_after_tokens: int,
    max_tokens: int,
    timeout: float,
) -> Trial:
    """Stream, migrate after ``migrate_after_tokens`` tokens, and time the hand-over."""
    from libs.protocol.endpoints import SCHED_MIGRATE
    from libs.protocol.messages import MigrateInstanceRequest

    stream, thread = stream_in_thread(base_url, model, prompt_ids, max_tokens, timeout)
    deadline = time.monotonic() + timeout
    while len(stream.arrivals) < migrate_after_tokens:
        if stream.done.is_set() or time.monotonic() > deadline:
            raise RuntimeError(f"the stream ended before the migration: {stream.error}")
        time.sleep(0.005)
    t_call = time.time()
    reply: Any = bus.request(
        SCHED_MIGRATE,
        MigrateInstanceRequest(
            instance_id=source_instance,
            destination_worker_id=destination_worker,
            free_source=True,
        ),
        timeout=timeout,
    )
    t_reply = time.time()
    thread.join(timeout)
    if stream.error:
        raise RuntimeError(f"the stream failed: {stream.error}")
    (gen,) = reply.generations
    committed = bus.wait_for(
        lambda e: (
            e.get("kind") == "migration.committed" and e.get("migration_id") == gen.migration_id
        ),
        5.0,
    )
    gaps = [b - a for a, b in zip(stream.arrivals, stream.arrivals[1:], strict=False)]
    after = [g for a, g in zip(stream.arrivals[1:], gaps, strict=True) if a >= t_call]
    usual = statistics.median(gaps) if gaps else 0.0
    pause = max(after, default=0.0) - usual
    return Trial(
        context_tokens=len(prompt_ids),
        outcome=gen.outcome,
        rounds=gen.rounds,
        tokens_recomputed=gen.tokens,
        migrate_s=t_reply - t_call,
        load_s=float(reply.load_s),
        pause_s=max(pause, 0.0),
        pause_event_s=(committed or {}).get("pause_s"),
        median_gap_s=usual,
    )


def bus_bandwidth(bus: BusClient, megabytes: int = 256, chunk: int = 1 << 20) -> float:
    """Bytes/s one NATS connection moves to another on this set-up (what a worker-to-worker
    KV-cache transfer over the same bus could reach)."""
    return float(bus.throughput(megabytes * (1 << 20), chunk))
