"""The base of `ClusterState`'s parts: one Redis client, the key names, JSON records read one
or many at a time, and many hashes, lists and flags read in one round trip (`_read_many`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis

from libs.protocol.keys import Keys
from libs.protocol.schema import Message, decode_json

M = TypeVar("M", bound=Message)

# How `_read_many` reads a key: "hash" (HGETALL, as a dict), "list" (LRANGE 0 -1), "set"
# (SMEMBERS), "exists".
Read = Literal["hash", "list", "set", "exists"]
# KEYS: the keys; ARGV[i]: how to read KEYS[i]. One command and one reply for all of them: a
# pipeline costs a reply each, and redis-py spends some 80 us of Python on every reply (a
# timeout set up and torn down, the parse), which at 1,000 workers is most of a snapshot.
_READ_MANY = """
local out = {}
for i, key in ipairs(KEYS) do
  local how = ARGV[i]
  if how == 'h' then out[i] = redis.call('HGETALL', key)
  elseif how == 'l' then out[i] = redis.call('LRANGE', key, 0, -1)
  elseif how == 's' then out[i] = redis.call('SMEMBERS', key)
  else out[i] = redis.call('EXISTS', key) end
end
return out
"""
_READ_CODE = {"hash": "h", "list": "l", "set": "s", "exists": "e"}
# Keys per `_READ_MANY` call: bounds how long one call holds the store (a few ms).
READ_MANY_BATCH = 2048


def text(value: Any) -> str:
    """A Redis reply (bytes, or a number) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisRecords:
    """Typed reads of JSON records from Redis; each part of `ClusterState` builds on it."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._read_script = redis.register_script(_READ_MANY)

    async def _read_many(self, reads: Sequence[tuple[Read, str]]) -> list[Any]:
        """Each ``(how, key)`` read, in order: a dict of bytes for a hash (empty: no such
        key), a list of bytes for a list or a set, 0/1 for "exists"."""
        out: list[Any] = []
        for at in range(0, len(reads), READ_MANY_BATCH):
            batch = reads[at : at + READ_MANY_BATCH]
            replies = await self._read_script(
                keys=[key for _, key in batch], args=[_READ_CODE[how] for how, _ in batch]
            )
            for (how, _), reply in zip(batch, replies, strict=True):
                out.append(
                    dict(zip(reply[0::2], reply[1::2], strict=True)) if how == "hash" else reply
                )
        return out

    async def _get(self, key: str, cls: type[M]) -> M | None:
        raw = await self.redis.get(key)
        return None if raw is None else decode_json(raw, cls)

    async def _get_many(self, keys: Iterable[str], cls: type[M]) -> list[M]:
        keys = list(keys)
        if not keys:
            return []
        return [decode_json(raw, cls) for raw in await self.redis.mget(keys) if raw is not None]
