"""`ClusterState`: every read and write of cluster state in Redis goes through here.

Records are JSON (readable with ``redis-cli``); workers are hashes so that reserving one is a
single atomic script: two schedulers can never hand out the same worker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis

from libs.protocol.keys import Keys
from libs.protocol.messages import DeploymentSpec
from libs.protocol.schema import Message, decode_json, encode_json
from libs.protocol.state import InstanceRecord, Locality, NodeRecord, WorkerRecord

M = TypeVar("M", bound=Message)

StorageTier = Literal["registry", "ssd", "dram"]

# Instances in these states hold their checkpoint (read, mapped or about to be): its tier
# copies on their node must stay.
IN_USE_STATUSES = frozenset({"loading", "ready", "stopping"})


@dataclass(frozen=True)
class EstimateRecord:
    """A placement's estimate, kept until its instance reports the real load."""

    model: str
    node_id: str
    tier: str
    seconds: float


# KEYS[1] = worker hash; ARGV[1] = instance id. Take the worker only if it exists and is free;
# 0 when not, else its epoch + 1 (which registration of the worker the instance belongs to).
_RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = redis.call('HGET', KEYS[1], 'instance_id')
if cur and cur ~= '' then return 0 end
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


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _worker_record(worker_id: str, fields: dict[Any, Any], alive: Any) -> WorkerRecord | None:
    """A worker hash (as Redis returns it) as a record; None if the worker is not registered."""
    if not fields:
        return None
    f = {_s(k): _s(v) for k, v in fields.items()}
    return WorkerRecord(
        worker_id=worker_id,
        node_id=f.get("node_id", ""),
        device=f.get("device", ""),
        instance_id=f.get("instance_id", ""),
        alive=bool(alive),
        epoch=int(f.get("epoch") or 0),
    )


class ClusterState:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._reserve = redis.register_script(_RESERVE)
        self._release = redis.register_script(_RELEASE)
        self._lease = redis.register_script(_LEASE)
        self._unlease = redis.register_script(_UNLEASE)
        self._forget_orphan = redis.register_script(_FORGET_ORPHAN)
        self._retire = redis.register_script(_RETIRE)

    # --- the store's own epoch ----------------------------------------------------------------

    async def store_epoch(self) -> str:
        """An id the store keeps for as long as it keeps its data: set by whoever asks first,
        so a Redis that restarted empty (or was flushed) answers a new one, and every service
        that sees it change re-publishes what it owns."""
        fresh = uuid.uuid4().hex
        old = await self.redis.set(self.keys.store_epoch, fresh, nx=True, get=True)
        return fresh if old is None else _s(old)

    # --- leases -----------------------------------------------------------------------------

    async def hold_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease ``name`` for ``ttl_s`` seconds; False while another holds it."""
        ms = max(int(ttl_s * 1000), 1)
        return bool(await self._lease(keys=[self.keys.lease(name)], args=[holder, ms]))

    async def drop_lease(self, name: str, holder: str) -> None:
        """Give the lease up at once if ``holder`` has it (a clean stop: no wait for the TTL)."""
        await self._unlease(keys=[self.keys.lease(name)], args=[holder])

    async def _get(self, key: str, cls: type[M]) -> M | None:
        raw = await self.redis.get(key)
        return None if raw is None else decode_json(raw, cls)

    async def _get_many(self, keys: Iterable[str], cls: type[M]) -> list[M]:
        keys = list(keys)
        if not keys:
            return []
        return [decode_json(raw, cls) for raw in await self.redis.mget(keys) if raw is not None]

    # --- deployments ------------------------------------------------------------------------

    async def put_deployment(self, spec: DeploymentSpec) -> bool:
        """Create or replace; returns True if it was created."""
        if not spec.created_at:
            spec = spec.model_copy(update={"created_at": time.time()})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.deployment(spec.name), encode_json(spec))
            pipe.sadd(self.keys.deployments, spec.name)
            _, added = await pipe.execute()
        return bool(added)

    async def get_deployment(self, name: str) -> DeploymentSpec | None:
        return await self._get(self.keys.deployment(name), DeploymentSpec)

    async def deployments(self) -> list[DeploymentSpec]:
        names = sorted(_s(n) for n in await self.redis.smembers(self.keys.deployments))
        return await self._get_many((self.keys.deployment(n) for n in names), DeploymentSpec)

    async def delete_deployment(self, name: str) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.deployment(name))
            pipe.srem(self.keys.deployments, name)
            deleted, _ = await pipe.execute()
        return bool(deleted)

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
        ids = sorted(_s(i) for i in await self.redis.smembers(self.keys.model_instances(model)))
        return await self._get_many((self.keys.instance(i) for i in ids), InstanceRecord)

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
        ids = sorted(_s(w) for w in await self.redis.smembers(self.keys.workers))
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for w in ids:
                pipe.hgetall(self.keys.worker(w))
                pipe.exists(self.keys.alive("worker", w))
            results = await pipe.execute()
        records = (
            _worker_record(w, fields, alive)
            for w, fields, alive in zip(ids, results[0::2], results[1::2], strict=True)
        )
        return [r for r in records if r is not None]

    async def get_worker(self, worker_id: str) -> WorkerRecord | None:
        """One worker's record (``instance_id``: its reservation); None if not registered."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.worker(worker_id))
            pipe.exists(self.keys.alive("worker", worker_id))
            fields, alive = await pipe.execute()
        return _worker_record(worker_id, fields, alive)

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

    # --- nodes, locality, bandwidth -----------------------------------------------------------

    async def register_node(self, node: NodeRecord) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.node(node.node_id), encode_json(node))
            pipe.sadd(self.keys.nodes, node.node_id)
            await pipe.execute()

    async def nodes(self) -> list[NodeRecord]:
        ids = sorted(_s(n) for n in await self.redis.smembers(self.keys.nodes))
        return await self._get_many((self.keys.node(n) for n in ids), NodeRecord)

    async def set_locality(self, node_id: str, tier: StorageTier, model: str, nbytes: int) -> None:
        await self.redis.hset(self.keys.locality(node_id, tier), model, nbytes)

    async def remove_locality(self, node_id: str, tier: StorageTier, model: str) -> None:
        await self.redis.hdel(self.keys.locality(node_id, tier), model)

    async def set_bandwidth(self, node_id: str, tier: StorageTier, bytes_per_s: float) -> None:
        await self.redis.hset(self.keys.bandwidth(node_id), tier, repr(float(bytes_per_s)))

    async def locality(self, node_id: str) -> Locality:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.locality(node_id, "dram"))
            pipe.hgetall(self.keys.locality(node_id, "ssd"))
            pipe.hgetall(self.keys.bandwidth(node_id))
            dram, ssd, bw = await pipe.execute()
        return Locality(
            node_id=node_id,
            dram={_s(k): int(v) for k, v in dram.items()},
            ssd={_s(k): int(v) for k, v in ssd.items()},
            bandwidth={
                t: float(bw[t.encode()]) for t in ("registry", "ssd", "dram") if t.encode() in bw
            },
        )

    # --- checkpoints in use ---------------------------------------------------------------------

    async def models_in_use(self, node_id: str) -> set[str]:
        """Models that instances on ``node_id``'s workers are loading, serving or stopping."""
        held = [w.instance_id for w in await self.workers() if w.node_id == node_id]
        records = await self._get_many((self.keys.instance(i) for i in held if i), InstanceRecord)
        return {r.model for r in records if r.status in IN_USE_STATUSES}

    # --- calibration and estimate errors ------------------------------------------------------

    async def add_load_sample(
        self, node_id: str, tier: str, sample: tuple[int, float, float], *, keep: int
    ) -> None:
        """Record one real load as (bytes, data seconds, fixed seconds); newest first, only
        the last ``keep`` stay."""
        key = self.keys.load_samples(node_id, tier)
        nbytes, data_s, fixed_s = sample
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(key, f"{int(nbytes)}:{float(data_s)!r}:{float(fixed_s)!r}")
            pipe.ltrim(key, 0, max(keep, 1) - 1)
            await pipe.execute()

    async def load_samples(
        self, node_ids: Sequence[str], tiers: Sequence[str]
    ) -> dict[tuple[str, str], list[tuple[int, float, float]]]:
        """Recorded loads per (node, tier) as (bytes, data seconds, fixed seconds)."""
        pairs = [(n, t) for n in node_ids for t in tiers]
        if not pairs:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for n, t in pairs:
                pipe.lrange(self.keys.load_samples(n, t), 0, -1)
            results = await pipe.execute()
        out: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
        for pair, raw in zip(pairs, results, strict=True):
            samples = []
            for item in raw:
                try:
                    nbytes, data_s, fixed_s = _s(item).split(":")
                    samples.append((int(nbytes), float(data_s), float(fixed_s)))
                except ValueError:
                    continue  # not ours: ignore rather than fail every placement
            if samples:
                out[pair] = samples
        return out

    async def put_estimate(self, instance_id: str, rec: EstimateRecord, *, ttl_s: float) -> None:
        key = self.keys.estimate(instance_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "model": rec.model,
                    "node_id": rec.node_id,
                    "tier": rec.tier,
                    "seconds": repr(float(rec.seconds)),
                },
            )
            pipe.expire(key, max(1, int(ttl_s)))
            await pipe.execute()

    async def pop_estimate(self, instance_id: str) -> EstimateRecord | None:
        """Take the estimate (atomically: of several schedulers, one gets it)."""
        key = self.keys.estimate(instance_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.delete(key)
            fields, _ = await pipe.execute()
        if not fields:
            return None
        f = {_s(k): _s(v) for k, v in fields.items()}
        try:
            return EstimateRecord(f["model"], f["node_id"], f["tier"], float(f["seconds"]))
        except (KeyError, ValueError):
            return None

    async def add_estimate_error(self, ratio: float, *, keep: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(self.keys.estimate_errors, repr(float(ratio)))
            pipe.ltrim(self.keys.estimate_errors, 0, max(keep, 1) - 1)
            await pipe.execute()

    async def estimate_errors(self) -> list[float]:
        """Recent relative estimate errors, newest first."""
        out = []
        for item in await self.redis.lrange(self.keys.estimate_errors, 0, -1):
            try:
                out.append(float(_s(item)))
            except ValueError:
                continue
        return out

    async def next_placement_turn(self) -> int:
        """A cluster-wide counter (round-robin placement): 1, 2, 3..."""
        return int(await self.redis.incr(self.keys.placement_turn))
