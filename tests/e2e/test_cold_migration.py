"""The migration policy end to end: `sllm up` (2 nodes x 1 CPU worker) and the REST API.

Model "a" runs a long generation on node-0's worker; node-0 also holds model "m" in its DRAM
tier, node-1 holds only "a" (so "m" there is a registry fetch, made to look slow). A request
for the cold model "m" makes the scheduler weigh waiting for node-0's worker, starting "m" on
node-1, and migrating the running generation to node-1 (where "a" loads from DRAM) to start
"m" on node-0: it migrates, and the client of "a" still gets the identical answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from libs.protocol import Bus
from libs.protocol.endpoints import STORAGE_ENSURE
from libs.protocol.messages import EnsureRequest

from .answers import TIMEOUT_S, Answer, streamed
from .cluster import UpCluster, up_cluster
from .events import Events

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_TOKENS = 300
DELAY_S = 0.02  # per decode step: the long generation takes about 6 s
PATH = "/v1/completions"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    # No start-up bandwidth probe and no prefetch: the test stages every copy itself, and the
    # registry's prior bandwidth is made tiny, so that starting "m" on node-1 looks slow.
    with up_cluster(
        tmp_path_factory.mktemp("cold-migration"),
        nodes=2,
        SLLM_DECODE_DELAY=str(DELAY_S),
        SLLM_BANDWIDTH_PROBE_MB="0",
        SLLM_PREFETCH_REPLICAS="0",
        SLLM_PRIOR_REGISTRY_GBPS="0.00001",
    ) as c:
        yield c


def _body(model: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": "Once upon a time",
        "max_tokens": max_tokens,
        "temperature": 0,
    }


async def _ensure(bus: Bus, cluster: UpCluster, model: str, node: str) -> None:
    await bus.request(
        STORAGE_ENSURE,
        EnsureRequest(model=model, checkpoint_uri=cluster.demo_dir.as_uri(), tier="dram"),
        node_id=node,
        timeout=120,
    )


async def test_a_cold_model_takes_a_busy_worker_by_migrating_its_generation(
    cluster: UpCluster, bus: Bus
) -> None:
    events = await Events().start(bus)
    async with httpx.AsyncClient(timeout=30) as client:
        for name in ("a", "m"):
            r = await client.post(
                cluster.base_url + "/v1/deployments",
                json={"name": name, "checkpoint_uri": cluster.demo_dir.as_uri()},
            )
            assert r.status_code == 201, r.text
    await _ensure(bus, cluster, "a", "node-0")
    # The reference answer, without a migration; it also starts "a" on node-0's worker.
    want = await streamed(cluster, PATH, _body("a", MAX_TOKENS))
    assert want.finish == "length"  # a long answer: no early stop
    placed_a = await events.wait_for(lambda e: e["kind"] == "scheduler.placed")
    assert placed_a["node_id"] == "node-0"
    busy_worker = placed_a["worker_id"]
    await _ensure(bus, cluster, "a", "node-1")
    await _ensure(bus, cluster, "m", "node-0")

    cold: list[asyncio.Task[Answer]] = []

    def on_chunk(n: int) -> None:
        if n == 10:  # "a" is well under way on node-0: now "m" is wanted
            cold.append(asyncio.ensure_future(streamed(cluster, PATH, _body("m", 4))))

    got = await streamed(cluster, PATH, _body("a", MAX_TOKENS), on_chunk=on_chunk)
    m_answer = await asyncio.wait_for(cold[0], TIMEOUT_S)

    assert got == want  # the migrated stream is identical
    assert m_answer.finish in ("length", "stop")
    (decision,) = events.of("scheduler.coldstart", model="m")
    chosen = decision["chosen"]
    assert (chosen["kind"], chosen["worker_id"]) == ("migrate", busy_worker)
    assert {o["kind"] for o in decision["options"]} == {"migrate", "wait", "elsewhere"}
    (moved,) = decision["moved"]
    committed = await events.wait("migration.committed", request_id=moved)
    assert committed[0]["source_worker_id"] == busy_worker
    assert committed[0]["worker_id"] == chosen["destination"]
    placed_m = await events.wait_for(
        lambda e: e["kind"] == "scheduler.placed" and e["model"] == "m"
    )
    assert (placed_m["worker_id"], placed_m["source_tier"]) == (busy_worker, "dram")
    stopped = await events.wait("instance.stopped", worker_id=busy_worker, reason="migrated")
    assert stopped[0]["model"] == "a"
    assert 1 <= m_answer.completion_tokens <= 4  # "m" answered, from its fresh instance
