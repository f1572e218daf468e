"""Placement: estimate each free worker's startup time for a model and pick the smallest.

Pure functions over a snapshot (no NATS, no Redis), so they are unit-tested with plain data
and reusable by a simulator. Startup time of model M on worker W of node N:

    queue wait + fixed(N) + overhead(N, tier) + bytes(M) / bandwidth(N, tier)

for the fastest tier of N holding M, where a checkpoint only in the registry must first be
fetched to the SSD tier and then read from it. Bandwidths: calibrated from real loads (see
`calibration`) > measured by the node's storage service > priors; the fixed part and the
per-load overhead come from real loads too (0 before any).

`round_robin` is a locality-blind baseline for benchmarks: it rotates over the free workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .calibration import Fit, LoadSample, fit

SourceTier = Literal["dram", "ssd", "registry"]
PlacementPolicy = Literal["startup_time", "round_robin"]

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
    loads: Mapping[str, Sequence[LoadSample]] = field(default_factory=dict)  # tier -> samples
    fixed_s: float = 0.0  # the tier-independent part of a load (model build, tokenizer)


@dataclass(frozen=True)
class Estimate:
    worker_id: str
    node_id: str
    tier: SourceTier
    seconds: float


# Per node id: the node's calibrated tiers (`node_fits`).
NodeFits = Mapping[str, Mapping[SourceTier, Fit]]


def checkpoint_bytes(model: str, nodes: Sequence[NodeView], default: int) -> int:
    """The model's size as any node's storage reported it, else ``default``."""
    sizes = [n.dram.get(model) or n.ssd.get(model) or 0 for n in nodes]
    return max(sizes, default=0) or default


def _bw(node: NodeView, tier: SourceTier, priors: Mapping[SourceTier, float]) -> float:
    measured = node.bandwidth.get(tier, 0.0)
    return measured if measured > 0 else priors[tier]


def base_seconds_per_byte(
    node: NodeView, tier: SourceTier, priors: Mapping[SourceTier, float] = DEFAULT_BANDWIDTH
) -> float:
    """Seconds per byte of a load from ``tier`` by measured bandwidths (or priors) alone; a
    registry load is a fetch into the SSD tier and a read from it."""
    if tier == "registry":
        return 1.0 / _bw(node, "registry", priors) + 1.0 / _bw(node, "ssd", priors)
    return 1.0 / _bw(node, tier, priors)


def node_fits(
    node: NodeView, priors: Mapping[SourceTier, float] = DEFAULT_BANDWIDTH
) -> dict[SourceTier, Fit]:
    """The node's calibrated tiers (those with load samples); computed once per node."""
    out: dict[SourceTier, Fit] = {}
    for tier in ("dram", "ssd", "registry"):
        f = fit(node.loads.get(tier, ()), base_seconds_per_byte(node, tier, priors))
        if f is not None:
            out[tier] = f
    return out


def load_seconds(
    node: NodeView,
    tier: SourceTier,
    nbytes: int,
    priors: Mapping[SourceTier, float] = DEFAULT_BANDWIDTH,
    fits: Mapping[SourceTier, Fit] | None = None,
) -> float:
    """Seconds to move ``nbytes`` from ``tier`` into a worker of ``node`` (the fixed part of
    a load aside).

    A tier without load samples of its own borrows the per-load overhead of the other local
    tier that has them (the path is the same: a storage round trip, opening the files), so
    that calibrating one tier never makes the others look cheap by comparison. A registry
    load is never cheaper than the SSD load it ends with.
    """
    fits = node_fits(node, priors) if fits is None else fits
    if tier == "registry":
        ssd = load_seconds(node, "ssd", nbytes, priors, fits)
        own = fits.get("registry")
        if own is None:
            return nbytes / _bw(node, "registry", priors) + ssd
        return max(own.seconds(nbytes, base_seconds_per_byte(node, tier, priors)), ssd)
    base = base_seconds_per_byte(node, tier, priors)
    own = fits.get(tier)
    if own is not None:
        return own.seconds(nbytes, base)
    other = fits.get("ssd" if tier == "dram" else "dram")
    return (other.overhead_s if other else 0.0) + nbytes * base


def estimate(
    worker: WorkerView,
    node: NodeView,
    model: str,
    nbytes: int,
    priors: Mapping[SourceTier, float] = DEFAULT_BANDWIDTH,
    fits: Mapping[SourceTier, Fit] | None = None,
) -> Estimate:
    """Startup time of ``model`` on ``worker`` from the fastest tier of its node that holds it
    (``fits``: the node's `node_fits`, computed here if not given)."""
    tier: SourceTier = "dram" if model in node.dram else "ssd" if model in node.ssd else "registry"
    load = load_seconds(node, tier, nbytes, priors, fits)
    return Estimate(worker.worker_id, worker.node_id, tier, worker.queue_s + node.fixed_s + load)


def _estimates(
    workers: Sequence[WorkerView],
    nodes: Sequence[NodeView],
    model: str,
    nbytes: int,
    priors: Mapping[SourceTier, float],
    known_fits: NodeFits | None = None,
) -> list[Estimate]:
    """Estimates for the free workers, in the given order. An estimate depends on the worker
    only through its node and its queue: it is computed once per (node, queue) and shared by
    that node's free workers (calibration fitted once per node, unless ``known_fits`` has
    the node's)."""
    by_node = {n.node_id: n for n in nodes}
    fits: dict[str, Mapping[SourceTier, Fit]] = dict(known_fits or {})
    per_node: dict[tuple[str, float], Estimate] = {}
    out = []
    for w in workers:
        if not w.free:
            continue
        shared = per_node.get((w.node_id, w.queue_s))
        if shared is None:
            node = by_node.get(w.node_id, NodeView(w.node_id))
            if w.node_id not in fits:
                fits[w.node_id] = node_fits(node, priors)
            shared = per_node[w.node_id, w.queue_s] = estimate(
                w, node, model, nbytes, priors, fits[w.node_id]
            )
        out.append(Estimate(w.worker_id, shared.node_id, shared.tier, shared.seconds))
    return out


def rank(
    model: str,
    workers: Sequence[WorkerView],
    nodes: Sequence[NodeView],
    *,
    default_bytes: int = 1_000_000_000,
    priors: Mapping[SourceTier, float] = DEFAULT_BANDWIDTH,
    fits: NodeFits | None = None,
) -> list[Estimate]:
    """Estimates for every free worker, best first (``fits``: `node_fits` of the nodes, by
    node id, where the caller has them already).

    Ties (same estimate) go to the node with more free workers, then to the lowest worker id,
    so that equal choices spread load and stay deterministic.
    """
    nbytes = checkpoint_bytes(model, nodes, default_bytes)
    free_per_node: dict[str, int] = {}
    for w in workers:
        if w.free:
            free_per_node[w.node_id] = free_per_node.get(w.node_id, 0) + 1
    estimates = _estimates(workers, nodes, model, nbytes, priors, fits)
    return sorted(
        estimates, key=lambda e: (e.seconds, -free_per_node.get(e.node_id, 0), e.worker_id)
    )


def round_robin(
    model: str,
    workers: Sequence[WorkerView],
    nodes: Sequence[NodeView],
    turn: int,
    *,
    default_bytes: int = 1_000_000_000,
    priors: Mapping[SourceTier, float] = DEFAULT_BANDWIDTH,
) -> list[Estimate]:
    """The locality-blind baseline: the free workers (by id) rotated to start at ``turn``
    modulo their number. Estimates are computed as `rank` does, for the record only."""
    nbytes = checkpoint_bytes(model, nodes, default_bytes)
    free = sorted((w for w in workers if w.free), key=lambda w: w.worker_id)
    if not free:
        return []
    start = turn % len(free)
    return _estimates(free[start:] + free[:start], nodes, model, nbytes, priors)
