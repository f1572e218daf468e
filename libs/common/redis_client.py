"""Connecting to Redis with bounded waits (every command has a socket timeout)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from libs.protocol.errors import CredentialsError, UnavailableError, redact_url


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
    except (AuthenticationError, ResponseError) as exc:
        await client.aclose()
        if isinstance(exc, AuthenticationError) or "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise CredentialsError(
                f"Redis at {redact_url(url)} refused the credentials in SLLM_REDIS_URL: {exc}"
            ) from None
        raise UnavailableError(f"Redis at {redact_url(url)} answered: {exc!r}") from None
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise UnavailableError(f"cannot reach Redis at {redact_url(url)}: {exc!r}") from None
    return client
