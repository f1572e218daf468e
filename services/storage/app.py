"""The storage service: one per node; owns the node's SSD and DRAM tier directories.

``ensure`` makes a model's checkpoint available in a tier (fetched from the registry into the
SSD tier, promoted from SSD into the DRAM tier with LRU eviction that never takes a copy a live
instance on this node uses); ``evict`` removes it; ``quarantine`` removes a copy that a reader
found damaged, once the claim checks out.
Locality and measured bandwidths go to Redis through `ClusterState`; every step is an event.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from pathlib import Path
from typing import ClassVar

from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from libs.cluster import ClusterState
from libs.common.service import Service, ServiceKind
from libs.protocol import Route, route
from libs.protocol.endpoints import (
    STORAGE_ENSURE,
    STORAGE_EVICT,
    STORAGE_INSPECT,
    STORAGE_QUARANTINE,
)
from libs.protocol.errors import BusTimeoutError, UnavailableError
from libs.protocol.messages import (
    EnsureReply,
    EnsureRequest,
    EvictReply,
    EvictRequest,
    InspectReply,
    InspectRequest,
    QuarantineReply,
    QuarantineRequest,
)
from libs.protocol.state import NodeRecord

from .adapter_check import inspect_adapter
from .concurrency import BlockingPool
from .inspect import inspect_source
from .lru import TierCatalog, TierEntry
from .metrics import StorageMetrics
from .probe import probe_read_bandwidth
from .publisher import NodePublisher
from .scan import Found, scan_tier
from .settings import StorageSettings
from .source_first import loadable_source
from .tiers import TierManager
from .uri import parse_registry_uri

log = logging.getLogger(__name__)


class StorageService(Service):
    kind: ClassVar[ServiceKind] = "storage"

    def __init__(self, settings: StorageSettings) -> None:
        super().__init__(
            settings,
            instance_id=settings.instance_id or f"storage-{settings.node_id}",
            node_id=settings.node_id,
        )
        self.storage_settings = settings
        self.allow = settings.allow_list()  # SLLM_REGISTRY_ALLOW
        self.ssd = TierCatalog("ssd", settings.ssd_dir.absolute(), settings.ssd_capacity_bytes)
        self.dram = TierCatalog("dram", settings.dram_dir.absolute(), settings.dram_capacity_bytes)
        self.pool = BlockingPool(settings.storage_io_threads, "storage-io")
        self.metrics = StorageMetrics()
        self.metrics.watch((self.ssd, self.dram))

    def metrics_registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def routes(self) -> list[Route]:
        return [
            *super().routes(),
            route(STORAGE_ENSURE, self.ensure, node_id=self.node_id),
            route(STORAGE_EVICT, self.evict, node_id=self.node_id),
            route(STORAGE_INSPECT, self.inspect),
            route(STORAGE_QUARANTINE, self.quarantine, node_id=self.node_id),
        ]

    # --- handlers --------------------------------------------------------------------------

    async def ensure(self, req: EnsureRequest) -> EnsureReply:
        source = parse_registry_uri(req.checkpoint_uri, self.allow)
        t0 = time.monotonic()
        limit = self.storage_settings.ensure_timeout
        if req.source_ok and req.tier == "ssd":
            nbytes = await loadable_source(self.tiers, self.pool, req.model, source, limit)
            # Load the source now; the copy comes with the worker's promotion after its load.
            if nbytes is not None:
                assert source.path is not None
                self.metrics.served("registry")
                return EnsureReply(
                    model=req.model,
                    path=str(source.path),
                    tier="ssd",
                    source_tier="registry",
                    bytes=nbytes,
                    seconds=time.monotonic() - t0,
                    hf_source=True,
                )
        try:
            async with asyncio.timeout(limit):
                entry, tier, source_tier = await self.tiers.ensure(req.model, source, req.tier)
                self.metrics.served(source_tier)
        except TimeoutError:
            raise BusTimeoutError(f"ensure {req.model}: not done within {limit:g}s") from None
        return EnsureReply(
            model=req.model,
            path=str(entry.path),
            tier=tier,
            source_tier=source_tier,
            bytes=entry.bytes,
            seconds=time.monotonic() - t0,
        )

    async def inspect(self, req: InspectRequest) -> InspectReply:
        """Check a deployment's checkpoint before it is stored (`inspect.inspect_source`)."""
        source = parse_registry_uri(req.checkpoint_uri, self.allow)
        base = parse_registry_uri(req.base_uri, self.allow) if req.base_uri else None
        limit = self.storage_settings.ensure_timeout
        wait = min(limit, 30.0)
        try:
            async with asyncio.timeout(limit):
                if req.base_uri:
                    return await self.pool.run(
                        lambda cancel: inspect_adapter(source, base, timeout=wait)
                    )
                return await self.pool.run(
                    lambda cancel: inspect_source(source, timeout=wait, task=req.task)
                )
        except TimeoutError:
            raise BusTimeoutError(f"checking {req.checkpoint_uri}: over {limit:g}s") from None

    async def evict(self, req: EvictRequest) -> EvictReply:
        limit = self.storage_settings.ensure_timeout
        try:
            async with asyncio.timeout(limit):
                evicted = await self.tiers.evict(req.model, req.tier)
        except TimeoutError:
            raise BusTimeoutError(f"evict {req.model}: not done within {limit:g}s") from None
        return EvictReply(model=req.model, evicted=evicted)

    async def quarantine(self, req: QuarantineRequest) -> QuarantineReply:
        limit = self.storage_settings.ensure_timeout
        try:
            async with asyncio.timeout(limit):
                removed, detail = await self.tiers.quarantine(req)
        except TimeoutError:
            raise BusTimeoutError(f"quarantine {req.model}: not done within {limit:g}s") from None
        return QuarantineReply(model=req.model, tier=req.tier, quarantined=removed, detail=detail)

    # --- life cycle ------------------------------------------------------------------------

    async def on_start(self) -> None:
        s = self.storage_settings
        state = ClusterState(self.redis, self.keys)
        self.publisher = NodePublisher(
            self.bus,
            state,
            self.node_id,
            self.instance_id,
            min_sample_bytes=int(self.storage_settings.bandwidth_min_sample_mb * (1 << 20)),
        )
        self.state = state
        self.tiers = TierManager(
            self.ssd,
            self.dram,
            self.publisher,
            self.pool,
            s.fetch_timeout,
            in_use=self._in_use,
            metrics=self.metrics,
        )
        for catalog in (self.ssd, self.dram):
            root = catalog.root
            for found in await self.pool.run(functools.partial(_scan, root)):
                catalog.add(TierEntry(found.model, found.path, found.bytes, found.uri))
            log.info("%s tier %s holds %d checkpoints", catalog.name, root, len(catalog.entries))
        try:
            measured = (await state.locality(self.node_id)).bandwidth
        except (RedisError, OSError) as exc:
            # A BusError makes `run_service` retry the start instead of dying.
            raise UnavailableError(f"cannot read this node's state from Redis: {exc!r}") from None
        for tier, bps in measured.items():
            self.publisher.bandwidth[tier].seed(bps)
        await self.publisher.sync(self._node_record(), (self.ssd, self.dram))
        unmeasured = [c for c in (self.ssd, self.dram) if c.name not in measured]
        if s.bandwidth_probe_mb > 0 and unmeasured:
            # One pass: a probe that crashed is logged, not repeated (the loads measure later).
            self.tasks.spawn(self._probe(unmeasured), "probe")
        self.tasks.loop("refresh", self._refresh)

    async def on_stop(self) -> None:
        # Copies in flight see their cancel flag when the bus cancels their handlers.
        self.pool.close()
        # (The background tasks are cancelled before this: `Service.stop`.)

    async def _in_use(self) -> set[str] | None:
        """Models live instances on this node use (their copies are pinned); None if unknown."""
        try:
            return await self.state.models_in_use(self.node_id)
        except (RedisError, OSError) as exc:
            log.warning("cannot read the instances on this node (evicting nothing): %r", exc)
            return None

    def _node_record(self) -> NodeRecord:
        return NodeRecord(
            node_id=self.node_id,
            ssd_dir=str(self.ssd.root),
            dram_dir=str(self.dram.root),
            dram_capacity_bytes=self.storage_settings.dram_capacity_bytes,
        )

    async def _probe(self, catalogs: list[TierCatalog]) -> None:
        """Measure tiers nobody measured yet, so the scheduler has numbers from the start."""
        nbytes = self.storage_settings.bandwidth_probe_mb << 20
        for catalog in catalogs:
            root = catalog.root
            try:
                bps = await self.pool.run(functools.partial(probe_read_bandwidth, root, nbytes))
            except (OSError, UnavailableError) as exc:
                log.warning("bandwidth probe of the %s tier failed: %r", catalog.name, exc)
                continue
            if bps:
                self.publisher.bandwidth[catalog.name].seed(bps)
                log.info("%s tier reads at %.0f MB/s (probe)", catalog.name, bps / 1e6)
                await self.publisher.publish_bandwidth(catalog.name)

    async def on_store_reset(self) -> None:
        """The node, its tiers' contents and its measured bandwidths, written back now (not
        at the next periodic refresh; a write that fails here the refresh repairs)."""
        await self.publisher.sync(self._node_record(), (self.ssd, self.dram))

    async def _refresh(self) -> None:
        # Redis may lose its data (a restart without persistence): re-announce periodically.
        while True:
            await asyncio.sleep(self.storage_settings.locality_refresh_interval)
            await self.publisher.sync(self._node_record(), (self.ssd, self.dram))


def _scan(root: Path, _: threading.Event) -> list[Found]:
    return scan_tier(root)
