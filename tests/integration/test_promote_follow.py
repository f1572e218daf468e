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
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.protocol import Bus, Keys
from libs.protocol.endpoints import WORKER_LOAD
from libs.protocol.messages import LoadRequest
from libs.protocol.state import InstanceRecord
from services.worker.app import WorkerService
from services.worker.settings import WorkerSettings

from .silent_storage import record_key

pytestmark = pytest.mark.integration

NODE, WORKER, MODEL = "n-promote", "w-promote", "tiny"
REPO = Path(__file__).resolve().parents[2]
# Without following the storage service the promotion waited this long on the dead one (the
# load timeout) and never asked the restarted one.
LOAD_TIMEOUT_S = 120.0
# From the restarted service's heartbeat to its being asked: the death noticed (~1.5 s after
# the kill, mostly over by then) and a poll for the new life (0.2 s), with slack for 2 cores.
ASKED_AGAIN_BOUND_S = 8.0


class StorageProcess:
    """One run of ``python -m tests.integration.silent_storage`` for NODE."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("SLLM_")}
        self.env = {**base, **env, "PYTHONUNBUFFERED": "1"}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, name: str, *, answer_dram: bool) -> None:
        env = {**self.env, "SLLM_TEST_NAME": name, "SLLM_TEST_ANSWER_DRAM": str(int(answer_dram))}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.silent_storage"],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
async def storage(
    nats_server: Any, redis_server: Any, root: str, tmp_path: Path, checkpoint: Path
) -> AsyncIterator[StorageProcess]:
    env = {
        "SLLM_NATS_URL": nats_server.url,
        "SLLM_REDIS_URL": redis_server.url,
        "SLLM_ROOT": root,
        "SLLM_NODE_ID": NODE,
        "SLLM_HEARTBEAT_INTERVAL": "0.2",
        "SLLM_HEARTBEAT_TTL": "2",
        "SLLM_TEST_CHECKPOINT": str(checkpoint),
    }
    proc = StorageProcess(env, tmp_path / "storage.log")
    yield proc
    proc.kill()


@pytest.fixture
async def worker(nats_server: Any, redis_server: Any, root: str) -> AsyncIterator[WorkerService]:
    env = {
        "SLLM_NATS_URL": nats_server.url,
        "SLLM_REDIS_URL": redis_server.url,
        "SLLM_ROOT": root,
        "SLLM_INSTANCE_ID": WORKER,
        "SLLM_NODE_ID": NODE,
        "SLLM_HEARTBEAT_INTERVAL": "0.2",
        "SLLM_HEARTBEAT_TTL": "2",
        "SLLM_LOAD_TIMEOUT": str(LOAD_TIMEOUT_S),
    }
    svc = WorkerService(WorkerSettings.from_env(env))
    await svc.start()
    yield svc
    await svc.stop("test over")


async def alive(redis: aioredis.Redis, keys: Keys, before: object) -> object:
    """The storage service's heartbeat, once there is one other than ``before``."""
    key = keys.alive("storage", f"storage-{NODE}")
    deadline = time.monotonic() + 60
    while True:
        beat = await redis.get(key)
        if beat is not None and beat != before:
            return beat
        assert time.monotonic() < deadline, "the storage stand-in did not come up"
        await asyncio.sleep(0.05)


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
    storage: StorageProcess,
    worker: WorkerService,
) -> None:
    storage.start("first", answer_dram=False)
    first = await alive(redis, keys, None)
    iid = "i-" + os.urandom(4).hex()
    await state.put_instance(
        InstanceRecord(
            instance_id=iid,
            model=MODEL,
            worker_id=WORKER,
            node_id=NODE,
            status="loading",
            created_at=time.time(),
        )
    )
    assert await state.reserve_worker(WORKER, iid)
    await bus.request(
        WORKER_LOAD,
        LoadRequest(instance_id=iid, model=MODEL, checkpoint_uri="file:///m/tiny"),
        worker_id=WORKER,
        timeout=10,
    )
    # Loaded from the SSD copy, the worker asks for a DRAM copy, which never comes.
    await asked(redis, root, "first dram", timeout=60)
    rec = await state.get_instance(iid)
    assert rec is not None
    assert (rec.status, rec.source_tier) == ("ready", "ssd")
    storage.kill()
    storage.start("second", answer_dram=True)
    await alive(redis, keys, first)
    took = await asked(redis, root, "second dram", timeout=ASKED_AGAIN_BOUND_S)
    print(f"the restarted storage service was asked for the DRAM copy {took:.1f}s after it beat")
    # The promotion is off the critical path: the instance served throughout.
    rec = await state.get_instance(iid)
    assert rec is not None
    assert rec.status == "ready"
