"""The DRAM tier through the running system: placement follows a DRAM copy, LRU eviction in
order (in the events), a copy in use is never evicted, an unloaded instance leaves its copy,
prefetch on deploy, and the scheduler's estimate errors on /metrics.

One cluster (2 nodes x 1 CPU worker) whose DRAM tiers hold two demo models but not three.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.demo import write_demo_model
from libs.protocol import Bus, Keys
from libs.protocol.endpoints import STORAGE_ENSURE, STORAGE_EVICT
from libs.protocol.messages import EnsureReply, EnsureRequest, EvictRequest

from .cluster import UpCluster, up_cluster
from .events import Events

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

Pred = Callable[[dict[str, Any]], bool]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    # A demo checkpoint is ~2.2 MB: 5 MB hold two. No bandwidth probe (the nodes share one
    # disk: what they measured would be noise); one DRAM replica prefetched on deploy.
    with up_cluster(
        tmp_path_factory.mktemp("dram"),
        nodes=2,
        SLLM_DRAM_CAPACITY_GB="0.005",
        SLLM_BANDWIDTH_PROBE_MB="0",
        SLLM_PREFETCH_REPLICAS="1",
    ) as c:
        yield c


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    return {f"m{i}": write_demo_model(base / f"m{i}", seed=i) for i in range(1, 4)}


@pytest.fixture
async def state(cluster: UpCluster) -> AsyncIterator[ClusterState]:
    client: aioredis.Redis = aioredis.Redis.from_url(cluster.redis_url, socket_timeout=10)
    yield ClusterState(client, Keys(cluster.root))
    await client.aclose()


async def _ensure(bus: Bus, node: str, model: str, path: Path, tier: str) -> EnsureReply:
    req = EnsureRequest(model=model, checkpoint_uri=path.as_uri(), tier=tier)  # type: ignore[arg-type]
    reply: EnsureReply = await bus.request(STORAGE_ENSURE, req, node_id=node, timeout=120)
    return reply


async def _clear_dram(bus: Bus, state: ClusterState, node: str) -> None:
    for model in (await state.locality(node)).dram:
        await bus.request(STORAGE_EVICT, EvictRequest(model=model, tier="dram"), node_id=node)


def _deploy(cluster: UpCluster, name: str, model_dir: Path) -> None:
    r = httpx.post(
        cluster.base_url + "/v1/deployments",
        json={"name": name, "checkpoint_uri": model_dir.as_uri()},
        timeout=30,
    )
    assert r.status_code == 201, r.text


def _undeploy(cluster: UpCluster, name: str) -> None:
    r = httpx.delete(cluster.base_url + f"/v1/deployments/{name}", timeout=60)
    assert r.status_code == 200, r.text


async def _complete(cluster: UpCluster, model: str) -> None:
    async with httpx.AsyncClient(timeout=240) as client:
        r = await client.post(
            cluster.base_url + "/v1/completions",
            json={"model": model, "prompt": "Once upon a time", "max_tokens": 4},
        )
    assert r.status_code == 200, r.text


async def test_a_model_in_dram_on_node_b_starts_there_though_node_a_is_idle(
    cluster: UpCluster, bus: Bus, state: ClusterState, models: dict[str, Path]
) -> None:
    events = await Events().start(bus)
    # Staged before the deployment: node-1 already holds one DRAM replica, so the deploy
    # prefetches nothing and node-0 holds nothing of it.
    await _ensure(bus, "node-1", "b", models["m1"], "dram")
    _deploy(cluster, "b", models["m1"])
    assert "b" not in (await state.locality("node-0")).ssd
    workers = {w.worker_id: w for w in await state.workers()}
    assert workers["node-0-w0"].alive
    assert not workers["node-0-w0"].instance_id  # idle

    await _complete(cluster, "b")
    (placed,) = events.of("scheduler.placed", model="b")
    assert (placed["worker_id"], placed["source_tier"]) == ("node-1-w0", "dram")
    assert placed["candidates"]["node-1-w0"] < placed["candidates"]["node-0-w0"]
    (ready,) = await events.wait("instance.ready", model="b")
    assert (ready["node_id"], ready["source_tier"]) == ("node-1", "dram")
    assert events.of("scheduler.prefetch", model="b") == []

    # The load reported, and the scheduler compared its estimate with it.
    (report,) = await events.wait("load.report", model="b")
    assert report["bytes"] > 0
    assert report["seconds"] > 0
    (err,) = await events.wait("scheduler.estimate", model="b")
    assert err["instance_id"] == ready["instance_id"]
    async with httpx.AsyncClient(timeout=30) as client:
        metrics = (await client.get(cluster.base_url + "/metrics")).text
    assert 'sllm_scheduler_estimate_error_ratio{quantile="0.9"}' in metrics
    assert "sllm_scheduler_estimate_samples 1.0" in metrics

    # Unloading the instance leaves its checkpoint in node-1's DRAM tier.
    _undeploy(cluster, "b")
    await events.wait("instance.stopped", model="b")
    assert "b" in (await state.locality("node-1")).dram
    assert events.of("storage.evicted", model="b") == []


async def test_lru_eviction_order_is_visible_in_the_events(
    bus: Bus, state: ClusterState, models: dict[str, Path]
) -> None:
    await _clear_dram(bus, state, "node-0")
    events = await Events().start(bus)
    for model in ("e1", "e2", "e1", "e3", "e2"):
        reply = await _ensure(bus, "node-0", model, models["m" + model[1]], "dram")
        assert reply.tier == "dram"
    evicted = await events.wait("storage.evicted", 2, node_id="node-0")
    assert [(e["model"], e["tier"], e["reason"]) for e in evicted] == [
        ("e2", "dram", "lru"),  # e1 was used again after e2 came in
        ("e1", "dram", "lru"),
    ]
    assert set((await state.locality("node-0")).dram) == {"e2", "e3"}
    assert set((await state.locality("node-0")).ssd) >= {"e1", "e2", "e3"}


async def test_deploy_prefetches_and_a_copy_in_use_is_never_evicted(
    cluster: UpCluster, bus: Bus, state: ClusterState, models: dict[str, Path]
) -> None:
    await _clear_dram(bus, state, "node-0")
    await _clear_dram(bus, state, "node-1")
    events = await Events().start(bus)
    _deploy(cluster, "u", models["m2"])
    (prefetch,) = await events.wait("scheduler.prefetch", model="u")
    (node,) = prefetch["node_ids"]
    await events.wait("storage.fetched", model="u", tier="dram", node_id=node)

    # The first request finds the prefetched DRAM copy.
    await _complete(cluster, "u")
    (ready,) = await events.wait("instance.ready", model="u")
    assert (ready["node_id"], ready["source_tier"]) == (node, "dram")

    # "u" is now the least recently used DRAM copy of its node, but its instance uses it:
    # making room for two more copies evicts around it.
    await _ensure(bus, node, "x1", models["m1"], "dram")
    await _ensure(bus, node, "x3", models["m3"], "dram")
    evicted = await events.wait("storage.evicted", node_id=node, tier="dram")
    assert [e["model"] for e in evicted] == ["x1"]
    assert set((await state.locality(node)).dram) == {"u", "x3"}
    _undeploy(cluster, "u")
