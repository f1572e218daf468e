"""Hollow nodes (benchmarks/scale) against the real scheduler: a placement loads an instance in
about the simulated time, a generation streams max_tokens tokens, an unload frees the worker."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from benchmarks.scale.sim import GB, NodeSpec, SimMark, TokenSpec, checkpoint_uri
from benchmarks.scale.storage import HollowStorage
from benchmarks.scale.worker import HollowWorker
from libs.cluster import ClusterState
from libs.common.embedded import EmbeddedNats, EmbeddedRedis
from libs.common.settings import CommonSettings
from libs.protocol import Bus
from libs.protocol.endpoints import (
    SCHED_DEPLOY,
    SCHED_PLACE,
    WORKER_GENERATE,
    WORKER_MIGRATE,
    WORKER_RUNNING,
    WORKER_UNLOAD,
)
from libs.protocol.errors import ConflictError
from libs.protocol.messages import (
    DeploymentSpec,
    DeployRequest,
    GenerateRequest,
    MigrateRequest,
    PlaceRequest,
    RunningRequest,
    SamplingParams,
    UnloadRequest,
)
from services.worker.settings import WorkerSettings

from .scheduler_stubs import running_scheduler

pytestmark = pytest.mark.integration

# 2 GB: 0.2 s from the registry, 0.1 s read from SSD, 0.05 s overhead.
SPEC = NodeSpec(registry_gbps=10.0, ssd_gbps=20.0, dram_gbps=40.0, load_overhead_s=0.05)
TOKENS = TokenSpec(decode_s_per_token=0.005)
SIZE = 2 * GB


@pytest.fixture
async def hollow_node(
    nats_server: EmbeddedNats, redis_server: EmbeddedRedis, root: str
) -> AsyncIterator[list[HollowWorker]]:
    env = {"SLLM_NATS_URL": nats_server.url, "SLLM_REDIS_URL": redis_server.url, "SLLM_ROOT": root}
    storage = HollowStorage(CommonSettings.from_env(env), "hn-0", SPEC)
    workers = [
        HollowWorker(
            WorkerSettings.from_env(env, instance_id=f"hw-{j}", node_id="hn-0"), SPEC, TOKENS
        )
        for j in range(2)
    ]
    await storage.start()
    for w in workers:
        await w.start()
    yield workers
    for w in workers:
        await w.stop("test")
    await storage.stop("test")


async def _ready(state: ClusterState, instance_id: str, timeout: float = 5.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = await state.get_instance(instance_id)
        if rec is not None and rec.status == "ready":
            return time.monotonic()
        await asyncio.sleep(0.01)
    raise AssertionError(f"instance {instance_id} not ready within {timeout}s")


async def test_hollow_node_serves_a_placement_generation_and_unload(
    nats_server: EmbeddedNats,
    redis_server: EmbeddedRedis,
    root: str,
    bus: Bus,
    state: ClusterState,
    hollow_node: list[HollowWorker],
) -> None:
    env = {"SLLM_PREFETCH_REPLICAS": "0"}  # the first load comes from the registry
    async with running_scheduler(nats_server.url, redis_server.url, root, **env):
        uri = checkpoint_uri("/hollow-registry", "m0", SIZE)
        spec = DeploymentSpec(name="m0", checkpoint_uri=uri, keep_alive_s=60.0)
        await bus.request(SCHED_DEPLOY, DeployRequest(spec=spec))

        t0 = time.monotonic()
        placed = await bus.request(SCHED_PLACE, PlaceRequest(model="m0"), timeout=5.0)
        took = await _ready(state, placed.instance_id) - t0
        simulated = 0.2 + 0.1 + 0.05
        assert simulated <= took < simulated + 1.0
        rec = await state.get_instance(placed.instance_id)
        assert rec is not None
        assert rec.source_tier == "registry"

        wid = placed.worker_id
        req = GenerateRequest(
            request_id="r1", model="m0", prompt="x" * 40, params=SamplingParams(max_tokens=5)
        )
        reader = await bus.stream(WORKER_GENERATE, req, worker_id=wid)
        assert len(reader.ack.prompt_token_ids) == 10
        chunks = [c async for c in reader]
        assert sum(len(c.token_ids) for c in chunks) == 5
        assert chunks[-1].finish_reason == "length"
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 5
        mark = SimMark.parse(chunks[0].text)
        assert mark is not None
        assert mark.load_sim_s == pytest.approx(simulated, abs=0.05)

        running = await bus.request(WORKER_RUNNING, RunningRequest(), worker_id=wid)
        assert running.instance_id == placed.instance_id
        assert running.status == "ready"
        with pytest.raises(ConflictError):  # refused (`HollowRefusal`), as a conflict
            await bus.request(
                WORKER_MIGRATE,
                MigrateRequest(
                    instance_id=placed.instance_id,
                    destination_instance_id="i-x",
                    destination_worker_id="x",
                ),
                worker_id=wid,
            )

        unloaded = await bus.request(
            WORKER_UNLOAD, UnloadRequest(instance_id=placed.instance_id), worker_id=wid
        )
        assert unloaded.freed
        worker = await state.get_worker(wid)
        assert worker is not None
        assert worker.instance_id == ""
        assert await state.get_instance(placed.instance_id) is None


@pytest.mark.slow
def test_bench_scale_quick_runs_and_saves_its_table(tmp_path: Path) -> None:
    """`python -m benchmarks.bench_scale --quick`: ~40 s, 104 hollow workers, 2 rates."""
    from benchmarks import bench_scale

    assert bench_scale.main(["--quick", "--out", str(tmp_path)]) == 0
    (saved,) = tmp_path.glob("scale-104w-*.json")
    steps = json.loads(saved.read_text())["steps"]
    assert [s["rate"] for s in steps] == [10.0, 25.0]
    assert all(s["ok"] >= 0.95 * s["requests"] for s in steps)
