"""The storage service's Prometheus metrics, in a registry of its own (several storage services
may share a process in tests), served on its metrics port (`libs.common.metrics_server`).

Counters move where the copies are made and removed (`TierManager`); the tiers' capacity, use
and contents are read off their catalogs only when scraped (`watch`)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .lru import TierCatalog

# Copying a checkpoint: under a second (DRAM, small) to many minutes (a registry fetch).
COPY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class StorageMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.fetched = Counter(
            "sllm_storage_fetched_bytes",
            "bytes fetched from the registry into a tier",
            ["tier"],
            registry=r,
        )
        self.promoted = Counter(
            "sllm_storage_promoted_bytes",
            "bytes copied from a slower tier of this node into a faster one (ssd -> dram)",
            ["tier"],
            registry=r,
        )
        self.evicted = Counter(
            "sllm_storage_evicted_bytes",
            "bytes of copies removed from a tier, by reason (lru, requested, replaced, "
            "missing, corrupt)",
            ["tier", "reason"],
            registry=r,
        )
        self.copy_seconds = Histogram(
            "sllm_storage_fetch_duration_seconds",
            "time to make one copy in a tier, by where it came from (registry, ssd)",
            ["tier", "source_tier"],
            buckets=COPY_BUCKETS,
            registry=r,
        )
        self.ensures = Counter(
            "sllm_storage_ensure_requests",
            "copies asked of this node (ensure), by the tier that served them: dram or ssd "
            "(a hit), registry (fetched)",
            ["source_tier"],
            registry=r,
        )
        self.capacity = Gauge(
            "sllm_storage_capacity_bytes",
            "a tier's capacity (the file system's size where none is configured)",
            ["tier"],
            registry=r,
        )
        self.used = Gauge(
            "sllm_storage_used_bytes",
            "bytes a tier's copies take, and those reserved for copies in progress",
            ["tier"],
            registry=r,
        )
        self.checkpoints = Gauge(
            "sllm_storage_checkpoints", "checkpoints a tier holds", ["tier"], registry=r
        )

    def copied(self, tier: str, source_tier: str, nbytes: int, seconds: float) -> None:
        """A copy into ``tier`` from ``source_tier`` (``registry``: fetched) is made."""
        counter = self.fetched if source_tier == "registry" else self.promoted
        counter.labels(tier=tier).inc(nbytes)
        self.copy_seconds.labels(tier=tier, source_tier=source_tier).observe(seconds)

    def removed(self, tier: str, reason: str, nbytes: int) -> None:
        self.evicted.labels(tier=tier, reason=reason).inc(nbytes)

    def served(self, source_tier: str) -> None:
        self.ensures.labels(source_tier=source_tier).inc()

    def watch(self, catalogs: Iterable[TierCatalog]) -> None:
        """Read each tier's capacity, use and contents off its catalog when scraped."""
        for catalog in catalogs:
            tier = catalog.name
            self.capacity.labels(tier=tier).set_function(partial(_capacity, catalog))
            self.used.labels(tier=tier).set_function(partial(_used, catalog))
            self.checkpoints.labels(tier=tier).set_function(partial(_count, catalog))


def _used(catalog: TierCatalog) -> float:
    return float(catalog.used)


def _count(catalog: TierCatalog) -> float:
    return float(len(catalog.entries))


def _capacity(catalog: TierCatalog) -> float:
    if catalog.capacity is not None:
        return float(catalog.capacity)
    try:
        return float(shutil.disk_usage(catalog.root).total)
    except OSError:
        return 0.0
