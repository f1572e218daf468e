"""A burst of commands on one store client: more at once than the client has connections, to
one server and through Sentinel. Each waits for a free connection and succeeds (redis-py's
default pool fails the 101st concurrent command with `MaxConnectionsError`), and the client
never holds more than `MAX_CONNECTIONS` connections to the store."""

from __future__ import annotations

import asyncio

import pytest
import redis

from libs.common.embedded import EmbeddedRedis
from libs.common.redis_client import MAX_CONNECTIONS, connect_redis
from libs.common.valkey_sentinel import EmbeddedSentinelSet

pytestmark = pytest.mark.integration

BURST = 4 * MAX_CONNECTIONS


async def _burst(url: str) -> list[object]:
    client = await connect_redis(url, timeout=10.0)
    try:
        await client.set("burst", 1)
        # BLPOP on an empty list holds its connection for a moment: the burst overlaps.
        replies = await asyncio.gather(
            *(client.blpop([f"empty-{k}"], timeout=0.2) for k in range(BURST)),
            *(client.incr("burst") for _ in range(BURST)),
        )
        return [r for r in replies if r is not None]
    finally:
        await client.aclose()


def _connections(admin: redis.Redis) -> int:
    return sum(1 for c in admin.client_list() if c.get("cmd") == "blpop")


async def test_a_burst_on_one_server_waits_for_connections() -> None:
    with EmbeddedRedis() as server:
        admin = redis.Redis.from_url(server.url)
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, await asyncio.to_thread(_connections, admin))
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        try:
            counts = await _burst(server.url)
        finally:
            watcher.cancel()
        assert max(c for c in counts if isinstance(c, int)) == BURST + 1  # every INCR ran
        assert 0 < peak <= MAX_CONNECTIONS


async def test_a_burst_through_sentinel_waits_for_connections() -> None:
    with EmbeddedSentinelSet() as ha:
        counts = await _burst(ha.url)
        assert max(c for c in counts if isinstance(c, int)) == BURST + 1
