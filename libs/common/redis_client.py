"""Connecting to Redis with bounded waits (every command has a socket timeout)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from libs.protocol.errors import CredentialsError, UnavailableError, is_tls_failure, redact_url

from .tls import TlsFiles, redis_url_with_tls


async def connect_redis(
    url: str, *, timeout: float = 5.0, tls: TlsFiles | None = None
) -> aioredis.Redis:
    """Connect and ping; raise `UnavailableError` if Redis does not answer within ``timeout``,
    `CredentialsError` if it refuses the password or the TLS handshake fails. ``tls``: the CA
    and client certificate files (a ``rediss://`` URL, or any file named, turns TLS on)."""
    files = tls or TlsFiles("SLLM_REDIS_TLS")
    url = redis_url_with_tls(url, files)
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=10,
        retry_on_timeout=False,
        **(files.redis_kwargs() if url.startswith("rediss://") else {}),
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
        if is_tls_failure(exc):
            raise CredentialsError(
                f"Redis at {redact_url(url)}: the TLS handshake failed ({exc}); check "
                "SLLM_REDIS_TLS_CA / _CERT / _KEY against the server's certificate"
            ) from None
        raise UnavailableError(f"cannot reach Redis at {redact_url(url)}: {exc!r}") from None
    return client
