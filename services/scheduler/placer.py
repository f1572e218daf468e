"""Placement, carried out: the one place the scheduler reads the cluster snapshot its decisions
take, reserves a worker atomically, writes the instance record, sends the load and announces
it; and the undoing of all that (an unload, or forgetting an instance whose worker is gone).

Which worker is best is `placement`'s decision (pure); whether to place at all is
`place_policy`'s and `coldpolicy`'s.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence

from libs.cluster import ClusterState
from libs.protocol import Bus
from libs.protocol.endpoints import WORKER_LOAD, WORKER_UNLOAD
from libs.protocol.errors import BusError, UnavailableError
from libs.protocol.events import InstanceStoppedEvent, PlacementEvent
from libs.protocol.messages import DeploymentSpec, LoadRequest, PlaceReply, UnloadRequest
from libs.protocol.state import InstanceRecord

from .loads import LoadFeedback
from .placement import (
    Estimate,
    NodeView,
    SourceTier,
    WorkerView,
    node_fits,
    rank,
    round_robin,
)
from .snapshots import Cluster, Snapshots

log = logging.getLogger(__name__)

# Best workers tried, in order, before a placement gives up (another scheduler replica or
# placement may reserve each first).
RESERVE_ATTEMPTS = 8
# The best candidates a placement event lists (with their estimates): enough to see why a
# worker won, without a thousand entries per event in a large cluster.
EVENT_CANDIDATES = 16


class Placer:
    """Reserves a worker, records the instance and orders its load; unloads and forgets."""

    def __init__(
        self,
        *,
        bus: Bus,
        state: ClusterState,
        feedback: LoadFeedback,
        policy: str,
        default_bytes: int,
        priors: Mapping[SourceTier, float],
        unload_timeout: float,
        snapshot_max_age_s: float = 1.0,
    ) -> None:
        self.bus = bus
        self.state = state
        self.feedback = feedback
        self.policy = policy
        self.default_bytes = default_bytes
        self.priors = priors
        self.unload_timeout = unload_timeout  # of an undeployment's unload
        self.snapshots = Snapshots(self._read_snapshot, max_age_s=snapshot_max_age_s)

    # --- reading --------------------------------------------------------------------------

    async def snapshot(self) -> Cluster:
        """The workers, and the tiers and calibration of every node that has one: the cached
        snapshot (`Snapshots`), when it is recent enough."""
        return await self.snapshots.get()

    async def _read_snapshot(self) -> Cluster:
        workers = await self.state.workers()
        node_ids = sorted({w.node_id for w in workers})
        localities = await self.state.localities(node_ids)
        calibration = await self.feedback.calibration(node_ids)
        nodes = [
            NodeView(
                loc.node_id,
                dram=loc.dram,
                ssd=loc.ssd,
                bandwidth={str(k): v for k, v in loc.bandwidth.items()},
                loads=calibration.get(loc.node_id, ({}, 0.0))[0],
                fixed_s=calibration.get(loc.node_id, ({}, 0.0))[1],
            )
            for loc in localities
        ]
        views = [WorkerView(w.worker_id, w.node_id, w.alive and not w.instance_id) for w in workers]
        alive = frozenset(w.worker_id for w in workers if w.alive)
        fits = {n.node_id: node_fits(n, self.priors) for n in nodes}
        return Cluster(views, nodes, alive, fits)

    async def with_fresh_locality(self, model: str, cluster: Cluster) -> Cluster:
        """``cluster`` with ``model``'s copies as the store has them now: the snapshot may be
        a moment old, and a copy made or evicted just before is what decides a placement."""
        held = await self.state.holders(model)
        return cluster.with_locality(model, held["dram"], held["ssd"])

    def rank(self, model: str, cluster: Cluster) -> list[Estimate]:
        """Every free worker by estimated startup time of ``model``, best first."""
        return rank(
            model,
            cluster.workers,
            cluster.nodes,
            default_bytes=self.default_bytes,
            priors=self.priors,
            fits=cluster.fits,
        )

    async def live_instances(
        self, model: str, cluster: Cluster | None = None
    ) -> list[InstanceRecord]:
        """``model``'s loading and ready instances on live workers (of ``cluster``, if given)."""
        alive = (cluster or await self.snapshot()).alive
        return [
            i
            for i in await self.state.instances(model)
            if i.worker_id in alive and i.status in ("ready", "loading")
        ]

    # --- placing --------------------------------------------------------------------------

    async def place_new(
        self,
        spec: DeploymentSpec,
        request_id: str,
        worker_id: str = "",
        *,
        cluster: Cluster | None = None,
        ranked: Sequence[Estimate] | None = None,
    ) -> PlaceReply:
        """A new instance on the best free worker (only ``worker_id``, when given).

        ``cluster``: the snapshot to decide on (read now if not given); ``ranked``: its
        `rank` for the model, when the caller has it already (the startup-time policy then
        does not rank again)."""
        instance_id = "i-" + uuid.uuid4().hex[:16]
        if cluster is None:
            cluster = await self.with_fresh_locality(spec.name, await self.snapshot())
            ranked = None
        candidates = await self._candidates(spec.name, cluster, worker_id, ranked)
        reserved = await self._reserve(candidates, instance_id)
        if reserved is None:
            # The snapshot may be old (see `Snapshots`): no "no" without a fresh look.
            cluster = await self.snapshots.fresh()
            candidates = await self._candidates(spec.name, cluster, worker_id, None)
            reserved = await self._reserve(candidates, instance_id)
        if reserved is None:
            workers = [w for w in cluster.workers if not worker_id or w.worker_id == worker_id]
            raise UnavailableError(
                f"no free worker for {spec.name!r}",
                detail={"model": spec.name, "workers": len(workers)},
            )
        choice, epoch = reserved
        rec = InstanceRecord(
            instance_id=instance_id,
            model=spec.name,
            worker_id=choice.worker_id,
            node_id=choice.node_id,
            status="loading",
            created_at=time.time(),
            worker_epoch=epoch,
        )
        await self.state.put_instance(rec)
        await self.feedback.placed(
            instance_id, spec.name, choice.node_id, choice.tier, choice.seconds
        )
        await self.bus.emit(
            PlacementEvent(
                model=spec.name,
                instance_id=instance_id,
                worker_id=choice.worker_id,
                node_id=choice.node_id,
                source_tier=choice.tier,
                estimated_startup_s=choice.seconds,
                candidates={
                    e.worker_id: round(e.seconds, 6) for e in candidates[:EVENT_CANDIDATES]
                },
            )
        )
        try:
            await self.bus.request(
                WORKER_LOAD,
                LoadRequest(
                    instance_id=instance_id,
                    model=spec.name,
                    checkpoint_uri=spec.checkpoint_uri,
                    task=spec.task,
                ),
                worker_id=choice.worker_id,
            )
        except BusError as exc:
            await self.forget(rec, f"load request failed: {exc.code.value}")
            raise UnavailableError(
                f"worker {choice.worker_id} did not take the load of {spec.name!r}: {exc.message}",
                detail={"model": spec.name, "worker": choice.worker_id},
            ) from None
        log.info(
            "placed %s on %s (%s tier, est. %.2fs) for %s",
            spec.name,
            choice.worker_id,
            choice.tier,
            choice.seconds,
            request_id or "-",
        )
        return PlaceReply(
            instance_id=instance_id,
            worker_id=choice.worker_id,
            node_id=choice.node_id,
            status="loading",
            source_tier=choice.tier,
            estimated_startup_s=choice.seconds,
        )

    async def _reserve(
        self, candidates: Sequence[Estimate], instance_id: str
    ) -> tuple[Estimate, int] | None:
        """Reserve the first of the best `RESERVE_ATTEMPTS` candidates that is still free: the
        choice and the worker's epoch (None: each was taken)."""
        for choice in candidates[:RESERVE_ATTEMPTS]:
            epoch = await self.state.reserve(choice.worker_id, instance_id)
            self.snapshots.taken(choice.worker_id)  # ours now, or someone else's
            if epoch is not None:
                return choice, epoch
        return None

    async def _candidates(
        self, model: str, cluster: Cluster, worker_id: str, ranked: Sequence[Estimate] | None
    ) -> list[Estimate]:
        """The free workers to try, best first, by the configured policy."""
        if self.policy == "round_robin":
            workers = [w for w in cluster.workers if not worker_id or w.worker_id == worker_id]
            turn = await self.state.next_placement_turn()
            return round_robin(
                model,
                workers,
                cluster.nodes,
                turn,
                default_bytes=self.default_bytes,
                priors=self.priors,
            )
        # An estimate does not depend on the other workers: ranking all and keeping one
        # worker's is ranking that worker alone.
        best = self.rank(model, cluster) if ranked is None else ranked
        return [e for e in best if not worker_id or e.worker_id == worker_id]

    # --- undoing --------------------------------------------------------------------------

    async def stop(self, rec: InstanceRecord, reason: str) -> str:
        """Unload ``rec`` (forgetting it, if its worker does not answer); its id."""
        try:
            await self.bus.request(
                WORKER_UNLOAD,
                UnloadRequest(instance_id=rec.instance_id, reason=reason),
                worker_id=rec.worker_id,
                timeout=self.unload_timeout,
            )
        except BusError as exc:
            # The worker is gone or confused: forget the instance and free the worker ourselves.
            log.warning(
                "unload of %s on %s failed (%s); cleaning up", rec.instance_id, rec.worker_id, exc
            )
            await self.forget(rec, reason)
        return rec.instance_id

    async def forget(self, rec: InstanceRecord, reason: str) -> None:
        """Retire ``rec`` (free its worker, delete the record) and announce it stopped."""
        log.info(
            "forgetting instance %s of %s on %s: %s",
            rec.instance_id,
            rec.model,
            rec.worker_id,
            reason,
        )
        if await self.state.retire_instance(rec):
            self.snapshots.freed(rec.worker_id)
        await self.bus.emit(
            InstanceStoppedEvent(
                instance_id=rec.instance_id, model=rec.model, worker_id=rec.worker_id, reason=reason
            )
        )
