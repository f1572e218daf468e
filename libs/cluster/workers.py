"""Workers and the instances they host in the cluster state: registrations, instance records,
the reservation of a worker for an instance, and the repair of records that contradict each other.

Workers are hashes so that reserving one is a single atomic script: two schedulers can never
hand out the same worker; freeing a worker and deleting a record happen together too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from libs.protocol.keys import Keys
from libs.protocol.schema import decode_json, encode_json
from libs.protocol.state import InstanceRecord, WorkerRecord

from .records import Read, RedisRecords, text

# Instances in these states hold their checkpoint (read, mapped or about to be): its tier
# copies on their node must stay.
IN_USE_STATUSES = frozenset({"loading", "ready", "stopping"})
# A repair checks again this often when the records it watches change under it.
REPAIR_ATTEMPTS = 5

# KEYS[1] = worker hash; ARGV[1] = instance id. Take the worker only if it exists and is free;
# 0 when not, else its epoch + 1 (which registration of the worker the instance belongs to).
# Idempotent: a worker the instance already holds is a success, so a caller that retries after
# an error whose outcome it could not know (a connection lost in a Valkey failover) does not
# take its own reservation for someone else's.
_RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = redis.call('HGET', KEYS[1], 'instance_id')
if cur and cur ~= '' and cur ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'instance_id', ARGV[1])
return (tonumber(redis.call('HGET', KEYS[1], 'epoch')) or 0) + 1
"""

# Free the worker only if it still holds this instance (a stale release must not free a
# worker that has since been given to someone else).
_RELEASE = """
if redis.call('HGET', KEYS[1], 'instance_id') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'instance_id', '')
  return 1
end
return 0
"""

# KEYS[1] = instance record, KEYS[2] = the model's instance set, KEYS[3] = its worker hash;
# ARGV[1] = instance id. Delete the record only if the worker no longer holds the instance.
_FORGET_ORPHAN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[3], 'instance_id') == ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS[1] = instance record, KEYS[2] = the model's instance set, KEYS[3] = its worker hash;
# ARGV[1] = instance id. Delete the record and free the worker if it still holds the instance,
# in one step: nobody sees the record gone and the worker still taken.
_RETIRE = """
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[3], 'instance_id') == ARGV[1] then
  redis.call('HSET', KEYS[3], 'instance_id', '')
  return 1
end
return 0
"""


def worker_record(worker_id: str, fields: dict[Any, Any], alive: Any) -> WorkerRecord | None:
    """A worker hash (as Redis returns it) as a record; None if the worker is not registered."""
    if not fields:
        return None
    f = {text(k): text(v) for k, v in fields.items()}
    return WorkerRecord(
        worker_id=worker_id,
        node_id=f.get("node_id", ""),
        device=f.get("device", ""),
        instance_id=f.get("instance_id", ""),
        alive=bool(alive),
        epoch=int(f.get("epoch") or 0),
    )


class Workers(RedisRecords):
    """Worker registrations, instance records and reservations, kept consistent."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        super().__init__(redis, keys)
        self._reserve = redis.register_script(_RESERVE)
        self._release = redis.register_script(_RELEASE)
        self._forget_orphan = redis.register_script(_FORGET_ORPHAN)
        self._retire = redis.register_script(_RETIRE)

    # --- instances --------------------------------------------------------------------------

    async def put_instance(self, rec: InstanceRecord) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.instance(rec.instance_id), encode_json(rec))
            pipe.sadd(self.keys.model_instances(rec.model), rec.instance_id)
            await pipe.execute()

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        return await self._get(self.keys.instance(instance_id), InstanceRecord)

    async def update_instance(self, instance_id: str, **changes: Any) -> InstanceRecord | None:
        """Change fields of an instance record; None if it no longer exists."""
        rec = await self.get_instance(instance_id)
        if rec is None:
            return None
        rec = InstanceRecord.model_validate({**rec.model_dump(), **changes})
        await self.redis.set(self.keys.instance(instance_id), encode_json(rec), xx=True)
        return rec

    async def instances(self, model: str) -> list[InstanceRecord]:
        ids = sorted(text(i) for i in await self.redis.smembers(self.keys.model_instances(model)))
        return await self._get_many((self.keys.instance(i) for i in ids), InstanceRecord)

    async def instances_of(self, models: Sequence[str]) -> dict[str, list[InstanceRecord]]:
        """`instances` of each model, in two round trips whatever their number."""
        sets = await self._read_many([("set", self.keys.model_instances(m)) for m in models])
        ids = {m: sorted(text(i) for i in members) for m, members in zip(models, sets, strict=True)}
        every = [i for m in models for i in ids[m]]
        records = await self._get_many((self.keys.instance(i) for i in every), InstanceRecord)
        by_id = {r.instance_id: r for r in records}
        return {m: [by_id[i] for i in ids[m] if i in by_id] for m in models}

    async def delete_instance(self, rec: InstanceRecord) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.instance(rec.instance_id))
            pipe.srem(self.keys.model_instances(rec.model), rec.instance_id)
            await pipe.execute()

    async def retire_instance(self, rec: InstanceRecord) -> bool:
        """Delete the instance's record and free its worker (if the worker still holds it),
        atomically. True if the worker was freed."""
        keys = [
            self.keys.instance(rec.instance_id),
            self.keys.model_instances(rec.model),
            self.keys.worker(rec.worker_id),
        ]
        return bool(await self._retire(keys=keys, args=[rec.instance_id]))

    async def forget_orphaned_instance(self, rec: InstanceRecord) -> bool:
        """Delete the record of an instance whose worker no longer holds it (the worker
        restarted, which frees it, or was given to another instance); atomic, so that it never
        deletes an instance its worker holds. True if the record was deleted."""
        keys = [
            self.keys.instance(rec.instance_id),
            self.keys.model_instances(rec.model),
            self.keys.worker(rec.worker_id),
        ]
        return bool(await self._forget_orphan(keys=keys, args=[rec.instance_id]))

    # --- workers ----------------------------------------------------------------------------

    async def register_worker(self, worker_id: str, node_id: str, device: str) -> int:
        """(Re-)register; a restarted worker comes back free. Returns its new epoch."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.keys.worker(worker_id),
                mapping={"node_id": node_id, "device": device, "instance_id": ""},
            )
            pipe.hincrby(self.keys.worker(worker_id), "epoch", 1)
            pipe.sadd(self.keys.workers, worker_id)
            _, epoch, _ = await pipe.execute()
        return int(epoch)

    async def restore_worker(
        self, worker: WorkerRecord, instance: InstanceRecord | None = None
    ) -> None:
        """Write back a worker's registration as it stands (epoch and reservation kept) and
        the record of the instance it hosts: what a worker re-publishes when the store lost
        its data (`store_epoch` changed)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.keys.worker(worker.worker_id),
                mapping={
                    "node_id": worker.node_id,
                    "device": worker.device,
                    "instance_id": worker.instance_id,
                    "epoch": worker.epoch,
                },
            )
            pipe.sadd(self.keys.workers, worker.worker_id)
            if instance is not None:
                pipe.set(self.keys.instance(instance.instance_id), encode_json(instance))
                pipe.sadd(self.keys.model_instances(instance.model), instance.instance_id)
            await pipe.execute()

    async def unregister_worker(self, worker_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.worker(worker_id))
            pipe.srem(self.keys.workers, worker_id)
            await pipe.execute()

    async def workers(self) -> list[WorkerRecord]:
        ids = sorted(text(w) for w in await self.redis.smembers(self.keys.workers))
        reads: list[tuple[Read, str]] = []
        for w in ids:
            reads += [("hash", self.keys.worker(w)), ("exists", self.keys.alive("worker", w))]
        results = await self._read_many(reads)
        records = (
            worker_record(w, fields, alive)
            for w, fields, alive in zip(ids, results[0::2], results[1::2], strict=True)
        )
        return [r for r in records if r is not None]

    async def get_worker(self, worker_id: str) -> WorkerRecord | None:
        """One worker's record (``instance_id``: its reservation); None if not registered."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.worker(worker_id))
            pipe.exists(self.keys.alive("worker", worker_id))
            fields, alive = await pipe.execute()
        return worker_record(worker_id, fields, alive)

    async def reserve_worker(self, worker_id: str, instance_id: str) -> bool:
        """Atomically give a free worker to ``instance_id``; False if it is taken or gone."""
        return await self.reserve(worker_id, instance_id) is not None

    async def reserve(self, worker_id: str, instance_id: str) -> int | None:
        """`reserve_worker`, returning the worker's epoch (None: not reserved), for the
        instance record: a record whose epoch is not its worker's is from before a restart."""
        got = int(await self._reserve(keys=[self.keys.worker(worker_id)], args=[instance_id]))
        return got - 1 if got else None

    async def release_worker(self, worker_id: str, instance_id: str) -> bool:
        """Free the worker if it still holds ``instance_id``."""
        return bool(await self._release(keys=[self.keys.worker(worker_id)], args=[instance_id]))

    # --- checkpoints in use ---------------------------------------------------------------------

    async def models_in_use(self, node_id: str) -> set[str]:
        """Models that instances on ``node_id``'s workers are loading, serving or stopping."""
        held = [w.instance_id for w in await self.workers() if w.node_id == node_id]
        records = await self._get_many((self.keys.instance(i) for i in held if i), InstanceRecord)
        return {r.model for r in records if r.status in IN_USE_STATUSES}

    # --- reconciliation (the scheduler's repairs of inconsistent records) -------------------

    async def all_instances(self) -> list[InstanceRecord]:
        """Every instance record, of deployed models and of deleted ones alike."""
        keys = [
            text(k)
            async for k in self.redis.scan_iter(match=self.keys.model_instances("*"), count=1000)
        ]
        sets = await self._read_many([("set", k) for k in keys])
        ids = sorted({text(i) for members in sets for i in members})
        return await self._get_many((self.keys.instance(i) for i in ids), InstanceRecord)

    async def repair(
        self,
        worker_id: str,
        instance_id: str,
        *,
        free_worker: bool,
        delete_record: bool,
        still: Callable[[WorkerRecord | None, InstanceRecord | None], bool],
    ) -> bool:
        """Free ``worker_id`` (if it holds ``instance_id``) and/or delete the instance's record,
        only if ``still(worker, record)`` holds for them as they are now. Atomic: the worker,
        its liveness and the record are WATCHed from the check to the write, and a write in
        between makes it check again. True if repaired."""
        wkey, ikey = self.keys.worker(worker_id), self.keys.instance(instance_id)
        akey = self.keys.alive("worker", worker_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(REPAIR_ATTEMPTS):
                try:
                    await pipe.watch(wkey, akey, ikey)
                    fields = await pipe.hgetall(wkey)
                    alive = await pipe.exists(akey)
                    raw = await pipe.get(ikey)
                    worker = worker_record(worker_id, fields, alive)
                    record = None if raw is None else decode_json(raw, InstanceRecord)
                    if not still(worker, record):
                        return False
                    pipe.multi()  # type: ignore[no-untyped-call]  # (redis-py leaves it untyped)
                    if free_worker and worker is not None and worker.instance_id == instance_id:
                        pipe.hset(wkey, "instance_id", "")
                    if delete_record and record is not None:
                        pipe.delete(ikey)
                        pipe.srem(self.keys.model_instances(record.model), instance_id)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue
        return False
