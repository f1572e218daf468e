"""Connecting to Redis with bounded waits (every command has a socket timeout)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from libs.protocol.errors import UnavailableError


async def connect_redis(url: str, *, timeout: float = 5.0) -> aioredis.Redis:
    """Connect and ping; raise `UnavailableError` if Redis does not answer within ``timeout``."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=10,
        retry_on_timeout=False,
    )
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise UnavailableError(f"cannot reach Redis at {url}: {exc!r}") from None
    return client
