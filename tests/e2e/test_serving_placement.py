"""Placement through the running services, client disconnects, and a worker killed mid-load.

One cluster (3 nodes x 1 CPU worker, one generation per worker at a time) for the module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from libs.demo import write_demo_model
from libs.protocol import Bus
from libs.protocol.endpoints import STORAGE_ENSURE
from libs.protocol.messages import EnsureRequest

from .cluster import UpCluster, up_cluster
from .events import Events

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    # No start-up bandwidth probe: the three nodes share this machine's disk and cores, so what
    # they would measure is noise. Every node then uses the same documented priors and the test
    # checks the decision from locality alone (measured bandwidths are covered by unit tests).
    # No prefetch on deploy either: the test stages every copy itself. Decoding is slowed to
    # >= 10 ms a token, so that a long generation cannot finish (into the socket's buffers)
    # before a slow client on a loaded machine has read its first lines and left.
    with up_cluster(
        tmp_path_factory.mktemp("placement"),
        nodes=3,
        SLLM_MAX_BATCH="1",
        SLLM_MAX_QUEUE="0",
        SLLM_BANDWIDTH_PROBE_MB="0",
        SLLM_PREFETCH_REPLICAS="0",
        SLLM_DECODE_DELAY="0.01",
    ) as c:
        yield c


def _deploy(cluster: UpCluster, name: str, model_dir: Path) -> None:
    r = httpx.post(
        cluster.base_url + "/v1/deployments",
        json={"name": name, "checkpoint_uri": model_dir.as_uri()},
        timeout=30,
    )
    assert r.status_code == 201, r.text


async def _complete(cluster: UpCluster, model: str, max_tokens: int = 4) -> httpx.Response:
    async with httpx.AsyncClient(timeout=240) as client:
        return await client.post(
            cluster.base_url + "/v1/completions",
            json={"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens},
        )


async def test_placement_prefers_dram_then_ssd_then_registry(
    cluster: UpCluster, bus: Bus, tmp_path: Path
) -> None:
    events = await Events().start(bus)
    _deploy(cluster, "p", cluster.demo_dir)
    # Stage the checkpoint: node-1 holds it in DRAM, node-2 only on SSD, node-0 nowhere.
    await bus.request(
        STORAGE_ENSURE,
        EnsureRequest(model="p", checkpoint_uri=cluster.demo_dir.as_uri(), tier="dram"),
        node_id="node-1",
    )
    await bus.request(
        STORAGE_ENSURE,
        EnsureRequest(model="p", checkpoint_uri=cluster.demo_dir.as_uri(), tier="ssd"),
        node_id="node-2",
    )
    assert (await _complete(cluster, "p")).status_code == 200
    placed = await events.wait_for(lambda e: e["kind"] == "scheduler.placed" and e["model"] == "p")
    assert (placed["worker_id"], placed["source_tier"]) == ("node-1-w0", "dram")
    est = placed["candidates"]
    assert est["node-1-w0"] < est["node-2-w0"] < est["node-0-w0"]
    ready = await events.wait_for(lambda e: e["kind"] == "instance.ready" and e["model"] == "p")
    assert ready["node_id"] == "node-1"

    # node-1 is busy now. A model on node-2's SSD goes there, not to node-0 (registry).
    other = write_demo_model(tmp_path / "p2", seed=1)
    _deploy(cluster, "p2", other)
    await bus.request(
        STORAGE_ENSURE,
        EnsureRequest(model="p2", checkpoint_uri=other.as_uri(), tier="ssd"),
        node_id="node-2",
    )
    assert (await _complete(cluster, "p2")).status_code == 200
    placed = await events.wait_for(lambda e: e["kind"] == "scheduler.placed" and e["model"] == "p2")
    assert (placed["worker_id"], placed["source_tier"]) == ("node-2-w0", "ssd")


async def test_client_disconnect_frees_the_slot(cluster: UpCluster, bus: Bus) -> None:
    events = await Events().start(bus)
    body = {"model": "p", "prompt": "Once upon a time", "max_tokens": 3000, "stream": True}
    async with (
        httpx.AsyncClient(timeout=120) as client,
        client.stream("POST", cluster.base_url + "/v1/completions", json=body) as resp,
    ):
        assert resp.status_code == 200
        seen = 0
        async for line in resp.aiter_lines():
            seen += line.startswith("data: ")
            if seen >= 3:
                break  # the client goes away mid-stream
    done = await events.wait_for(
        lambda e: e["kind"] == "request.completed" and e["model"] == "p", timeout=60
    )
    assert done["status"] == "cancelled", done
    assert done["completion_tokens"] < 3000
    # The worker serves one generation at a time: the next request gets the freed slot.
    assert (await _complete(cluster, "p")).status_code == 200


async def test_worker_killed_during_load_never_hangs(
    cluster: UpCluster, bus: Bus, tmp_path: Path
) -> None:
    events = await Events().start(bus)
    third = write_demo_model(tmp_path / "p3", seed=2)
    _deploy(cluster, "p3", third)
    killed: list[str] = []

    async def kill_on_placement() -> None:
        placed = await events.wait_for(
            lambda e: e["kind"] == "scheduler.placed" and e["model"] == "p3"
        )
        cluster.child(placed["worker_id"]).kill()
        killed.append(placed["worker_id"])

    killer = asyncio.create_task(kill_on_placement())
    started = time.monotonic()
    resp = await _complete(cluster, "p3")
    await killer
    assert killed
    # Either the request was placed again (the killed worker restarts free) or it failed
    # with a clear OpenAI-style error; it never hangs.
    assert resp.status_code in (200, 503), resp.text
    if resp.status_code == 503:
        assert resp.json()["error"]["message"]
    assert time.monotonic() - started < 200
    if resp.status_code == 200:
        assert resp.json()["choices"][0]["text"] is not None
