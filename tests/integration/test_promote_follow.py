"""The worker's DRAM-tier promotion follows the storage service's life: after a load from the
SSD tier the worker asks its node's storage service for a DRAM copy in the background; when
that service is killed (`kill -9`) before answering, the worker asks the restarted one within
seconds, instead of waiting out its load timeout on the dead one.

Real worker, NATS and Valkey; the storage service is a stand-in process of its own
(`silent_storage`) that records every ensure and, the first time, never answers the DRAM one.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.protocol import Bus, Keys
from services.worker.app import WorkerService

from .probes import next_heartbeat
from .service_processes import (
    FAST_HEARTBEAT,
    ServiceProcess,
    request_load,
    service_env,
    worker_fixture,
)
from .silent_storage import record_key

pytestmark = pytest.mark.integration

NODE, WORKER, MODEL = "n-promote", "w-promote", "tiny"
# Without following the storage service the promotion waited this long on the dead one (the
# load timeout) and never asked the restarted one.
LOAD_TIMEOUT_S = 120.0
# From the restarted service's heartbeat to its being asked: the death noticed (~1.5 s after
# the kill, mostly over by then) and a poll for the new life (0.2 s), with slack for 2 cores.
ASKED_AGAIN_BOUND_S = 8.0


@pytest.fixture
def storage(
    nats_server: Any, redis_server: Any, root: str, tmp_path: Path, checkpoint: Path
) -> Iterator[ServiceProcess]:
    env = service_env(
        nats_server.url,
        redis_server.url,
        root,
        SLLM_NODE_ID=NODE,
        **FAST_HEARTBEAT,
        SLLM_TEST_CHECKPOINT=str(checkpoint),
    )
    with ServiceProcess("tests.integration.silent_storage", env, tmp_path / "storage.log") as p:
        yield p


worker = worker_fixture(WORKER, NODE, load_timeout_s=LOAD_TIMEOUT_S)


async def alive(redis: aioredis.Redis, keys: Keys, before: object) -> object:
    """The storage stand-in's heartbeat, once there is one other than ``before``."""
    key = keys.alive("storage", f"storage-{NODE}")
    return await next_heartbeat(redis, key, before, "the storage stand-in")


async def asked(redis: aioredis.Redis, root: str, line: str, timeout: float) -> float:
    """Waits until the stand-in recorded ``line``; the seconds it took."""
    t0 = time.monotonic()
    while True:
        seen = [
            x.decode() if isinstance(x, bytes) else x
            for x in await redis.lrange(record_key(root), 0, -1)
        ]
        if line in seen:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"never recorded {line!r}: {seen}"
        await asyncio.sleep(0.05)


async def test_promotion_asks_the_restarted_storage_service_after_a_kill_9(
    bus: Bus,
    redis: aioredis.Redis,
    keys: Keys,
    state: ClusterState,
    root: str,
    storage: ServiceProcess,
    worker: WorkerService,
) -> None:
    storage.start(SLLM_TEST_NAME="first", SLLM_TEST_ANSWER_DRAM="0")
    first = await alive(redis, keys, None)
    iid = "i-" + os.urandom(4).hex()
    await request_load(
        bus, state, iid=iid, model=MODEL, worker_id=WORKER, node=NODE, uri="file:///m/tiny"
    )
    # Loaded from the SSD copy, the worker asks for a DRAM copy, which never comes.
    await asked(redis, root, "first dram", timeout=60)
    rec = await state.get_instance(iid)
    assert rec is not None
    assert (rec.status, rec.source_tier) == ("ready", "ssd")
    storage.kill()
    storage.start(SLLM_TEST_NAME="second", SLLM_TEST_ANSWER_DRAM="1")
    await alive(redis, keys, first)
    took = await asked(redis, root, "second dram", timeout=ASKED_AGAIN_BOUND_S)
    print(f"the restarted storage service was asked for the DRAM copy {took:.1f}s after it beat")
    # The promotion is off the critical path: the instance served throughout.
    rec = await state.get_instance(iid)
    assert rec is not None
    assert rec.status == "ready"
