"""Prefetch on deploy: copy a new model into the DRAM tier of the nodes likely to start it.

`prefetch_targets` decides (pure); `prefetch` asks those nodes' storage services, in the
background, each with a timeout, following each one's life (`libs.common.follow`): a storage
service that dies mid-copy is asked once more after its restart, not waited on for the whole
timeout. A prefetch only saves time: it never fails a deployment.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from libs.cluster import ClusterState
from libs.common.follow import Peers
from libs.protocol import Bus, BusError
from libs.protocol.endpoints import STORAGE_ENSURE
from libs.protocol.events import PrefetchEvent
from libs.protocol.messages import DeploymentSpec, EnsureRequest

from .placement import NodeView, checkpoint_bytes

log = logging.getLogger(__name__)

# Requests one node's prefetch may make: the first, and one more if its storage service
# died or restarted during the first.
PREFETCH_ATTEMPTS = 2


@dataclass(frozen=True)
class NodeState:
    """What a prefetch decision looks at on one node."""

    node_id: str
    workers: int  # alive workers
    free_workers: int
    dram_capacity: int  # bytes; 0: unknown (the node's storage has not registered)
    dram_used: int
    holds_dram: bool = False
    holds_ssd: bool = False


def _spread(model: str, node_id: str) -> int:
    # Rendezvous hashing: among otherwise equal nodes each model has its own stable order, so
    # that prefetches of different models spread over the cluster instead of piling on one.
    return zlib.crc32(f"{model}\0{node_id}".encode())


def prefetch_targets(
    model: str, nbytes: int, nodes: Sequence[NodeState], replicas: int
) -> list[str]:
    """The nodes whose DRAM tier should receive ``model`` so that ``replicas`` nodes with
    workers hold it there; nodes already holding it count. Preferred, in order: nodes with a
    free worker (where the scheduler can start it), where it fits without evicting anything,
    that already hold it on SSD (a cheap copy), with more free workers, with more free DRAM.
    Nodes without workers or whose DRAM tier is smaller than the model are never chosen."""
    if replicas <= 0:
        return []
    with_workers = [n for n in nodes if n.workers > 0]
    missing = replicas - sum(n.holds_dram for n in with_workers)
    if missing <= 0:
        return []
    candidates = [n for n in with_workers if not n.holds_dram and n.dram_capacity >= nbytes]

    def key(n: NodeState) -> tuple[bool, bool, bool, int, int, int]:
        free_dram = n.dram_capacity - n.dram_used
        return (
            n.free_workers == 0,
            free_dram < nbytes,
            not n.holds_ssd,
            -n.free_workers,
            -free_dram,
            _spread(model, n.node_id),
        )

    return [n.node_id for n in sorted(candidates, key=key)[:missing]]


# --- I/O ------------------------------------------------------------------------------------


async def node_states(state: ClusterState, model: str) -> tuple[list[NodeState], int]:
    """The cluster as `prefetch_targets` sees it, and the model's size if any node knows it
    (0 otherwise)."""
    workers = [w for w in await state.workers() if w.alive]
    records = {n.node_id: n for n in await state.nodes()}
    node_ids = sorted({w.node_id for w in workers} | set(records))
    localities = await state.localities(node_ids)
    out = []
    for loc in localities:
        on_node = [w for w in workers if w.node_id == loc.node_id]
        rec = records.get(loc.node_id)
        out.append(
            NodeState(
                node_id=loc.node_id,
                workers=len(on_node),
                free_workers=sum(not w.instance_id for w in on_node),
                dram_capacity=rec.dram_capacity_bytes if rec else 0,
                dram_used=sum(loc.dram.values()),
                holds_dram=model in loc.dram,
                holds_ssd=model in loc.ssd,
            )
        )
    views = [NodeView(loc.node_id, dram=loc.dram, ssd=loc.ssd) for loc in localities]
    return out, checkpoint_bytes(model, views, 0)


@dataclass(frozen=True)
class Prefetched:
    """What a prefetch did: the nodes asked, those that hold a copy now (in DRAM, or on SSD
    where DRAM had no room), and the errors of the others."""

    targets: tuple[str, ...] = ()
    copied: tuple[str, ...] = ()
    dram: tuple[str, ...] = ()
    errors: tuple[BusError, ...] = ()


async def prefetch(
    bus: Bus, state: ClusterState, spec: DeploymentSpec, *, replicas: int, timeout: float
) -> Prefetched:
    """Copy ``spec``'s checkpoint into the DRAM tier of the chosen nodes. Failures are logged
    and returned, never raised."""
    if replicas <= 0:
        return Prefetched()
    try:
        nodes, nbytes = await node_states(state, spec.name)
    except Exception as exc:  # a prefetch must never fail the deploy that spawned it
        log.warning("prefetch of %s skipped: cannot read the cluster state: %r", spec.name, exc)
        return Prefetched()
    # An unknown size (the model is nowhere yet) must not rule out any node.
    targets = prefetch_targets(spec.name, nbytes, nodes, replicas)
    if not targets:
        return Prefetched()
    await bus.emit(PrefetchEvent(model=spec.name, node_ids=targets, replicas=replicas))
    req = EnsureRequest(model=spec.name, checkpoint_uri=spec.checkpoint_uri, tier="dram")
    storage = Peers(bus, state.redis, state.keys, "storage")

    async def one(node_id: str) -> str | BusError:
        try:
            reply = await storage.request(
                STORAGE_ENSURE, req, timeout=timeout, node_id=node_id, attempts=PREFETCH_ATTEMPTS
            )
        except BusError as exc:
            log.warning("prefetch of %s to %s failed: %s", spec.name, node_id, exc)
            return exc
        if reply.tier != "dram":
            log.info("prefetch of %s to %s: no room in DRAM (kept on SSD)", spec.name, node_id)
        return reply.tier

    done = await asyncio.gather(*(one(n) for n in targets))
    return Prefetched(
        targets=tuple(targets),
        copied=tuple(n for n, r in zip(targets, done, strict=True) if isinstance(r, str)),
        dram=tuple(n for n, r in zip(targets, done, strict=True) if r == "dram"),
        errors=tuple(r for r in done if isinstance(r, BusError)),
    )
