"""A hollow node's storage service: the real catalogs, LRU policy and publisher over tiers
that hold nothing; copies take the time their bytes would take at the node's bandwidths."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import ClassVar, Literal

from redis.exceptions import RedisError

from libs.cluster import ClusterState
from libs.common.service import Service, ServiceKind
from libs.common.settings import CommonSettings
from libs.protocol import Route, route
from libs.protocol.endpoints import STORAGE_ENSURE, STORAGE_EVICT
from libs.protocol.errors import ConflictError, StorageFullError
from libs.protocol.messages import EnsureReply, EnsureRequest, EvictReply, EvictRequest, Tier
from libs.protocol.state import NodeRecord
from services.storage.concurrency import KeyedLocks
from services.storage.lru import TierCatalog, TierEntry, refusal_reason
from services.storage.publisher import NodePublisher

from .sim import GB, NodeSpec, checkpoint_bytes

log = logging.getLogger(__name__)

# As the real service's SLLM_LOCALITY_REFRESH_INTERVAL and SLLM_BANDWIDTH_MIN_SAMPLE_MB.
REFRESH_S = 30.0
MIN_SAMPLE_BYTES = 64 << 20

Served = tuple[TierEntry, Literal["dram", "ssd"], Tier]


class HollowStorage(Service):
    """Answers ``ensure`` and ``evict`` like `services.storage.app.StorageService`."""

    kind: ClassVar[ServiceKind] = "storage"

    def __init__(self, settings: CommonSettings, node_id: str, spec: NodeSpec) -> None:
        super().__init__(settings, instance_id=f"storage-{node_id}", node_id=node_id)
        self.spec = spec
        root = Path("/hollow") / node_id
        self.ssd = TierCatalog("ssd", root / "ssd", int(spec.ssd_capacity_gb * GB))
        self.dram = TierCatalog("dram", root / "dram", int(spec.dram_capacity_gb * GB))
        self.locks = KeyedLocks()  # per model, as `TierManager.locks`
        self.promotions = KeyedLocks()

    def routes(self) -> list[Route]:
        return [
            *super().routes(),
            route(STORAGE_ENSURE, self.ensure, node_id=self.node_id),
            route(STORAGE_EVICT, self.evict, node_id=self.node_id),
        ]

    async def on_start(self) -> None:
        self.state = ClusterState(self.redis, self.keys)
        self.publisher = NodePublisher(
            self.bus, self.state, self.node_id, self.instance_id, min_sample_bytes=MIN_SAMPLE_BYTES
        )
        for tier in ("registry", "ssd", "dram"):
            self.publisher.bandwidth[tier].seed(self.spec.bandwidth(tier))
        await self._sync()
        self.tasks.loop("refresh", self._refresh)

    async def on_store_reset(self) -> None:
        await self._sync()

    async def _sync(self) -> None:
        node = NodeRecord(
            node_id=self.node_id,
            ssd_dir=str(self.ssd.root),
            dram_dir=str(self.dram.root),
            dram_capacity_bytes=self.dram.capacity or 0,
        )
        await self.publisher.sync(node, (self.ssd, self.dram))

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            await self._sync()

    # --- handlers --------------------------------------------------------------------------

    async def ensure(self, req: EnsureRequest) -> EnsureReply:
        t0 = time.monotonic()
        async with self.locks.hold(req.model):
            entry, tier, source = await self._ssd_or_better(req.model, req.checkpoint_uri)
        if req.tier == "dram" and tier == "ssd":
            async with self.promotions.hold(req.model):
                hit = self.dram.get(req.model)
                promoted = hit or await self._copy(self.dram, entry, "ssd")
                if promoted is not None:
                    entry, tier = promoted, "dram"
        return EnsureReply(
            model=req.model,
            path=str(entry.path),
            tier=tier,
            source_tier=source,
            bytes=entry.bytes,
            seconds=time.monotonic() - t0,
        )

    async def evict(self, req: EvictRequest) -> EvictReply:
        async with self.locks.hold(req.model), self.promotions.hold(req.model):
            in_use = await self._in_use()
            if in_use is None or req.model in in_use:
                raise ConflictError(f"{req.model} is in use on this node")
            evicted = await self._evict(self.dram, req.model, "requested")
            if req.tier == "ssd":
                evicted = await self._evict(self.ssd, req.model, "requested") or evicted
        return EvictReply(model=req.model, evicted=evicted)

    # --- tiers -----------------------------------------------------------------------------

    async def _ssd_or_better(self, model: str, uri: str) -> Served:
        hit = self.dram.get(model)
        if hit is not None and hit.uri == uri:
            self.dram.touch(model)
            self.ssd.touch(model)
            return hit, "dram", "dram"
        ssd = self.ssd.get(model)
        if ssd is not None and ssd.uri == uri:
            self.ssd.touch(model)
            return ssd, "ssd", "ssd"
        wanted = TierEntry(model, self.ssd.root / model, checkpoint_bytes(uri), uri)
        fetched = await self._copy(self.ssd, wanted, "registry")
        if fetched is None:
            raise StorageFullError(f"ssd tier cannot hold {model} ({wanted.bytes} bytes)")
        return fetched, "ssd", "registry"

    async def _copy(
        self, catalog: TierCatalog, src: TierEntry, source: Literal["registry", "ssd"]
    ) -> TierEntry | None:
        """``src`` copied into ``catalog`` at ``source``'s bandwidth, LRU victims evicted
        first (the real `plan_eviction`); None when no room can be made."""
        need = src.bytes
        in_use = await self._in_use()
        held = in_use if in_use is not None else set(catalog.entries)
        pinned = (held | self.locks.busy() | self.promotions.busy()) - {src.model}
        victims = catalog.plan(need, pinned=pinned)
        if victims is None:
            reason = refusal_reason(catalog.capacity, need)
            await self.publisher.skipped(src.model, catalog, need, reason, pinned)
            return None
        taken = [e for v in victims if (e := catalog.pop(v)) is not None]
        if catalog is self.ssd:  # an SSD victim takes its DRAM copy along
            taken_dram = [e for v in victims if (e := self.dram.pop(v)) is not None]
        else:
            taken_dram = []
        catalog.reserve(need)
        try:
            for e in taken:
                await self.publisher.evicted(e, catalog, "lru")
            for e in taken_dram:
                await self.publisher.evicted(e, self.dram, "lru")
            seconds = need / self.spec.bandwidth(source)
            await asyncio.sleep(seconds)
        finally:
            catalog.release(need)
        entry = catalog.add(TierEntry(src.model, catalog.root / src.model, need, src.uri))
        await self.publisher.locality(catalog, src.model)
        await self.publisher.transfer_measured(source, need, seconds)
        await self.publisher.fetched(src.model, catalog.name, source, need, seconds)
        return entry

    async def _evict(self, catalog: TierCatalog, model: str, reason: str) -> bool:
        entry = catalog.pop(model)
        if entry is None:
            return False
        await self.publisher.evicted(entry, catalog, reason)
        return True

    async def _in_use(self) -> set[str] | None:
        try:
            return await self.state.models_in_use(self.node_id)
        except (RedisError, OSError) as exc:
            log.warning("cannot read the instances on this node (evicting nothing): %r", exc)
            return None
