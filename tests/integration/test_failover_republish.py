"""A Valkey failover may lose writes the primary had not yet sent to its replica, and the
store epoch (itself a replicated key) cannot tell. Every service notices that its store
client now reaches another primary and writes back what it owns, as after a store reset."""

from __future__ import annotations

import asyncio
import json

import pytest

from libs.common.embedded import EmbeddedNats
from libs.common.redis_client import connect_redis
from libs.common.valkey_sentinel import EmbeddedSentinelSet
from libs.protocol import Bus, Keys
from services.worker.app import WorkerService
from services.worker.settings import WorkerSettings

from .test_valkey_sentinel import FAILOVER_BOUND_S, _until, valkey_ha

pytestmark = pytest.mark.integration

__all__ = ["valkey_ha"]  # the fixture this module uses

WORKER = "w-ha"


async def test_a_record_lost_in_a_failover_is_published_again(
    nats_server: EmbeddedNats, valkey_ha: EmbeddedSentinelSet, root: str, bus: Bus
) -> None:
    settings = WorkerSettings.from_env(
        {
            "SLLM_NATS_URL": nats_server.url,
            "SLLM_REDIS_URL": valkey_ha.url_for("storage"),  # a service role's user
            "SLLM_ROOT": root,
            "SLLM_INSTANCE_ID": WORKER,
            "SLLM_NODE_ID": "node-ha",
            "SLLM_HEARTBEAT_INTERVAL": "0.1",
            "SLLM_HEARTBEAT_TTL": "2",
            "SLLM_REQUEST_TIMEOUT": "1",
        }
    )
    republished: list[dict[str, str]] = []

    async def on_event(msg: object) -> None:
        republished.append(json.loads(getattr(msg, "data", b"{}")))

    await bus.nc.subscribe(bus.subjects.event("state.republished"), cb=on_event)
    svc = WorkerService(settings)
    await svc.start()
    admin = await connect_redis(valkey_ha.client_url, timeout=2.0)
    keys = Keys(root)
    try:
        assert await admin.exists(keys.worker(WORKER))
        # The worker's registration, as asynchronous replication loses a write: gone from the
        # primary and the replica alike (the deletion replicated before the primary dies).
        await admin.delete(keys.worker(WORKER))
        await admin.srem(keys.workers, WORKER)
        assert await admin.wait(1, 2000) == 1
        old = valkey_ha.kill_primary()
        await asyncio.to_thread(valkey_ha.wait_for_failover, old, FAILOVER_BOUND_S)
        back_s = await _until(
            lambda: admin.exists(keys.worker(WORKER)), "the worker's record published again", 15
        )
        print(f"\nthe worker's record back {back_s:.2f} s after the failover")
        assert await admin.sismember(keys.workers, WORKER)
        await _until(lambda: asyncio.sleep(0, republished), "the state.republished event", 5)
        assert republished[0]["reason"] == "failover"
        assert republished[0]["service"] == "worker"
    finally:
        await admin.aclose()
        await svc.stop("test")
