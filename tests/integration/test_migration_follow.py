"""The scheduler's migration waits follow the worker they wait on: `kill -9` of the destination
worker while it loads, or of the source worker while it migrates, fails ``sched.migrate``
within seconds (`PeerGone`, "unavailable"), not at `migration_load_timeout` or the
migration's budget.

Real scheduler, NATS and Valkey; the worker that dies is a process of its own that lives
(heartbeat, ``info``) but never finishes its load or migration (`silent_worker`); the other
side is a stand-in worker in the test (`scheduler_stubs.HostingWorker`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.protocol import Bus, Keys
from libs.protocol.endpoints import SCHED_MIGRATE
from libs.protocol.errors import UnavailableError
from libs.protocol.messages import DeploymentSpec, MigrateInstanceRequest
from libs.protocol.state import InstanceRecord
from services.scheduler.app import SchedulerService

from .probes import next_heartbeat, until
from .scheduler_stubs import HostingWorker, hosting_worker, running_scheduler
from .service_processes import FAST_HEARTBEAT, ServiceProcess, service_env

pytestmark = pytest.mark.integration

MODEL = "tiny"
SILENT, SILENT_NODE = "w-silent", "n-silent"
# Without following the worker, ``sched.migrate`` waited this long (the destination's load)
# or the migration's budget: the test's request gives up well before either.
LOAD_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 60.0
# From the kill to the error: "no responders" twice a second apart (~1.5 s), with slack for
# a busy 2-core machine.
FAIL_BOUND_S = 8.0


@pytest.fixture
async def silent(
    nats_server: Any,
    redis_server: Any,
    root: str,
    redis: aioredis.Redis,
    keys: Keys,
    tmp_path: Path,
) -> AsyncIterator[ServiceProcess]:
    """The silent worker, started and alive (its heartbeat is in Redis)."""
    env = service_env(
        nats_server.url,
        redis_server.url,
        root,
        SLLM_INSTANCE_ID=SILENT,
        SLLM_NODE_ID=SILENT_NODE,
        **FAST_HEARTBEAT,
    )
    with ServiceProcess("tests.integration.silent_worker", env, tmp_path / "silent.log") as proc:
        proc.start()
        await next_heartbeat(redis, keys.alive("worker", SILENT), None, "the silent worker")
        yield proc


@pytest.fixture
async def scheduler(
    nats_server: Any, redis_server: Any, root: str
) -> AsyncIterator[SchedulerService]:
    async with running_scheduler(
        nats_server.url,
        redis_server.url,
        root,
        SLLM_PREFETCH_REPLICAS="0",
        SLLM_MIGRATION_LOAD_TIMEOUT=str(LOAD_TIMEOUT_S),
    ) as svc:
        yield svc


@pytest.fixture
async def deployed(state: ClusterState) -> DeploymentSpec:
    spec = DeploymentSpec(name=MODEL, checkpoint_uri="file:///m/tiny", keep_alive_s=3600.0)
    await state.put_deployment(spec)
    return spec


async def ready_on(state: ClusterState, worker_id: str, node_id: str) -> str:
    """A ready instance of MODEL recorded on ``worker_id`` (reserved for it)."""
    iid = "i-" + os.urandom(4).hex()
    await state.put_instance(
        InstanceRecord(
            instance_id=iid,
            model=MODEL,
            worker_id=worker_id,
            node_id=node_id,
            status="ready",
            created_at=time.time(),
            ready_at=time.time(),
        )
    )
    assert await state.reserve_worker(worker_id, iid)
    return iid


async def fails_soon_after_kill(silent: ServiceProcess, migrate: asyncio.Task[Any]) -> str:
    """Kill the silent worker; ``migrate`` must fail "unavailable" within FAIL_BOUND_S."""
    await asyncio.sleep(1.0)  # well inside the scheduler's wait, not racing its start
    assert not migrate.done()
    silent.kill()
    killed_at = time.monotonic()
    with pytest.raises(UnavailableError) as err:
        await migrate
    took = time.monotonic() - killed_at
    print(f"sched.migrate failed {took:.1f}s after the kill: {err.value}")
    assert took < FAIL_BOUND_S
    return err.value.message


def migrating(bus: Bus, iid: str, destination: str) -> asyncio.Task[Any]:
    return asyncio.create_task(
        bus.request(
            SCHED_MIGRATE,
            MigrateInstanceRequest(
                instance_id=iid, destination_worker_id=destination, free_source=True
            ),
            timeout=REQUEST_TIMEOUT_S,
        )
    )


async def test_destination_killed_while_loading_fails_the_migration_in_seconds(
    bus: Bus,
    redis: aioredis.Redis,
    keys: Keys,
    state: ClusterState,
    deployed: DeploymentSpec,
    scheduler: SchedulerService,
    silent: ServiceProcess,
) -> None:
    source = await hosting_worker(bus, state, redis, keys, "w-src")
    iid = await ready_on(state, "w-src", "n-w-src")
    migrate = migrating(bus, iid, SILENT)

    async def loading_on_silent() -> bool:
        worker = await state.get_worker(SILENT)
        return worker is not None and bool(worker.instance_id)

    await until(loading_on_silent, "the destination's load", timeout=20)
    why = await fails_soon_after_kill(silent, migrate)
    assert f"destination worker {SILENT} died while loading" in why
    # The source was never asked to move anything and still serves.
    assert source.migrations == []
    rec = await state.get_instance(iid)
    assert rec is not None
    assert rec.status == "ready"


async def test_source_killed_mid_migration_fails_the_migration_in_seconds(
    bus: Bus,
    redis: aioredis.Redis,
    keys: Keys,
    state: ClusterState,
    deployed: DeploymentSpec,
    scheduler: SchedulerService,
    silent: ServiceProcess,
) -> None:
    destination: HostingWorker = await hosting_worker(
        bus, state, redis, keys, "w-dst", auto_ready=True
    )
    iid = await ready_on(state, SILENT, SILENT_NODE)
    migrate = migrating(bus, iid, "w-dst")

    async def destination_loaded() -> bool:
        return bool(destination.loads)

    # The destination is ready at once: the scheduler is then waiting on the source's
    # migration, which never answers.
    await until(destination_loaded, "the destination's load", timeout=20)
    why = await fails_soon_after_kill(silent, migrate)
    assert SILENT in why
    assert destination.unloads == []  # the destination instance stays: it serves on
