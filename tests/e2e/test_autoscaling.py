"""Autoscaling through the running system: a burst scales a model from zero to its maximum and
back to zero after its keep-alive; a request's own keep_alive lengthens or shortens that.

One cluster (one node, three CPU workers, one generation per worker at a time) for the module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from libs.protocol import Bus

from .cluster import UpCluster, up_cluster
from .events import Events

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

Event = dict[str, Any]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpCluster]:
    with up_cluster(
        tmp_path_factory.mktemp("autoscaling"),
        nodes=1,
        workers_per_node=3,
        SLLM_MAX_BATCH="1",
        SLLM_MAX_QUEUE="0",
        SLLM_BANDWIDTH_PROBE_MB="0",
    ) as c:
        yield c


def _deploy(cluster: UpCluster, name: str, **knobs: Any) -> None:
    r = httpx.post(
        cluster.base_url + "/v1/deployments",
        json={"name": name, "checkpoint_uri": cluster.demo_dir.as_uri(), **knobs},
        timeout=30,
    )
    assert r.status_code == 201, r.text


async def _complete(
    client: httpx.AsyncClient, cluster: UpCluster, model: str, **extra: Any
) -> httpx.Response:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": 24, **extra}
    return await client.post(cluster.base_url + "/v1/completions", json=body)


def _instances(cluster: UpCluster, model: str) -> list[dict[str, Any]]:
    r = httpx.get(cluster.base_url + f"/v1/deployments/{model}", timeout=30)
    assert r.status_code == 200, r.text
    instances: list[dict[str, Any]] = r.json()["instances"]
    return instances


async def test_a_burst_scales_from_zero_to_max_and_back_to_zero(
    cluster: UpCluster, bus: Bus
) -> None:
    events = await Events().start(bus)
    _deploy(cluster, "burst", max_instances=3, target_concurrency=1, keep_alive_s=3)
    assert _instances(cluster, "burst") == []

    async with httpx.AsyncClient(timeout=240) as client:
        answers = await asyncio.gather(*(_complete(client, cluster, "burst") for _ in range(6)))
    assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]

    # Demand 6 with target concurrency 1 wants 6 instances: capped at max_instances = 3.
    await events.until(
        lambda: len({e["instance_id"] for e in events.of("instance.ready", model="burst")}) == 3,
        "three ready instances",
    )
    ups = [e for e in events.of("scheduler.scaled", model="burst") if e["to_instances"] > 0]
    assert max(e["to_instances"] for e in ups) == 3
    assert len({e["instance_id"] for e in events.of("scheduler.placed", model="burst")}) == 3

    # Idle past the 3 s keep-alive, every instance unloads: scale to zero.
    await events.until(
        lambda: len(events.of("instance.stopped", model="burst")) == 3, "three stopped instances"
    )
    assert {e["reason"] for e in events.of("instance.stopped", model="burst")} == {"idle"}

    # The scheduler announces each step once the worker's unload answer is back, which may be
    # after the worker's own `instance.stopped`: wait for the step to zero, do not race it.
    def downs() -> list[dict[str, object]]:
        return [e for e in events.of("scheduler.scaled", model="burst") if e["reason"] == "idle"]

    await events.until(
        lambda: any(e["to_instances"] == 0 for e in downs()), "the scale-down to zero announced"
    )
    assert len(downs()) == 3
    assert _instances(cluster, "burst") == []


async def test_a_request_keep_alive_overrides_the_deployment(cluster: UpCluster, bus: Bus) -> None:
    events = await Events().start(bus)
    _deploy(cluster, "long", keep_alive_s=600)
    _deploy(cluster, "short", keep_alive_s=1)
    async with httpx.AsyncClient(timeout=240) as client:
        bad = await _complete(client, cluster, "long", keep_alive="soon")
        assert bad.status_code == 400
        assert "keep_alive" in bad.json()["error"]["message"]
        # "long" would stay 600 s; keep_alive 0 lets it go right after the request.
        assert (await _complete(client, cluster, "long", keep_alive=0)).status_code == 200
        # "short" would go after 1 s; a negative keep_alive keeps it loaded.
        assert (await _complete(client, cluster, "short", keep_alive="-1")).status_code == 200
    await events.until(lambda: bool(events.of("instance.stopped", model="long")), "long to unload")
    assert events.of("instance.stopped", model="long")[0]["reason"] == "idle"
    await events.until(lambda: bool(events.of("instance.idle", model="short")), "short to be idle")
    await asyncio.sleep(3.0)  # three times its deployment's keep-alive
    assert events.of("instance.stopped", model="short") == []
    assert [i["status"] for i in _instances(cluster, "short")] == ["ready"]
