"""``GET /v1/cluster``: the cluster as it is now, for the status page and ``sllm status``.

`assemble` is pure: the cluster state's records (`ClusterRecords`) and what this router knows
(`RouterKnows`: its requests in flight, what the events told it) in, one `ClusterOut` out.
`ClusterReader` reads both, and shares one read among the pollers of the same half second.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from libs.cluster import ClusterState
from libs.protocol.state import InstanceRecord, Locality, NodeRecord, WorkerRecord

from .cluster import read
from .cluster_schema import (
    ClusterOut,
    ColdStartOut,
    DeploymentOut,
    EventOut,
    InstanceOut,
    ModelBytes,
    NodeOut,
    TierOut,
    WorkerOut,
    WorkerStatus,
)
from .recent_events import EventFollower

# Instances in these states count as a deployment's instances (a stopping one is on its way out).
LIVE = frozenset({"loading", "ready"})
# Pollers within this many seconds of a read share it (every open page polls each second).
SHARE_S = 0.5
EVENTS_SHOWN = 50


@dataclass(frozen=True)
class ClusterRecords:
    """The cluster state's records, as `ClusterState` reads them. ``deployments`` are
    `DeploymentSpec`s (or anything with their fields; ``status`` and ``error`` are read where
    present)."""

    nodes: Sequence[NodeRecord] = ()
    localities: Sequence[Locality] = ()
    workers: Sequence[WorkerRecord] = ()
    instances: Sequence[InstanceRecord] = ()
    deployments: Sequence[Any] = ()


@dataclass(frozen=True)
class RouterKnows:
    """What this router knows that the cluster state does not hold."""

    in_flight: Mapping[str, int] = field(default_factory=dict)  # instance -> streaming now
    held: Mapping[str, int] = field(default_factory=dict)  # model -> requests held
    queued: Mapping[str, int] = field(default_factory=dict)  # model -> waiting for an instance
    phases: Mapping[str, str] = field(default_factory=dict)  # loading instance -> last phase
    requests: Mapping[str, int] = field(default_factory=dict)  # model -> completed
    instance_tokens_per_s: Mapping[str, float] = field(default_factory=dict)
    model_tokens_per_s: Mapping[str, float] = field(default_factory=dict)
    events: Sequence[EventOut] = ()


def assemble(
    records: ClusterRecords, knows: RouterKnows, *, now: float, router_id: str
) -> ClusterOut:
    """The snapshot: nodes (tiers, workers, their instances), deployments, loads under way."""
    by_worker: dict[str, list[InstanceRecord]] = {}
    for rec in sorted(records.instances, key=lambda r: (r.created_at, r.instance_id)):
        by_worker.setdefault(rec.worker_id, []).append(rec)

    registered = {n.node_id: n for n in records.nodes}
    localities = {loc.node_id: loc for loc in records.localities}
    workers_of: dict[str, list[WorkerOut]] = {}
    for w in sorted(records.workers, key=lambda w: w.worker_id):
        status: WorkerStatus = "down" if not w.alive else "busy" if w.instance_id else "free"
        instances = [_instance(r, knows) for r in by_worker.pop(w.worker_id, [])]
        workers_of.setdefault(w.node_id, []).append(
            WorkerOut(worker_id=w.worker_id, device=w.device, status=status, instances=instances)
        )
    # Records that name a worker the state no longer has: shown, not hidden.
    for worker_id, recs in sorted(by_worker.items()):
        workers_of.setdefault(recs[0].node_id, []).append(
            WorkerOut(
                worker_id=worker_id,
                device="",
                status="unregistered",
                instances=[_instance(r, knows) for r in recs],
            )
        )

    node_ids = sorted(registered.keys() | workers_of.keys() | localities.keys())
    nodes = [
        NodeOut(
            node_id=n,
            registered=n in registered,
            tiers=_tiers(registered.get(n), localities.get(n)),
            workers=workers_of.get(n, []),
        )
        for n in node_ids
    ]
    return ClusterOut(
        time=now,
        router_id=router_id,
        nodes=nodes,
        deployments=[_deployment(d, records.instances, knows) for d in records.deployments],
        cold_starts=[
            ColdStartOut(
                model=r.model,
                instance_id=r.instance_id,
                worker_id=r.worker_id,
                node_id=r.node_id,
                phase=knows.phases.get(r.instance_id, ""),
                started_at=r.created_at,
                elapsed_s=round(max(now - r.created_at, 0.0), 3),
            )
            for r in sorted(records.instances, key=lambda r: (r.created_at, r.instance_id))
            if r.status == "loading"
        ],
        events=list(knows.events),
    )


def _instance(r: InstanceRecord, knows: RouterKnows) -> InstanceOut:
    return InstanceOut(
        instance_id=r.instance_id,
        model=r.model,
        status=r.status,
        source_tier=r.source_tier,
        created_at=r.created_at,
        ready_at=r.ready_at,
        load_s=r.load_s,
        error=r.error,
        in_flight=knows.in_flight.get(r.instance_id, 0),
        tokens_per_s=round(knows.instance_tokens_per_s.get(r.instance_id, 0.0), 2),
    )


def _tiers(node: NodeRecord | None, loc: Locality | None) -> list[TierOut]:
    dram, ssd = (loc.dram, loc.ssd) if loc is not None else ({}, {})
    bandwidth = loc.bandwidth if loc is not None else {}
    tiers: tuple[tuple[Literal["dram", "ssd"], dict[str, int]], ...] = (
        ("dram", dram),
        ("ssd", ssd),
    )
    return [
        TierOut(
            tier=tier,
            capacity_bytes=node.dram_capacity_bytes if tier == "dram" and node else None,
            used_bytes=sum(held.values()),
            bandwidth_bytes_per_s=bandwidth.get(tier),
            models=[ModelBytes(model=m, bytes=b) for m, b in sorted(held.items())],
        )
        for tier, held in tiers
    ]


def _deployment(
    spec: Any, instances: Sequence[InstanceRecord], knows: RouterKnows
) -> DeploymentOut:
    mine = [r for r in instances if r.model == spec.name]
    return DeploymentOut(
        name=spec.name,
        checkpoint_uri=spec.checkpoint_uri,
        task=str(getattr(spec, "task", None) or "generate"),
        base=str(getattr(spec, "base", None) or ""),
        min_instances=spec.min_instances,
        max_instances=spec.max_instances,
        keep_alive_s=spec.keep_alive_s,
        target_concurrency=spec.target_concurrency,
        # Fields a deployment may carry (its preparation); a bare spec is ready.
        status=str(getattr(spec, "status", None) or "ready"),
        error=str(getattr(spec, "error", None) or ""),
        instances=sum(r.status in LIVE for r in mine),
        ready_instances=sum(r.status == "ready" for r in mine),
        in_flight=knows.held.get(spec.name, 0),
        queued=knows.queued.get(spec.name, 0),
        requests=knows.requests.get(spec.name, 0),
        tokens_per_s=round(knows.model_tokens_per_s.get(spec.name, 0.0), 2),
    )


# model -> (requests waiting for an instance, when the oldest arrived): `ColdQueue.waiting`
Waiting = Callable[[], Mapping[str, tuple[int, float]]]


class ClusterReader:
    """Reads the records and the router's own counts, and assembles them (`assemble`)."""

    def __init__(
        self,
        state: ClusterState,
        follower: EventFollower,
        router_id: str,
        *,
        in_flight: Mapping[str, int],
        held: Mapping[str, int] | None = None,
        waiting: Waiting | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.follower = follower
        self.router_id = router_id
        self.in_flight = in_flight
        self.held = held if held is not None else {}
        self.waiting = waiting
        self.clock = clock
        self._last: tuple[float, ClusterOut] | None = None
        self._lock = asyncio.Lock()

    async def snapshot(self) -> ClusterOut:
        async with self._lock:
            if self._last is not None and self.clock() - self._last[0] < SHARE_S:
                return self._last[1]
            records = await self.records()
            now = self.clock()
            out = assemble(records, self.knows(records, now), now=now, router_id=self.router_id)
            self._last = (now, out)
            return out

    async def records(self) -> ClusterRecords:
        """Every record the snapshot shows: a handful of round trips whatever the cluster's
        size (instances by deployment, plus any a worker holds for a deleted deployment)."""
        s = self.state
        nodes = await read("nodes", s.nodes)
        workers = await read("workers", s.workers)
        deployments = await read("deployments", s.deployments)
        node_ids = sorted({n.node_id for n in nodes} | {w.node_id for w in workers})
        localities = await read("locality", lambda: s.localities(node_ids))
        by_model = await read("instances", lambda: s.instances_of([d.name for d in deployments]))
        instances = [r for recs in by_model.values() for r in recs]
        known = {r.instance_id for r in instances}
        for held in sorted({w.instance_id for w in workers} - known - {""}):
            rec = await read("instances", functools.partial(s.get_instance, held))
            if rec is not None:
                instances.append(rec)
        return ClusterRecords(nodes, localities, workers, instances, deployments)

    def knows(self, records: ClusterRecords, now: float) -> RouterKnows:
        f = self.follower
        waiting = self.waiting() if self.waiting is not None else {}
        return RouterKnows(
            in_flight=dict(self.in_flight),
            held=dict(self.held),
            queued={m: n for m, (n, _) in waiting.items()},
            phases={r.instance_id: f.phases.phase(r.instance_id) for r in records.instances},
            requests=dict(f.throughput.requests),
            instance_tokens_per_s={
                r.instance_id: f.throughput.instance_tokens_per_s(r.instance_id, now)
                for r in records.instances
            },
            model_tokens_per_s={
                d.name: f.throughput.model_tokens_per_s(d.name, now) for d in records.deployments
            },
            events=f.recent.newest_first(EVENTS_SHOWN),
        )
