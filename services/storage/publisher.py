"""What a storage service tells the cluster: locality and bandwidths in Redis (through
`ClusterState`), fetch and eviction events on the bus."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Collection
from typing import Literal

from redis.exceptions import RedisError

from libs.cluster import ClusterState
from libs.protocol import Bus
from libs.protocol.events import (
    CopyQuarantinedEvent,
    EvictedEvent,
    FetchDoneEvent,
    FetchProgressEvent,
    StorageSkippedEvent,
)
from libs.protocol.state import NodeRecord

from .bandwidth import BandwidthEstimator, ProgressThrottle
from .lru import Refusal, TierCatalog, TierEntry
from .transfer import ProgressFn

log = logging.getLogger(__name__)

BandwidthTier = Literal["registry", "ssd", "dram"]


class NodePublisher:
    """Publishes one node's tiers. Redis failures are logged, never raised: the periodic
    `sync` repairs whatever a failed write left out."""

    def __init__(
        self, bus: Bus, state: ClusterState, node_id: str, source: str, min_sample_bytes: int
    ) -> None:
        self.bus = bus
        self.state = state
        self.node_id = node_id
        self.source = source
        self.bandwidth: dict[BandwidthTier, BandwidthEstimator] = {
            tier: BandwidthEstimator(min_bytes=min_sample_bytes)
            for tier in ("registry", "ssd", "dram")
        }
        # Every locality write reads the catalog under this lock, so the last write shows the
        # latest state even when a full `sync` and a single update interleave.
        self._lock = asyncio.Lock()

    async def locality(self, catalog: TierCatalog, model: str) -> None:
        async with self._lock:
            entry = catalog.get(model)
            try:
                if entry is None:
                    await self.state.remove_locality(self.node_id, catalog.name, model)
                else:
                    await self.state.set_locality(self.node_id, catalog.name, model, entry.bytes)
            except (RedisError, OSError) as exc:
                log.warning("locality of %s not published (the next sync will): %r", model, exc)

    async def sync(self, node: NodeRecord, catalogs: tuple[TierCatalog, ...]) -> None:
        """Make Redis show exactly what the tiers hold, and the bandwidth estimates."""
        try:
            async with self._lock:
                await self.state.register_node(node)
                published = await self.state.locality(self.node_id)
                for catalog in catalogs:
                    current = published.ssd if catalog.name == "ssd" else published.dram
                    want = {m: e.bytes for m, e in catalog.entries.items()}
                    for m in current.keys() - want.keys():
                        await self.state.remove_locality(self.node_id, catalog.name, m)
                    for m, nbytes in want.items():
                        # Written even when unchanged: the per-model index (`holders`) of a
                        # store written before it existed is filled in too.
                        await self.state.set_locality(self.node_id, catalog.name, m, nbytes)
            for tier in self.bandwidth:
                await self.publish_bandwidth(tier)
        except (RedisError, OSError) as exc:
            log.warning("could not publish the node's state to Redis: %r", exc)

    async def publish_bandwidth(self, tier: BandwidthTier) -> None:
        value = self.bandwidth[tier].value
        if value:
            try:
                await self.state.set_bandwidth(self.node_id, tier, value)
            except (RedisError, OSError) as exc:
                log.warning("%s bandwidth not published: %r", tier, exc)

    async def transfer_measured(self, tier: BandwidthTier, nbytes: int, seconds: float) -> None:
        if self.bandwidth[tier].add(nbytes, seconds):
            await self.publish_bandwidth(tier)

    def progress(self, model: str, tier: str, total: int) -> ProgressFn:
        """A callback for copy threads that emits throttled `FetchProgressEvent`s."""
        loop = asyncio.get_running_loop()
        throttle = ProgressThrottle(total)
        lock = threading.Lock()

        def report(done: int, total_now: int) -> None:
            with lock:
                if not throttle.due(done, time.monotonic()):
                    return
            event = FetchProgressEvent(
                source=self.source,
                node_id=self.node_id,
                model=model,
                tier=tier,
                bytes_done=done,
                bytes_total=total_now,
            )
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(lambda: self.bus.spawn(self.bus.emit(event)))

        return report

    async def fetched(
        self, model: str, tier: str, source_tier: str, nbytes: int, seconds: float
    ) -> None:
        await self.bus.emit(
            FetchDoneEvent(
                source=self.source,
                node_id=self.node_id,
                model=model,
                tier=tier,
                source_tier=source_tier,
                bytes=nbytes,
                seconds=seconds,
            )
        )

    async def evicted(self, entry: TierEntry, catalog: TierCatalog, reason: str) -> None:
        log.info("%s: evicted from the %s tier (%s)", entry.model, catalog.name, reason)
        await self.locality(catalog, entry.model)
        await self.bus.emit(
            EvictedEvent(
                source=self.source,
                node_id=self.node_id,
                model=entry.model,
                tier=catalog.name,
                bytes=entry.bytes,
                reason=reason,
            )
        )

    async def quarantined(
        self,
        model: str,
        tier: str,
        *,
        file: str,
        offset: int | None,
        reason: str,
        reporter: str,
    ) -> None:
        log.warning(
            "%s: %s copy quarantined (%s%s, found by %s): %s",
            model,
            tier,
            file or "-",
            "" if offset is None else f" @ {offset}",
            reporter or "this service",
            reason,
        )
        await self.bus.emit(
            CopyQuarantinedEvent(
                source=self.source,
                node_id=self.node_id,
                model=model,
                tier=tier,
                file=file,
                offset=offset,
                reason=reason,
                reporter=reporter or self.source,
            )
        )

    async def skipped(
        self,
        model: str,
        catalog: TierCatalog,
        nbytes: int,
        reason: Refusal,
        pinned: Collection[str],
    ) -> None:
        held = sorted(m for m in pinned if m in catalog.entries)
        log.info(
            "%s: no room in the %s tier (%s; pinned: %s); not copied there",
            model,
            catalog.name,
            reason,
            ", ".join(held) or "-",
        )
        await self.bus.emit(
            StorageSkippedEvent(
                source=self.source,
                node_id=self.node_id,
                model=model,
                tier=catalog.name,
                bytes=nbytes,
                reason=reason,
                pinned=held,
            )
        )
