"""Redis is the state of record: a store that restarts empty gets back what each service owns.

A real valkey-server of the test's own is killed and started again without its data (memory
only, as a Redis without persistence or a failover to an empty replica would be); the
scheduler writes its deployments back and a worker its registration, without an operator.
A store that restarts with its append-only file keeps everything, and nobody re-publishes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.common.embedded import EmbeddedNats, EmbeddedRedis
from libs.common.redis_client import connect_redis
from libs.protocol import Bus, Keys
from libs.protocol.endpoints import SCHED_DEPLOY, SCHED_UNDEPLOY
from libs.protocol.events import StateRepublishedEvent
from libs.protocol.messages import DeploymentSpec, DeployRequest, UndeployRequest
from services.worker.app import WorkerService
from services.worker.settings import WorkerSettings

from .scheduler_stubs import running_scheduler

pytestmark = pytest.mark.integration

BEAT = {"SLLM_HEARTBEAT_INTERVAL": "0.1", "SLLM_HEARTBEAT_TTL": "2"}


async def _wait(pred: Callable[[], Awaitable[object]], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await pred():
                return
        except (OSError, aioredis.RedisError):
            pass  # the store is still coming back
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_store_that_restarts_empty_gets_deployments_and_workers_back(
    nats_server: EmbeddedNats, own_redis: EmbeddedRedis, bus: Bus, root: str
) -> None:
    republished: list[StateRepublishedEvent] = []

    async def on_event(ev: StateRepublishedEvent) -> None:
        republished.append(ev)

    await bus.subscribe(
        bus.subjects.event("state.republished"), StateRepublishedEvent, on_event, json=True
    )
    worker = WorkerService(
        WorkerSettings.from_env(
            {
                "SLLM_NATS_URL": nats_server.url,
                "SLLM_REDIS_URL": own_redis.url,
                "SLLM_ROOT": root,
                "SLLM_INSTANCE_ID": "w-reset",
                "SLLM_NODE_ID": "node-0",
                "SLLM_DEVICE": "cpu",
                **BEAT,
            }
        )
    )
    async with running_scheduler(nats_server.url, own_redis.url, root, **BEAT):
        await worker.start()
        try:
            for name in ("kept", "gone"):
                spec = DeploymentSpec(name=name, checkpoint_uri=f"file:///models/{name}")
                await bus.request(SCHED_DEPLOY, DeployRequest(spec=spec))
            await bus.request(SCHED_UNDEPLOY, UndeployRequest(name="gone"))
            client = await connect_redis(own_redis.url)
            state = ClusterState(client, Keys(root))
            epoch = await state.store_epoch()
            registered = await state.get_worker("w-reset")
            assert registered is not None

            own_redis.kill()  # memory only: it comes back empty
            own_redis.restart()
            t0 = time.monotonic()

            async def restored() -> bool:
                names = [d.name for d in await state.deployments()]
                return names == ["kept"] and await state.get_worker("w-reset") is not None

            await _wait(restored, "the deployments and the worker written back")
            took = time.monotonic() - t0
            assert await state.store_epoch() != epoch
            w = await state.get_worker("w-reset")
            assert w is not None
            assert w.epoch == registered.epoch
            assert w.instance_id == ""

            async def announced() -> bool:
                return {e.service for e in republished} >= {"scheduler", "worker"}

            await _wait(announced, "the state.republished events")
            assert took < 5.0, took  # a few heartbeats, not minutes
            await client.aclose()
        finally:
            await worker.stop("test")


async def test_a_store_that_restarts_with_its_data_keeps_its_epoch(tmp_path: Path) -> None:
    with EmbeddedRedis(data_dir=tmp_path, persist=True) as server:
        client = await connect_redis(server.url)
        state = ClusterState(client, Keys("persist"))
        epoch = await state.store_epoch()
        await state.put_deployment(DeploymentSpec(name="m", checkpoint_uri="file:///models/m"))
        await asyncio.sleep(1.5)  # appendfsync everysec
        server.kill()
        server.restart()
        await _wait(lambda: state.store_epoch(), "the store back")
        assert await state.store_epoch() == epoch
        assert [d.name for d in await state.deployments()] == ["m"]
        await client.aclose()
