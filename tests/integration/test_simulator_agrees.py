"""The simulator and the running system decide alike: one small scenario run by both.

Two nodes of two workers; three models deployed one after another (each prefetched into one
node's DRAM tier on deploy), then one request per model. The running system is the real
scheduler with hollow nodes (`benchmarks/scale`: real storage catalogs and bus protocol,
simulated reads); the simulator (`benchmarks/simulator`) runs the same policies on its own
model of the same hardware. Both must prefetch each model to the same node and start each on
the same worker, from the same tier: the simulator builds the policies' inputs the way the
scheduler does, and a drift between them shows here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from benchmarks.scale.sim import NodeSpec, TokenSpec, checkpoint_uri
from benchmarks.scale.storage import HollowStorage
from benchmarks.scale.worker import HollowWorker
from benchmarks.simulator import Arrival, Scenario, simulate
from benchmarks.simulator.cluster import Hardware, build_cluster
from benchmarks.simulator.llms import BY_LABEL, SimModel
from benchmarks.simulator.scenario import DEFAULT_SCALING
from libs.cluster import ClusterState
from libs.common.embedded import EmbeddedNats, EmbeddedRedis
from libs.common.settings import CommonSettings
from libs.protocol import Bus
from libs.protocol.endpoints import SCHED_DEPLOY, SCHED_PLACE
from libs.protocol.messages import DeploymentSpec, DeployRequest, PlaceRequest
from services.worker.settings import WorkerSettings

from .scheduler_stubs import running_scheduler

pytestmark = pytest.mark.integration

GB = 1_000_000_000
# Fast hardware, so that the real loads take a fraction of a second: the same on both sides.
HARDWARE = Hardware(
    gpus=2,
    dram_bytes=512 * GB,
    ssd_bytes=4000 * GB,
    dram_bw=200.0 * GB,
    ssd_bw=150.0 * GB,
    registry_bw=100.0 * GB,
    fixed_s=0.05,
)
SPEC = NodeSpec(
    registry_gbps=100.0,
    ssd_gbps=150.0,
    dram_gbps=200.0,
    ssd_capacity_gb=4000.0,
    dram_capacity_gb=512.0,
    load_overhead_s=0.05,
)
MODELS = [SimModel(f"m{i:04d}", BY_LABEL[c]) for i, c in enumerate(("3b", "7b", "13b"))]
NODES = 2
GAP_S = 5.0  # between the simulated requests: each load is long done before the next


def _simulated() -> list[tuple[str, str, str, str]]:
    """(model, node, worker, tier) of each cold start in the simulator."""
    scenario = Scenario(
        nodes=NODES,
        hardware=HARDWARE,
        models=MODELS,
        arrivals=[
            Arrival(at_s=GAP_S * (k + 1), model=m.name, prompt_tokens=8, output_tokens=1)
            for k, m in enumerate(MODELS)
        ],
        system="sllm",
        scaling=DEFAULT_SCALING,
        exact=True,
    )
    result = simulate(scenario)
    return [(c.model, c.node_id, c.worker_id, c.source_tier) for c in result.cold_starts]


@pytest.fixture
async def hollow_cluster(
    nats_server: EmbeddedNats, redis_server: EmbeddedRedis, root: str
) -> AsyncIterator[list[str]]:
    """The simulator's nodes and workers, by the simulator's names, as hollow services."""
    env = {"SLLM_NATS_URL": nats_server.url, "SLLM_REDIS_URL": redis_server.url, "SLLM_ROOT": root}
    nodes = build_cluster(NODES, HARDWARE, dram_tier=True, ssd_cache=True)
    services: list[HollowStorage | HollowWorker] = []
    for node in nodes:
        services.append(HollowStorage(CommonSettings.from_env(env), node.node_id, SPEC))
        services += [
            HollowWorker(
                WorkerSettings.from_env(env, instance_id=w.worker_id, node_id=node.node_id),
                SPEC,
                TokenSpec(),
            )
            for w in node.workers
        ]
    for svc in services:
        await svc.start()
    yield [n.node_id for n in nodes]
    for svc in reversed(services):
        await svc.stop("test")


async def _until(pred: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_the_simulator_prefetches_and_places_as_the_scheduler_does(
    nats_server: EmbeddedNats,
    redis_server: EmbeddedRedis,
    root: str,
    bus: Bus,
    state: ClusterState,
    hollow_cluster: list[str],
) -> None:
    simulated = _simulated()
    assert len(simulated) == len(MODELS)

    real: list[tuple[str, str, str, str]] = []
    async with running_scheduler(nats_server.url, redis_server.url, root):
        for m in MODELS:
            uri = checkpoint_uri("/hollow-registry", m.name, m.bytes)
            spec = DeploymentSpec(name=m.name, checkpoint_uri=uri, keep_alive_s=600.0)
            await bus.request(SCHED_DEPLOY, DeployRequest(spec=spec))

            async def prefetched(name: str = m.name) -> bool:
                return bool((await state.holders(name))["dram"])

            # The next deploy sees this one's copy, as the simulator's does.
            await _until(prefetched, f"the prefetch of {m.name}")
        for m in MODELS:
            placed = await bus.request(SCHED_PLACE, PlaceRequest(model=m.name), timeout=10.0)

            async def ready(iid: str = placed.instance_id) -> bool:
                rec = await state.get_instance(iid)
                return rec is not None and rec.status == "ready"

            await _until(ready, f"{m.name} ready")
            rec = await state.get_instance(placed.instance_id)
            assert rec is not None
            real.append((m.name, placed.node_id, placed.worker_id, rec.source_tier or ""))

    assert real == simulated
    # Not a trivial agreement: the models went to their prefetched copies, on both nodes.
    assert {tier for *_, tier in real} == {"dram"}
    assert {node for _, node, _, _ in real} == set(hollow_cluster)
