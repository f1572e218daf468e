"""What services coordinate through: the store's own epoch (a store that lost its data answers
a new one), leases (one holder at a time, for a TTL) and liveness (each service's heartbeat,
with the set of its kind's services that finds them)."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from libs.protocol.keys import Keys

from .records import RedisRecords, text

# KEYS[1] = lease key; ARGV[1] = holder, ARGV[2] = ttl ms. Take the lease if it is free or
# renew it if we hold it; 1 when we hold it afterwards.
_LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# Give the lease up only if we hold it.
_UNLEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Coordination(RedisRecords):
    """The store's epoch and leases."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        super().__init__(redis, keys)
        self._lease = redis.register_script(_LEASE)
        self._unlease = redis.register_script(_UNLEASE)

    async def store_epoch(self) -> str:
        """An id the store keeps for as long as it keeps its data: set by whoever asks first,
        so a Redis that restarted empty (or was flushed) answers a new one, and every service
        that sees it change re-publishes what it owns."""
        fresh = uuid.uuid4().hex
        old = await self.redis.set(self.keys.store_epoch, fresh, nx=True, get=True)
        return fresh if old is None else text(old)

    async def beat(self, kind: str, instance_id: str, info: bytes, ttl_ms: int) -> str:
        """A service's heartbeat: its liveness key (``info``, for ``ttl_ms``), its id in its
        kind's set (`live_services` finds it there), and the store's epoch (`store_epoch`),
        in one round trip. Returns the epoch."""
        fresh = uuid.uuid4().hex
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.alive(kind, instance_id), info, px=ttl_ms)
            pipe.sadd(self.keys.services(kind), instance_id)
            pipe.set(self.keys.store_epoch, fresh, nx=True, get=True)
            _, _, old = await pipe.execute()
        return fresh if old is None else text(old)

    async def forget_service(self, kind: str, instance_id: str) -> None:
        """A service that stops: its liveness key and its place in its kind's set go."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.alive(kind, instance_id))
            pipe.srem(self.keys.services(kind), instance_id)
            await pipe.execute()

    async def live_services(self, kind: str) -> dict[str, bytes | str]:
        """The heartbeats of ``kind``'s live services, by instance id; members of the set
        whose liveness key lapsed (killed) are pruned from it."""
        ids = sorted(text(i) for i in await self.redis.smembers(self.keys.services(kind)))
        if not ids:
            return {}
        beats = await self.redis.mget([self.keys.alive(kind, i) for i in ids])
        dead = [i for i, b in zip(ids, beats, strict=True) if b is None]
        if dead:
            await self.redis.srem(self.keys.services(kind), *dead)
        return {i: b for i, b in zip(ids, beats, strict=True) if b is not None}

    async def hold_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl_s`` seconds; False while another holds it."""
        ms = max(int(ttl_s * 1000), 1)
        return bool(await self._lease(keys=[self.keys.lease(name)], args=[holder, ms]))

    async def drop_lease(self, name: str, holder: str) -> None:
        """Give the lease up at once if ``holder`` has it (a clean stop: no wait for the TTL)."""
        await self._unlease(keys=[self.keys.lease(name)], args=[holder])
