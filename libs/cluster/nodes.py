"""Nodes in the cluster state: their records, which checkpoints each holds in which storage tier
(locality), and each tier's measured read bandwidth."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from libs.protocol.schema import encode_json
from libs.protocol.state import Locality, NodeRecord

from .records import Read, RedisRecords, text

StorageTier = Literal["registry", "ssd", "dram"]


class Nodes(RedisRecords):
    """Node records, locality and bandwidth."""

    async def register_node(self, node: NodeRecord) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.node(node.node_id), encode_json(node))
            pipe.sadd(self.keys.nodes, node.node_id)
            await pipe.execute()

    async def nodes(self) -> list[NodeRecord]:
        ids = sorted(text(n) for n in await self.redis.smembers(self.keys.nodes))
        return await self._get_many((self.keys.node(n) for n in ids), NodeRecord)

    async def set_locality(self, node_id: str, tier: StorageTier, model: str, nbytes: int) -> None:
        """``node_id``'s ``tier`` holds ``model`` (both indexes, `locality` and `holders`)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.locality(node_id, tier), model, nbytes)
            pipe.hset(self.keys.holders(tier, model), node_id, nbytes)
            await pipe.execute()

    async def remove_locality(self, node_id: str, tier: StorageTier, model: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.locality(node_id, tier), model)
            pipe.hdel(self.keys.holders(tier, model), node_id)
            await pipe.execute()

    async def holders(self, model: str) -> dict[str, dict[str, int]]:
        """The nodes holding ``model``, per tier ("dram", "ssd"): node -> bytes."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.holders("dram", model))
            pipe.hgetall(self.keys.holders("ssd", model))
            dram, ssd = await pipe.execute()
        return {
            "dram": {text(k): int(v) for k, v in dram.items()},
            "ssd": {text(k): int(v) for k, v in ssd.items()},
        }

    async def set_bandwidth(self, node_id: str, tier: StorageTier, bytes_per_s: float) -> None:
        await self.redis.hset(self.keys.bandwidth(node_id), tier, repr(float(bytes_per_s)))

    async def locality(self, node_id: str) -> Locality:
        return (await self.localities([node_id]))[0]

    async def localities(self, node_ids: Sequence[str]) -> list[Locality]:
        """`locality` of each node, in one round trip."""
        reads: list[tuple[Read, str]] = []
        for n in node_ids:
            reads += [
                ("hash", self.keys.locality(n, "dram")),
                ("hash", self.keys.locality(n, "ssd")),
                ("hash", self.keys.bandwidth(n)),
            ]
        results = await self._read_many(reads)
        return [_locality(n, *results[3 * k : 3 * k + 3]) for k, n in enumerate(node_ids)]


def _locality(
    node_id: str, dram: dict[Any, Any], ssd: dict[Any, Any], bw: dict[Any, Any]
) -> Locality:
    return Locality(
        node_id=node_id,
        dram={text(k): int(v) for k, v in dram.items()},
        ssd={text(k): int(v) for k, v in ssd.items()},
        bandwidth={
            t: float(bw[t.encode()]) for t in ("registry", "ssd", "dram") if t.encode() in bw
        },
    )
