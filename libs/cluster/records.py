"""The base of `ClusterState`'s parts: one Redis client, the key names, and JSON records read
one or many at a time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import redis.asyncio as aioredis

from libs.protocol.keys import Keys
from libs.protocol.schema import Message, decode_json

M = TypeVar("M", bound=Message)


def text(value: Any) -> str:
    """A Redis reply (bytes, or a number) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisRecords:
    """Typed reads of JSON records from Redis; each part of `ClusterState` builds on it."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def _get(self, key: str, cls: type[M]) -> M | None:
        raw = await self.redis.get(key)
        return None if raw is None else decode_json(raw, cls)

    async def _get_many(self, keys: Iterable[str], cls: type[M]) -> list[M]:
        keys = list(keys)
        if not keys:
            return []
        return [decode_json(raw, cls) for raw in await self.redis.mget(keys) if raw is not None]
