"""Simulated hardware: nodes with GPUs (workers), a DRAM tier, an SSD tier and a network link
to the registry, each link a FIFO channel (one transfer at a time at the link's bandwidth).

The tiers' contents are the storage service's own `TierCatalog`s (`services/storage/lru.py`),
so LRU order and eviction plans are the system's; the bandwidths and capacities are the
simulation's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from services.storage.lru import TierCatalog

GB = 1e9
SIM_ROOT = Path("/simulated")


@dataclass(frozen=True)
class Hardware:
    """One server type. Bandwidths are bytes/s into a GPU from each source (the registry:
    into the node's SSD tier)."""

    gpus: int = 4
    dram_bytes: int = int(512 * GB)  # DRAM tier capacity (host memory set aside)
    ssd_bytes: int = int(4000 * GB)  # SSD tier capacity
    dram_bw: float = 20 * GB  # pinned host memory -> GPU over PCIe 4.0 x16
    ssd_bw: float = 6 * GB  # NVMe RAID-0 of two PCIe 4.0 drives
    registry_bw: float = 1.25 * GB  # 10 Gbit/s per server to the model registry
    fixed_s: float = 1.0  # per load: CUDA context, model skeleton, tokenizer


@dataclass
class Channel:
    """A link that moves one transfer at a time, in request order (FIFO)."""

    free_at: float = 0.0
    busy_s: float = 0.0

    def transfer(self, start: float, nbytes: int, bytes_per_s: float) -> float:
        """When a transfer asked for at ``start`` ends (it waits for the ones before it)."""
        begin = max(start, self.free_at)
        seconds = nbytes / bytes_per_s
        self.free_at = begin + seconds
        self.busy_s += seconds
        return self.free_at


@dataclass
class Worker:
    worker_id: str
    node_id: str
    instance: str = ""  # the instance it hosts or loads ("" when free)
    reserved_for: str = ""  # a cold start waiting for it or migrating it (model name)

    @property
    def free(self) -> bool:
        return not self.instance and not self.reserved_for


@dataclass
class Node:
    node_id: str
    index: int
    hw: Hardware
    workers: list[Worker]
    dram: TierCatalog | None
    ssd: TierCatalog | None
    nic: Channel = field(default_factory=Channel)
    disk: Channel = field(default_factory=Channel)
    # (tier, model) -> when a copy being written there is complete.
    ready_at: dict[tuple[str, str], float] = field(default_factory=dict)
    version: int = 0  # bumped whenever a tier's contents change
    free_workers: int = 0  # kept current by `recount` after any worker changes

    def recount(self) -> None:
        self.free_workers = sum(w.free for w in self.workers)

    def holds(self, tier: str, model: str, now: float) -> bool:
        """Whether a complete copy of ``model`` is in ``tier`` at ``now``."""
        cat = self.dram if tier == "dram" else self.ssd
        if cat is None or model not in cat.entries:
            return False
        return self.ready_at.get((tier, model), 0.0) <= now


def build_cluster(nodes: int, hw: Hardware, *, dram_tier: bool, ssd_cache: bool) -> list[Node]:
    """``nodes`` identical servers (ids zero-padded, so that worker ids sort by node)."""
    width = max(4, len(str(nodes - 1)))
    out = []
    for i in range(nodes):
        nid = f"n{i:0{width}d}"
        workers = [Worker(f"{nid}-g{g:02d}", nid) for g in range(hw.gpus)]
        dram = TierCatalog("dram", SIM_ROOT / nid / "dram", hw.dram_bytes) if dram_tier else None
        ssd = TierCatalog("ssd", SIM_ROOT / nid / "ssd", hw.ssd_bytes) if ssd_cache else None
        node = Node(nid, i, hw, workers, dram, ssd)
        node.recount()
        out.append(node)
    return out
