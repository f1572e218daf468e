"""Fixtures of the integration tests: the tiny demo model as a checkpoint (worker tests); the
router under uvicorn, an HTTP client to it, and a warm model on a stand-in worker (router tests).
A module may define its own under the same name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

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


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo model converted to the sllm format, once per module."""
    from libs.demo import write_demo_model
    from libs.loader import convert_hf

    root = tmp_path_factory.mktemp("tiny")
    write_demo_model(root / "hf", "tiny")
    return convert_hf(root / "hf", root / "ckpt")


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
