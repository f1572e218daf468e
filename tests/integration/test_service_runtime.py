"""The common service shape against real NATS and Redis: registration, info, heartbeat."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.protocol import Bus
from libs.protocol.endpoints import SERVICE_INFO
from libs.protocol.errors import NoRespondersError
from libs.protocol.messages import InfoRequest
from services.storage.app import StorageService
from services.storage.settings import StorageSettings
from services.worker.app import WorkerService
from services.worker.settings import WorkerSettings

pytestmark = pytest.mark.integration


def _worker_settings(nats_url: str, redis_url: str, root: str) -> WorkerSettings:
    return WorkerSettings.from_env(
        {
            "SLLM_NATS_URL": nats_url,
            "SLLM_REDIS_URL": redis_url,
            "SLLM_ROOT": root,
            "SLLM_INSTANCE_ID": "w0",
            "SLLM_NODE_ID": "node-a",
            "SLLM_HEARTBEAT_INTERVAL": "0.1",
            "SLLM_HEARTBEAT_TTL": "1",
        }
    )


async def test_worker_registers_answers_info_and_unregisters(
    nats_server, redis_server, root, keys, bus: Bus, redis: aioredis.Redis
) -> None:
    svc = WorkerService(_worker_settings(nats_server.url, redis_server.url, root))
    await svc.start()
    try:
        info = await bus.request(SERVICE_INFO, InfoRequest(), kind="worker", instance_id="w0")
        assert (info.kind, info.instance_id, info.node_id) == ("worker", "w0", "node-a")
        assert await redis.sismember(keys.workers, "w0")
        assert await redis.hget(keys.worker("w0"), "node_id") == b"node-a"
        alive = await redis.get(keys.alive("worker", "w0"))
        assert alive is not None
        assert json.loads(alive)["instance_id"] == "w0"
        assert 0 < await redis.pttl(keys.alive("worker", "w0")) <= 1000
    finally:
        await svc.stop("test")
    assert not await redis.sismember(keys.workers, "w0")
    assert await redis.get(keys.alive("worker", "w0")) is None
    with pytest.raises(NoRespondersError):
        await bus.request(SERVICE_INFO, InfoRequest(), kind="worker", instance_id="w0")


async def test_storage_registers_its_node_and_tiers(
    nats_server, redis_server, root, keys, redis: aioredis.Redis, tmp_path
) -> None:
    settings = StorageSettings.from_env(
        {
            "SLLM_NATS_URL": nats_server.url,
            "SLLM_REDIS_URL": redis_server.url,
            "SLLM_ROOT": root,
            "SLLM_NODE_ID": "node-b",
            "SLLM_SSD_DIR": str(tmp_path / "ssd"),
            "SLLM_DRAM_DIR": str(tmp_path / "dram"),
        }
    )
    svc = StorageService(settings)
    await svc.start()
    try:
        assert (tmp_path / "ssd").is_dir()
        assert (tmp_path / "dram").is_dir()
        assert await redis.sismember(keys.nodes, "node-b")
        nodes = await ClusterState(redis, keys).nodes()
        assert [(n.node_id, n.ssd_dir) for n in nodes] == [("node-b", str(tmp_path / "ssd"))]
    finally:
        await svc.stop("test")


async def test_heartbeat_survives_a_redis_restart(nats_server, own_redis, root, keys) -> None:
    svc = WorkerService(_worker_settings(nats_server.url, own_redis.url, root))
    await svc.start()
    try:
        own_redis.kill()
        await asyncio.sleep(0.3)  # heartbeats fail meanwhile; the service must keep running
        own_redis.start()
        client = aioredis.Redis.from_url(own_redis.url, socket_timeout=2)
        try:
            deadline = time.monotonic() + 10
            while await client.get(keys.alive("worker", "w0")) is None:
                assert time.monotonic() < deadline, "heartbeat did not come back"
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
    finally:
        await svc.stop("test")
