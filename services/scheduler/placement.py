"""Placement: estimate each free worker's startup time for a model and pick the smallest.

Pure functions over a snapshot (no NATS, no Redis), so they are unit-tested with plain data
and reusable by a simulator. Startup time of model M on worker W of node N:

    queue wait + bytes(M) / bandwidth(fastest tier of N holding M)

where a checkpoint only in the registry must first be fetched to the SSD tier and then read
from it. Bandwidths are the ones the node's storage service measured; priors fill the gaps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

SourceTier = Literal["dram", "ssd", "registry"]

# Used only until a node has measured its own tiers (documented in the README).
DEFAULT_BANDWIDTH: Mapping[SourceTier, float] = {
    "dram": 8e9,
    "ssd": 1.5e9,
    "registry": 0.5e9,
}


@dataclass(frozen=True)
class WorkerView:
    worker_id: str
    node_id: str
    free: bool  # alive and not hosting (or loading) an instance
    queue_s: float = 0.0  # expected wait before it could start loading


@dataclass(frozen=True)
class NodeView:
    node_id: str
    dram: Mapping[str, int] = field(default_factory=dict)  # model -> bytes
    ssd: Mapping[str, int] = field(default_factory=dict)
    bandwidth: Mapping[str, float] = field(default_factory=dict)  # tier -> bytes/s


@dataclass(frozen=True)
class Estimate:
    worker_id: str
    node_id: str
    tier: SourceTier
    seconds: float


def checkpoint_bytes(model: str, nodes: Sequence[NodeView], default: int) -> int:
    """The model's size as any node's storage reported it, else ``default``."""
    sizes = [n.dram.get(model) or n.ssd.get(model) or 0 for n in nodes]
    return max(sizes, default=0) or default


def _bw(node: NodeView, tier: SourceTier, priors: Mapping[SourceTier, float]) -> float:
    measured = node.bandwidth.get(tier, 0.0)
    return measured if measured > 0 else priors[tier]


def estimate(
    worker: WorkerView,
    node: NodeView,
    model: str,
    nbytes: int,
    priors: Mapping[SourceTier, float] = DEFAULT_BANDWIDTH,
) -> Estimate:
    """Startup time of ``model`` on ``worker`` from the fastest tier of its node that holds it."""
    tier: SourceTier
    if model in node.dram:
        tier, load = "dram", nbytes / _bw(node, "dram", priors)
    elif model in node.ssd:
        tier, load = "ssd", nbytes / _bw(node, "ssd", priors)
    else:
        tier = "registry"
        load = nbytes / _bw(node, "registry", priors) + nbytes / _bw(node, "ssd", priors)
    return Estimate(worker.worker_id, worker.node_id, tier, worker.queue_s + load)


def rank(
    model: str,
    workers: Sequence[WorkerView],
    nodes: Sequence[NodeView],
    *,
    default_bytes: int = 1_000_000_000,
    priors: Mapping[SourceTier, float] = DEFAULT_BANDWIDTH,
) -> list[Estimate]:
    """Estimates for every free worker, best first.

    Ties (same estimate) go to the node with more free workers, then to the lowest worker id,
    so that equal choices spread load and stay deterministic.
    """
    by_node = {n.node_id: n for n in nodes}
    nbytes = checkpoint_bytes(model, nodes, default_bytes)
    free_per_node: dict[str, int] = {}
    for w in workers:
        if w.free:
            free_per_node[w.node_id] = free_per_node.get(w.node_id, 0) + 1
    estimates = [
        estimate(w, by_node.get(w.node_id, NodeView(w.node_id)), model, nbytes, priors)
        for w in workers
        if w.free
    ]
    return sorted(
        estimates, key=lambda e: (e.seconds, -free_per_node.get(e.node_id, 0), e.worker_id)
    )
