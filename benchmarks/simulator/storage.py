"""A node's storage service, simulated: where a load reads its checkpoint from, what that does
to the tiers (fetch, promotion, LRU eviction by the storage service's own `plan_eviction`),
and how long each step takes on the node's links.

The path is the system's (`services/storage/tiers.py`): the worker asks for a DRAM copy; a DRAM
hit is read at once; an SSD copy is first promoted to DRAM (if the DRAM tier can make room,
else read from SSD); a checkpoint in neither is fetched from the registry into SSD first. Copies
that live instances of the node use, and copies being written, are never evicted.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from services.scheduler.placement import SourceTier
from services.storage.lru import TierCatalog, TierEntry

from .cluster import Node
from .systems import System


class TierEvents(Protocol):
    """Told of every change of a node's tiers (the locality the scheduler reads)."""

    def added(self, node: Node, tier: str, model: str) -> None: ...

    def evicted(self, node: Node, tier: str, model: str) -> None: ...


@dataclass(frozen=True)
class LoadTimeline:
    source: SourceTier  # the fastest tier that held the checkpoint when the load began
    data_s: float  # storage ensure + weight read, waits for busy links included
    fixed_s: float  # the tier-independent rest (model build, pod start)

    @property
    def seconds(self) -> float:
        return self.data_s + self.fixed_s


def _room(
    node: Node, cat: TierCatalog, need: int, pinned: Collection[str], events: TierEvents
) -> bool:
    victims = cat.plan(need, pinned=pinned)
    if victims is None:
        return False
    for v in victims:
        cat.pop(v)
        node.ready_at.pop((cat.name, v), None)
        events.evicted(node, cat.name, v)
        if cat is node.ssd and node.dram is not None and v in node.dram.entries:
            # An SSD eviction takes the DRAM copy too (`TierManager._fetch_once`).
            node.dram.pop(v)
            node.ready_at.pop(("dram", v), None)
            events.evicted(node, "dram", v)
    node.version += 1
    return True


def _add(
    node: Node, cat: TierCatalog, model: str, nbytes: int, ready: float, events: TierEvents
) -> None:
    cat.add(TierEntry(model, cat.root / model, nbytes, f"registry://{model}"))
    node.ready_at[(cat.name, model)] = ready
    node.version += 1
    events.added(node, cat.name, model)


def load(
    node: Node,
    model: str,
    nbytes: int,
    now: float,
    system: System,
    in_use: Collection[str],
    events: TierEvents,
) -> LoadTimeline:
    """Carry out the storage side of a load of ``model`` on ``node`` starting at ``now``:
    update the tiers and the links, and return when the weights are in the GPU.

    ``in_use``: the models of the node's live instances (their copies are pinned)."""
    hw, eff = node.hw, system.loader_efficiency
    pinned = set(in_use) | {m for (_, m), t in node.ready_at.items() if t > now}
    t = now
    dram, ssd = node.dram, node.ssd
    if dram is not None and model in dram.entries:
        source: SourceTier = "dram"
        t = max(t, node.ready_at.get(("dram", model), 0.0))
        dram.touch(model)
        if ssd is not None:
            ssd.touch(model)
        t += nbytes / (hw.dram_bw * eff)
        return LoadTimeline(source, t - now, hw.fixed_s + system.extra_start_s)
    on_ssd = False
    if ssd is not None and model in ssd.entries:
        source = "ssd"
        t = max(t, node.ready_at.get(("ssd", model), 0.0))
        ssd.touch(model)
        on_ssd = True
    else:
        source = "registry"
        t = node.nic.transfer(t, nbytes, hw.registry_bw)
        if ssd is not None and _room(node, ssd, nbytes, pinned, events):
            _add(node, ssd, model, nbytes, t, events)
            on_ssd = True
    if on_ssd and dram is not None and _room(node, dram, nbytes, pinned - {model}, events):
        # Promote SSD -> DRAM, then read from DRAM.
        t = node.disk.transfer(t, nbytes, hw.ssd_bw)
        _add(node, dram, model, nbytes, t, events)
        t += nbytes / (hw.dram_bw * eff)
    else:
        # Read from the local disk (the cached copy, or the one just downloaded).
        t = node.disk.transfer(t, nbytes, hw.ssd_bw * eff)
    return LoadTimeline(source, t - now, hw.fixed_s + system.extra_start_s)


def prefetch(node: Node, model: str, nbytes: int, events: TierEvents) -> bool:
    """Copy ``model`` into the node's SSD and DRAM tiers before the trace starts (a deploy
    made a while before the traffic); False if the DRAM tier has no room."""
    if node.dram is None or nbytes > (node.dram.capacity or 0):
        return False
    if node.ssd is not None and model not in node.ssd.entries:
        if not _room(node, node.ssd, nbytes, (), events):
            return False
        _add(node, node.ssd, model, nbytes, 0.0, events)
    if model in node.dram.entries or not _room(node, node.dram, nbytes, (), events):
        return model in node.dram.entries
    _add(node, node.dram, model, nbytes, 0.0, events)
    return True
