"""Fixtures of the router tests: the router under uvicorn, an HTTP client to it, and a warm
model on a stand-in worker (a module may define its own under the same name)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from libs.cluster import ClusterState
from libs.protocol import Bus, Keys

from .router_stubs import (
    RunningRouter,
    StubScheduler,
    StubWorker,
    deploy,
    ready_instance,
    router_settings,
    running_router,
)

HTTP_TIMEOUT = httpx.Timeout(20.0)


@pytest.fixture
def state(redis: aioredis.Redis, keys: Keys) -> ClusterState:
    return ClusterState(redis, keys)


@pytest.fixture
async def worker(bus: Bus) -> StubWorker:
    return await StubWorker(bus).serve()


@pytest.fixture
async def warm(state: ClusterState, bus: Bus, worker: StubWorker) -> StubWorker:
    """A deployed model with one ready instance on the stand-in worker."""
    await StubScheduler(bus, state).serve()
    await deploy(state)
    await ready_instance(state)
    return worker


@pytest.fixture
async def router(nats_server, redis_server, root: str) -> AsyncIterator[RunningRouter]:
    async with running_router(router_settings(nats_server.url, redis_server.url, root)) as r:
        yield r


@pytest.fixture
async def http(router: RunningRouter) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=router.url, timeout=HTTP_TIMEOUT) as c:
        yield c
