"""What placement learns from, in the cluster state: real loads per (node, tier) for the
calibration, the estimates it made until their instances report, the estimates' relative errors,
and the round-robin placement turn."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .records import RedisRecords, text


@dataclass(frozen=True)
class EstimateRecord:
    """A placement's estimate, kept until its instance reports the real load."""

    model: str
    node_id: str
    tier: str
    seconds: float


class Estimates(RedisRecords):
    """Load samples, estimates and their errors, the placement turn."""

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
        results = await self._read_many([("list", self.keys.load_samples(n, t)) for n, t in pairs])
        out: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
        for pair, raw in zip(pairs, results, strict=True):
            samples = []
            for item in raw:
                try:
                    nbytes, data_s, fixed_s = text(item).split(":")
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
        f = {text(k): text(v) for k, v in fields.items()}
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
                out.append(float(text(item)))
            except ValueError:
                continue
        return out

    async def next_placement_turn(self) -> int:
        """A cluster-wide counter (round-robin placement): 1, 2, 3..."""
        return int(await self.redis.incr(self.keys.placement_turn))
