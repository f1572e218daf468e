"""The adapter benchmark's measured cases through the running system: TTFT of an adapter
resident, from the DRAM tier, from the SSD tier, and of the merged model's cold start."""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.serving.client import Api, RequestFailed, Streamed
from benchmarks.serving.cluster import BusClient, UpCluster
from benchmarks.serving.common import log

from .samples import TtftCase, TtftSample

NODE = "node-0"
PREPARE_TIMEOUT_S = 600.0
RESIDENT_LINE = re.compile(
    r"adapter (?P<name>\S+) resident in (?P<ms>[\d.]+) ms "
    r"\((?P<tier>\w+) copy from (?P<source>\w+), (?P<bytes>\d+) bytes\)"
)


@dataclass
class Bench:
    """The running system and what the cases deploy on it."""

    cluster: UpCluster
    api: Api
    bus: BusClient
    base: str  # the base deployment
    adapters: list[str]  # the 8 that share the worker (and flush the target out)
    target: str  # the adapter whose TTFT is measured
    merged: Path  # the target merged into the base (Hugging Face directory)
    prompt: str
    max_tokens: int
    log_pos: int = 0

    def get(self, path: str) -> Any:
        r = self.api.http.get(path, timeout=60)
        if r.status_code != 200:
            raise RequestFailed(f"GET {path}: HTTP {r.status_code}: {r.text}")
        return r.json()

    def resident(self) -> list[str]:
        """The base instance's resident adapters, least recently used first."""
        instances = self.get(f"/v1/deployments/{self.base}")["instances"]
        ready = [i for i in instances if i["status"] == "ready"]
        if len(ready) != 1:
            raise RuntimeError(f"the base has {len(ready)} ready instances, want 1")
        return list(ready[0]["adapters"])

    def base_worker(self) -> str:
        inst = self.get(f"/v1/deployments/{self.base}")["instances"]
        return str(inst[0]["worker_id"]) if inst else ""

    def stream(self, model: str) -> Streamed:
        return self.api.stream(model, self.prompt, self.max_tokens)

    def new_log_lines(self) -> list[str]:
        """Lines `sllm up` (its services) wrote since the last call."""
        try:
            with open(self.cluster.log_path, "rb") as f:
                f.seek(self.log_pos)
                data = f.read()
        except OSError:
            return []
        self.log_pos += len(data)
        return data.decode(errors="replace").splitlines()


def resident_lines(lines: list[str], name: str) -> list[dict[str, Any]]:
    """The worker's ``adapter NAME resident in ...`` lines among ``lines``, parsed."""
    out = []
    for line in lines:
        m = RESIDENT_LINE.search(line)
        if m and m["name"] == name:
            out.append(
                {
                    "ms": float(m["ms"]),
                    "tier": m["tier"],
                    "source": m["source"],
                    "bytes": int(m["bytes"]),
                }
            )
    return out


def flush(b: Bench) -> None:
    """Request each of the other adapters once, so that the target is the least recently used
    and goes (the worker keeps 8)."""
    for name in b.adapters:
        b.stream(name)
    if b.target in b.resident():
        raise RuntimeError(f"{b.target} is still resident after 8 other adapters: {b.resident()}")


def _adapter_sample(b: Bench, case: TtftCase, rnd: int) -> TtftSample:
    b.new_log_lines()
    res = b.stream(b.target)
    time.sleep(0.2)  # the worker logs before it answers; give the log pipe a moment
    lines = resident_lines(b.new_log_lines(), b.target)
    worker = lines[-1] if lines else {}
    if case == "resident" and lines:
        raise RuntimeError(f"{b.target} was not resident: {lines}")
    if case != "resident" and worker.get("source") not in (None, case):
        log(f"  warning: {case} case, but the worker fetched from {worker.get('source')}")
    sample = TtftSample(case, rnd, res.ttft_s, res.total_s, worker)
    log(f"  round {rnd} {case}: TTFT {res.ttft_s * 1e3:.1f} ms; worker {worker or '-'}")
    return sample


def case_resident(b: Bench, rnd: int) -> TtftSample:
    """(a): the target was requested just before (untimed), so it is resident."""
    if b.target not in b.resident():
        b.stream(b.target)
    return _adapter_sample(b, "resident", rnd)


def case_dram(b: Bench, rnd: int) -> TtftSample:
    """(b) DRAM: flushed out of the worker; its copy stays in the node's DRAM tier."""
    flush(b)
    return _adapter_sample(b, "dram", rnd)


def case_ssd(b: Bench, rnd: int) -> TtftSample:
    """(b) SSD: flushed out of the worker and its DRAM copy evicted: it comes from the SSD."""
    from libs.protocol.endpoints import STORAGE_EVICT
    from libs.protocol.messages import EvictRequest

    flush(b)
    b.bus.request(STORAGE_EVICT, EvictRequest(model=b.target, tier="dram"), 60, node_id=NODE)
    return _adapter_sample(b, "ssd", rnd)


def _wait_prepared(b: Bench, name: str) -> float:
    """Wait for the deploy-time copy (the deployment's status leaves "preparing")."""
    t0 = time.monotonic()
    while True:
        dep = b.get(f"/v1/deployments/{name}")
        if dep["status"] == "ready":
            return time.monotonic() - t0
        if dep["status"] == "failed" or time.monotonic() - t0 > PREPARE_TIMEOUT_S:
            raise RuntimeError(f"{name} was not prepared: {dep['status']} {dep.get('error')}")
        time.sleep(0.2)


def _in_dram(b: Bench, name: str) -> bool:
    for node in b.get("/v1/cluster")["nodes"]:
        for tier in node["tiers"]:
            if tier["tier"] == "dram" and any(m["model"] == name for m in tier["models"]):
                return True
    return False


def case_cold(b: Bench, rnd: int, timed: bool = True) -> TtftSample | None:
    """(c): a fresh deployment of the merged model, prepared (its copy in the DRAM tier), then
    its first request: a cold start on the worker the base does not hold. Deleted after, its
    copies evicted, so that every round deploys anew."""
    name = f"merged-r{rnd}-{os.urandom(2).hex()}"
    b.api.deploy(name, b.merged.as_uri())
    try:
        prep = _wait_prepared(b, name)
        in_dram = _in_dram(b, name)
        res = b.stream(name)
        inst = b.get(f"/v1/deployments/{name}")["instances"]
        first = inst[0] if inst else {}
        worker = {
            "prepare_s": prep,
            "copy_in_dram": in_dram,
            "worker_id": first.get("worker_id"),
            "source_tier": first.get("source_tier"),
            "load_s": first.get("load_s"),
            "base_worker": b.base_worker(),
        }
        log(f"  round {rnd} cold: TTFT {res.ttft_s * 1e3:.1f} ms; {worker}")
        if worker["worker_id"] == worker["base_worker"]:
            log("  warning: the merged model loaded on the base's worker")
        return TtftSample("cold", rnd, res.ttft_s, res.total_s, worker) if timed else None
    finally:
        _delete(b, name)


def _delete(b: Bench, name: str) -> None:
    try:
        b.api.delete(name)
    finally:
        with contextlib.suppress(Exception):
            b.bus.evict(name, NODE)
