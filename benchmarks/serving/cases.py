"""The time-to-first-token cases through the running system: warm, and cold from each tier."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Literal

from benchmarks.loader.common import drop_caches

from .client import Api, Streamed
from .cluster import BusClient, Event, UpCluster
from .common import log
from .models import ModelFiles
from .samples import Sample

Case = Literal["warm", "dram", "ssd", "registry"]
STAGE_TIMEOUT_S = 900.0
EVENT_WAIT_S = 30.0


@dataclass
class Ctx:
    """What every case needs: the cluster, its clients, the model and the request."""

    cluster: UpCluster
    api: Api
    bus: BusClient
    model: ModelFiles
    prompt: str
    max_tokens: int
    chosen: str  # the node whose tiers are staged

    def uri(self, case: str) -> str:
        """Registry: the Hugging Face directory (fetch = conversion); others: sllm's format."""
        return (self.model.hf if case == "registry" else self.model.sllm).as_uri()


def _of(name: str, kind: str) -> Any:
    return lambda e: e.get("kind") == kind and e.get("model") == name


def _breakdown(bus: BusClient, name: str, res: Streamed) -> tuple[dict[str, float], dict[str, Any]]:
    """Phases of a cold start from the events of ``name`` (seconds; ``ts`` are wall clock)."""
    phases: dict[str, float] = {}
    extra: dict[str, Any] = {}
    starting = bus.wait_for(_of(name, "instance.starting"), 1.0)
    ready = bus.wait_for(_of(name, "instance.ready"), 1.0)
    if starting is not None:
        phases["place"] = starting["ts"] - res.sent_at
    for e in bus.snapshot(_of(name, "load.phase")):
        phases[e["phase"]] = e["seconds"]
        if e["phase"] in ("read", "ensure"):
            extra[f"{e['phase']}_bytes"] = e["bytes"]
            extra[f"{e['phase']}_tier"] = e["tier"]
    for e in bus.snapshot(_of(name, "storage.fetched")):
        if e["ts"] >= res.sent_at:  # not the staging before the request
            key = "fetch" if e["source_tier"] == "registry" else "promote"
            phases[key] = phases.get(key, 0.0) + e["seconds"]
    if ready is not None:
        phases["to_ready"] = ready["ts"] - res.sent_at
        phases["after_ready"] = res.ttft_s - phases["to_ready"]
        extra["load_s"] = ready["load_s"]
    return phases, extra


def _completed(bus: BusClient, name: str, res: Streamed) -> Event | None:
    return bus.wait_for(
        lambda e: (
            e.get("kind") == "request.completed"
            and e.get("model") == name
            and e["ts"] >= res.sent_at
        ),
        EVENT_WAIT_S,
    )


def _request_phases(done: Event | None) -> dict[str, float]:
    if done is None:
        return {}
    return {"prefill": done["prefill_s"], "router_total": done["total_s"]}


def cold_case(ctx: Ctx, case: Case, rep: int, warm_n: int) -> list[Sample]:
    """One cold start of a fresh deployment from ``case``'s tier (``warm``: untimed), then
    ``warm_n`` warm requests; the deployment is deleted and its copies evicted afterwards."""
    name = f"{case}-{ctx.model.size}-r{rep}-{os.urandom(2).hex()}"
    uri = ctx.uri(case)
    bus, api = ctx.bus, ctx.api
    api.deploy(name, uri)
    samples: list[Sample] = []
    try:
        if case in ("dram", "ssd", "warm"):
            tier: Literal["dram", "ssd"] = "ssd" if case == "ssd" else "dram"
            staged = bus.ensure(name, uri, tier, ctx.chosen, STAGE_TIMEOUT_S)
            log(
                f"  staged {name} in the {staged.tier} tier of {ctx.chosen} ({staged.seconds:.1f}s)"
            )
        dropped = drop_caches() if case in ("ssd", "registry") else None
        res = api.stream(name, ctx.prompt, ctx.max_tokens)
        placed = bus.wait_for(_of(name, "scheduler.placed"), EVENT_WAIT_S) or {}
        phases, extra = _breakdown(bus, name, res)
        phases |= _request_phases(_completed(bus, name, res))
        phases["headers"] = res.headers_s
        extra |= {
            "estimated_startup_s": placed.get("estimated_startup_s"),
            "candidates": placed.get("candidates"),
            "text": res.text,
            "total_s": res.total_s,
        }
        if case != "warm":
            samples.append(
                Sample(
                    case=case,
                    rep=rep,
                    ttft_s=res.ttft_s,
                    cache_dropped=dropped,
                    node=str(placed.get("node_id", "")),
                    tier=str(placed.get("source_tier", "")),
                    phases=phases,
                    extra=extra,
                )
            )
            log(f"  {case} rep {rep}: TTFT {res.ttft_s:.3f}s on {placed.get('node_id')}")
        for k in range(warm_n):
            w = api.stream(name, ctx.prompt, ctx.max_tokens)
            wp = _request_phases(_completed(bus, name, w)) | {"headers": w.headers_s}
            samples.append(
                Sample(
                    case="warm",
                    rep=(rep - 1) * warm_n + k,
                    ttft_s=w.ttft_s,
                    node=str(placed.get("node_id", "")),
                    tier="loaded",
                    phases=wp,
                    extra={"text": w.text, "total_s": w.total_s},
                )
            )
        return samples
    finally:
        _cleanup(ctx, name)


def _cleanup(ctx: Ctx, name: str) -> None:
    """Delete the deployment (its instance unloads), then evict its copies from every node."""
    try:
        ctx.api.delete(name)
        gone = ctx.bus.wait_for(
            lambda e: (
                e.get("kind") in ("instance.stopped", "instance.failed") and e.get("model") == name
            ),
            60.0,
        )
        if gone is None and ctx.bus.snapshot(_of(name, "instance.starting")):
            log(f"  {name}: no instance.stopped event within 60s")
    finally:
        for node in ctx.cluster.node_ids:
            with contextlib.suppress(Exception):
                ctx.bus.evict(name, node)
