"""Shared fixtures: real nats-server and valkey-server processes, per-test isolation."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from libs.common.embedded import EmbeddedNats, EmbeddedRedis
from libs.protocol import Bus, Keys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# What the report of a failed test that ran `sllm up` shows: the end of its log, and the
# Python stacks of its services (py-spy) while they still run: where a stuck one is stuck.
LOG_TAIL_LINES = 80


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed or call.when == "teardown":
        return
    from .e2e.cluster import UpCluster

    for fixture in getattr(item, "funcargs", {}).values():
        if isinstance(fixture, UpCluster):
            tail = "\n".join(fixture.log().splitlines()[-LOG_TAIL_LINES:])
            report.sections.append(("sllm up: the end of its log", tail))
            report.sections.append(("sllm up: where its services wait", fixture.stacks()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch  # only when gpu tests were collected: torch costs seconds to import

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[EmbeddedNats]:
    """One nats-server (JetStream on) for the whole session. Don't kill it: use `own_nats`."""
    with EmbeddedNats() as server:
        assert isinstance(server, EmbeddedNats)
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One valkey-server for the whole session. Don't kill it: use `own_redis`."""
    with EmbeddedRedis() as server:
        assert isinstance(server, EmbeddedRedis)
        yield server


@pytest.fixture
def own_nats() -> Iterator[EmbeddedNats]:
    """A nats-server of this test's own, free to kill and restart."""
    with EmbeddedNats() as server:
        assert isinstance(server, EmbeddedNats)
        yield server


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A valkey-server of this test's own, free to kill and restart."""
    with EmbeddedRedis() as server:
        assert isinstance(server, EmbeddedRedis)
        yield server


@pytest.fixture
def root() -> str:
    """This test's subject root and Redis key prefix: tests never see each other's traffic."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def keys(root: str) -> Keys:
    return Keys(root)


@pytest.fixture
async def bus(nats_server: EmbeddedNats, root: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_server.url, name="test", root=root, request_timeout=2.0)
    yield b
    await b.close()


@pytest.fixture
async def redis(redis_server: EmbeddedRedis, root: str) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    yield client
    async for key in client.scan_iter(match=f"{root}:*"):
        await client.delete(key)
    await client.aclose()
