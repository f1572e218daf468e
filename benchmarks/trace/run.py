"""One policy's run of the trace: a fresh `sllm up`, the deployments, open-loop requests at the
trace's arrival times, and the cluster's events."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.serving.cluster import BusClient, UpCluster
from benchmarks.serving.common import log

from .workload import Arrival


@dataclass(frozen=True)
class Outcome:
    """One request of the trace as the client saw it."""

    model: str
    at_s: float  # planned arrival, seconds after the trace started
    ttft_s: float | None  # to the first SSE event with a choice; None when it failed
    error: str = ""


@dataclass
class PolicyRun:
    policy: str
    outcomes: list[Outcome] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # during the trace
    wall_s: float = 0.0


@dataclass(frozen=True)
class Setup:
    nodes: int
    models: dict[str, Path]  # deployment name -> sllm checkpoint (the registry)
    warmup_model: Path  # a tiny checkpoint, loaded once per worker before the trace
    keep_alive_s: float
    dram_capacity_gb: float
    max_tokens: int
    prompt: str
    request_timeout_s: float


async def _one(http: httpx.AsyncClient, a: Arrival, setup: Setup, t0: float) -> Outcome:
    await asyncio.sleep(max(0.0, t0 + a.at_s - time.perf_counter()))
    body = {
        "model": a.model,
        "prompt": setup.prompt,
        "max_tokens": setup.max_tokens,
        "temperature": 0.0,
        "stream": True,
    }
    sent = time.perf_counter()
    try:
        async with http.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                return Outcome(a.model, a.at_s, None, f"HTTP {resp.status_code}: {resp.text[:200]}")
            ttft: float | None = None
            async for line in resp.aiter_lines():  # read it all, so the generation ends normally
                if ttft is not None or not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[len("data: ") :])
                if "error" in chunk:
                    return Outcome(a.model, a.at_s, None, str(chunk["error"])[:200])
                if chunk.get("choices"):
                    ttft = time.perf_counter() - sent
            if ttft is not None:
                return Outcome(a.model, a.at_s, ttft)
        return Outcome(a.model, a.at_s, None, "the stream ended without a token")
    except (httpx.HTTPError, ValueError) as exc:
        return Outcome(a.model, a.at_s, None, repr(exc)[:200])


async def _replay(base_url: str, trace: list[Arrival], setup: Setup) -> list[Outcome]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    timeout = httpx.Timeout(setup.request_timeout_s, connect=10.0)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as http:
        t0 = time.perf_counter()
        return list(await asyncio.gather(*(_one(http, a, setup, t0) for a in trace)))


def _deploy(http: httpx.Client, name: str, uri: str, keep_alive_s: float) -> None:
    body = {
        "name": name,
        "checkpoint_uri": uri,
        "keep_alive_s": keep_alive_s,
        "min_instances": 0,
        "max_instances": 1,
    }
    r = http.post("/v1/deployments", json=body, timeout=60)
    if r.status_code not in (200, 201):
        raise RuntimeError(f"deploy {name}: HTTP {r.status_code}: {r.text}")


def _warm_up(cluster: UpCluster, bus: BusClient, http: httpx.Client, setup: Setup) -> None:
    """Load a tiny model once on every worker (imports, first-touch costs of a long-running
    service), then undeploy it: what a cluster that has been up for a while looks like.

    Each warm-up instance stays loaded until all are, so under any placement policy the n-th
    one lands on the n-th still-free worker."""
    names = []
    for node in cluster.node_ids:
        name = f"warmup-{node}"
        uri = setup.warmup_model.as_uri()
        _deploy(http, name, uri, 3600.0)
        bus.ensure(name, uri, "dram", node, 300.0)
        r = http.post(
            "/v1/completions", json={"model": name, "prompt": "hi", "max_tokens": 1}, timeout=300
        )
        if r.status_code != 200:
            raise RuntimeError(f"warm-up of {node}: HTTP {r.status_code}: {r.text}")
        names.append(name)
    for name in names:
        http.delete(f"/v1/deployments/{name}", timeout=120)
        for node in cluster.node_ids:  # wherever it was staged or loaded
            bus.evict(name, node)


def _settle(bus: BusClient, models: int, timeout: float = 300.0) -> None:
    """Wait for the prefetches that deploying started (one `scheduler.prefetch` event per
    deployment, then a DRAM copy each) and for the storage services to go quiet: the replay
    measures a cluster whose deployments were made a while ago, not a deploy storm."""
    deadline = time.monotonic() + timeout
    asked = time.monotonic() + 30.0
    while len(bus.snapshot(_is_prefetch)) < models and time.monotonic() < asked:
        time.sleep(0.1)
    quiet_since, last = time.monotonic(), -1
    while time.monotonic() < deadline:
        n = len(bus.snapshot(lambda e: str(e.get("kind", "")).startswith("storage.")))
        if n != last:
            quiet_since, last = time.monotonic(), n
        elif time.monotonic() - quiet_since >= 3.0:
            return
        time.sleep(0.2)
    log("storage did not settle after deploying; replaying anyway")


def _is_prefetch(event: dict[str, Any]) -> bool:
    return event.get("kind") == "scheduler.prefetch"


def run_policy(
    policy: str, trace: list[Arrival], setup: Setup, state_dir: Path, env: dict[str, str]
) -> PolicyRun:
    """The whole trace under ``policy`` on a fresh cluster (own state: nothing cached)."""
    first = next(iter(setup.models.values()))
    cluster = UpCluster(
        state_dir,
        nodes=setup.nodes,
        model=first,
        log_path=state_dir.parent / f"{policy}-up.log",
        env={
            **env,
            "SLLM_PLACEMENT_POLICY": policy,
            "SLLM_DRAM_CAPACITY_GB": str(setup.dram_capacity_gb),
        },
    )
    run = PolicyRun(policy)
    cluster.start()
    bus = None
    try:
        bus = BusClient(cluster.nats_url, cluster.root)
        with httpx.Client(base_url=cluster.base_url, timeout=60) as http:
            _warm_up(cluster, bus, http, setup)
            for name, path in setup.models.items():
                _deploy(http, name, path.as_uri(), setup.keep_alive_s)
        _settle(bus, len(setup.models))
        log(f"{policy}: replaying {len(trace)} requests over {trace[-1].at_s:.0f}s")
        start = time.time()
        t = time.monotonic()
        run.outcomes = asyncio.run(_replay(cluster.base_url, trace, setup))
        run.wall_s = time.monotonic() - t
        end = time.time()
        run.events = bus.snapshot(lambda e: start <= e.get("_rx", 0.0) <= end + 1.0)
        failed = sum(o.ttft_s is None for o in run.outcomes)
        log(f"{policy}: done in {run.wall_s:.0f}s, {failed} failed requests")
    finally:
        if bus is not None:
            bus.close()
        cluster.stop()
    return run


def pool(runs: list[PolicyRun]) -> PolicyRun:
    """Several replays of one policy as one: outcomes and events together, wall times summed."""
    out = PolicyRun(runs[0].policy)
    for r in runs:
        out.outcomes += r.outcomes
        out.events += r.events
        out.wall_s += r.wall_s
    return out
