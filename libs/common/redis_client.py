"""Connecting to Redis (Valkey) with bounded waits (every command has a socket timeout), to one
server or to the primary that Sentinel names.

Two URL forms:

- ``redis://[user:password@]host:port/<db>`` (``rediss://``: TLS): one server.
- ``redis+sentinel://[user:password@]host1:port1,host2:port2,.../<service>[/<db>]``
  (``rediss+sentinel://``: TLS to the sentinels and to the primary): ask these sentinels
  (port 26379 when left out) which server is the primary of ``<service>`` (the name in
  ``sentinel monitor``) and use it. ``user:password`` are the Valkey user's: what the primary
  checks. Sentinels are asked without credentials unless the query gives theirs:
  ``?sentinel_password=...`` (``requirepass`` in sentinel.conf), with ``&sentinel_user=...``
  for a sentinel ACL user. A sentinel's own password is not the Valkey user's: sentinels are
  shared by every service, and answer only where the primary is.

A failover, as redis-py's sentinel-managed client (`redis.asyncio.sentinel`) handles it, measured
with Valkey 8.1 and redis-py 8.2 (tests/integration/test_valkey_sentinel.py): every new
connection asks the sentinels for the primary, and the client does not retry a command (no
retry policy: a failed command fails at once, as on the direct path). A command in flight when
the primary dies fails with `ConnectionError`; so does every command while the sentinels still
name the dead primary (about ``down-after-milliseconds``), then `MasterNotFoundError` (also a
`ConnectionError`) until a replica is promoted; the first command after that reconnects to the
new primary (about 2.3 s after a SIGKILL with a 1 s down-after). A connection to a primary that
was demoted answers READONLY, which redis-py turns into a `ConnectionError` and a reconnection.
So callers see a `RedisError` at worst, which services treat as "store unavailable, retry" (a
503 reply, the next heartbeat). Writes the primary acknowledged but had not yet sent to the
replica are lost with it: replication is asynchronous (``WAIT`` narrows that window).

Both clients hold at most `MAX_CONNECTIONS` connections, and a command beyond that waits for a
free one (up to the command timeout) instead of failing: redis-py's default pool raises
`MaxConnectionsError` at its 101st concurrent command, which a burst of requests reaches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from libs.protocol.errors import CredentialsError, UnavailableError, is_tls_failure, redact_url

from .tls import TlsFiles, redis_url_with_tls

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme -> TLS
DEFAULT_SENTINEL_PORT = 26379
# Connections of one client to the store; more commands at once wait for one of them.
MAX_CONNECTIONS = 64
# What a refusal of credentials looks like in the errors the sentinel client collects.
_REFUSALS = ("WRONGPASS", "NOAUTH", "AuthenticationError", "invalid password", "invalid username")


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL (see the module docstring)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str = ""
    password: str = ""
    sentinel_username: str = ""
    sentinel_password: str = ""
    tls: bool = False


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0] in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Parse the sentinel form; `ValueError` (without the credentials) if it is malformed."""
    scheme, _, rest = url.partition("://")
    if scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"{redact_url(url)}: not a redis+sentinel:// URL")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    user, _, password = userinfo.partition(":") if at else ("", "", "")
    sentinels = tuple(_host_port(item, url) for item in hosts.split(",") if item)
    parts = path.split("/") if path else []
    if not sentinels or len(parts) not in (1, 2) or not parts[0]:
        raise ValueError(
            f"{redact_url(url)}: expected redis+sentinel://[user:password@]host:port[,host:port"
            "...]/<service>[/<db>]"
        )
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(f"{redact_url(url)}: the database must be a number")
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(params) - {"sentinel_user", "sentinel_password"}
    if unknown:
        raise ValueError(f"{redact_url(url)}: unknown parameters {sorted(unknown)}")
    return SentinelUrl(
        sentinels=sentinels,
        service=unquote(parts[0]),
        db=int(parts[1]) if len(parts) == 2 else 0,
        username=unquote(user),
        password=unquote(password),
        sentinel_username=params.get("sentinel_user", ""),
        sentinel_password=params.get("sentinel_password", ""),
        tls=SENTINEL_SCHEMES[scheme],
    )


def _host_port(item: str, url: str) -> tuple[str, int]:
    host, colon, port = item.rpartition(":")
    if not colon:
        return item, DEFAULT_SENTINEL_PORT
    if not host or not port.isdigit():
        raise ValueError(f"{redact_url(url)}: bad sentinel address {item!r}")
    return host, int(port)


class SentinelBlockingPool(BlockingConnectionPool, SentinelConnectionPool):
    """Sentinel's connection pool (each new connection asks the sentinels for the primary)
    that waits for a free connection at its limit, as `BlockingConnectionPool` does."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        ssl = kwargs.pop("ssl", False)
        kwargs.setdefault(
            "connection_class", SentinelManagedSSLConnection if ssl else SentinelManagedConnection
        )
        BlockingConnectionPool.__init__(
            self, service_name=service_name, sentinel_manager=sentinel_manager, **kwargs
        )


class SentinelRedis(aioredis.Redis):
    """The primary's client from `Sentinel.master_for`; closing it also closes the clients of
    the sentinels it asks (redis-py leaves those to the caller)."""

    # Not ``sentinel``: that is the name of a Redis command method.
    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinel_manager is not None:
                await self.sentinel_manager.aclose()


async def connect_redis(
    url: str, *, timeout: float = 5.0, tls: TlsFiles | None = None
) -> aioredis.Redis:
    """Connect and ping; raise `UnavailableError` if Redis does not answer within ``timeout``,
    `CredentialsError` if it refuses the password or the TLS handshake fails. ``tls``: the CA
    and client certificate files (a ``rediss://`` URL, or any file named, turns TLS on). A
    ``redis+sentinel://`` URL connects to the primary the sentinels name (module docstring)."""
    files = tls or TlsFiles("SLLM_REDIS_TLS")
    url = redis_url_with_tls(url, files)
    if is_sentinel_url(url):
        if files.given and url.startswith("redis+sentinel://"):
            url = "rediss+sentinel://" + url.removeprefix("redis+sentinel://")
        client: aioredis.Redis = _sentinel_client(url, timeout, files)
    else:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=10,
            retry_on_timeout=False,
            **(files.redis_kwargs() if url.startswith("rediss://") else {}),
        )
        client = aioredis.Redis.from_pool(pool)
    where = redact_url(url)
    try:
        await client.ping()
    except (AuthenticationError, ResponseError) as exc:
        await client.aclose()
        if isinstance(exc, AuthenticationError) or _is_refusal(exc):
            raise CredentialsError(
                f"Redis at {where} refused the credentials in SLLM_REDIS_URL: {exc}"
            ) from None
        raise UnavailableError(f"Redis at {where} answered: {exc!r}") from None
    except (RedisError, OSError) as exc:
        await client.aclose()
        if is_tls_failure(exc):
            raise CredentialsError(
                f"Redis at {where}: the TLS handshake failed ({exc}); check "
                "SLLM_REDIS_TLS_CA / _CERT / _KEY against the server's certificate"
            ) from None
        if _is_refusal(exc):  # a sentinel refused its credentials (collected, not raised)
            raise CredentialsError(
                f"Redis sentinels at {where} refused the credentials in SLLM_REDIS_URL: {exc}"
            ) from None
        raise UnavailableError(f"cannot reach Redis at {where}: {exc!r}") from None
    return client


def _is_refusal(exc: BaseException) -> bool:
    return any(word in str(exc) for word in _REFUSALS)


def _sentinel_client(url: str, timeout: float, files: TlsFiles) -> SentinelRedis:
    """The primary's client: redis-py's `Sentinel` asks the sentinels, `master_for` connects."""
    try:
        parsed = parse_sentinel_url(url)
    except ValueError as exc:
        raise UnavailableError(str(exc)) from None
    bounded: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    secure: dict[str, Any] = {"ssl": True, **files.redis_kwargs()} if parsed.tls else {}
    sentinel_auth = {
        k: v
        for k, v in (
            ("username", parsed.sentinel_username),
            ("password", parsed.sentinel_password),
        )
        if v
    }
    sentinel = Sentinel(
        parsed.sentinels,
        sentinel_kwargs={**bounded, **secure, **sentinel_auth},
        **bounded,
    )
    options: dict[str, Any] = {
        "db": parsed.db,
        "health_check_interval": 10,
        "max_connections": MAX_CONNECTIONS,
        "timeout": timeout,
        **secure,
    }
    options.update(
        (k, v) for k, v in (("username", parsed.username), ("password", parsed.password)) if v
    )
    client = sentinel.master_for(
        parsed.service,
        redis_class=SentinelRedis,
        connection_pool_class=SentinelBlockingPool,
        **options,
    )
    assert isinstance(client, SentinelRedis)
    client.sentinel_manager = sentinel
    return client


def primary_address(client: aioredis.Redis) -> tuple[str, int] | None:
    """The address of the primary a sentinel-managed client last connected to; None for a
    client of one server, or before its first connection. Free: no sentinel is asked (the
    client asks them at each new connection, and a failover forces new connections)."""
    address = getattr(client.connection_pool, "master_address", None)
    return (str(address[0]), int(address[1])) if address else None
