"""Carries out reconciliation (`reconcile`): reads the records, applies each repair atomically
(`ClusterState.repair`) and announces it (`scheduler.repaired`, and `instance.stopped` for an
instance whose record it deleted). The scheduler's housekeeping runs it every pass."""

from __future__ import annotations

import logging
import time
from functools import partial

from libs.cluster import ClusterState
from libs.protocol import Bus
from libs.protocol.events import InstanceStoppedEvent, RecordRepairedEvent

from .metrics import SchedulerMetrics
from .reconcile import Grace, Problem, Repair, Suspects, reconcile, still_wrong

log = logging.getLogger(__name__)

# The reason an `instance.stopped` gives for an instance record that a repair deleted.
STOP_REASONS: dict[Problem, str] = {
    "worker_gone": "worker gone",
    "worker_dead": "worker died",
    "worker_restarted": "worker restarted",
    "not_held": "not on its worker",
    "stuck_ending": "its worker never retired it",
    "unrecorded": "no record",
}


class Reconciler:
    """One reconciliation pass at a time; remembers suspects from one pass to the next."""

    def __init__(
        self,
        bus: Bus,
        state: ClusterState,
        grace: Grace | None = None,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self.bus = bus
        self.state = state
        self.grace = grace or Grace()
        self.metrics = metrics or SchedulerMetrics()
        self._suspects: Suspects = {}

    async def run(self) -> list[Repair]:
        """One pass; returns the repairs it made."""
        # Workers before instances: a placement in between shows as a record its worker does
        # not hold yet, which the record's grace covers (the other order has no such cover).
        workers = await self.state.workers()
        instances = await self.state.all_instances()
        self.metrics.cluster(workers, instances)
        decided = reconcile(
            workers, instances, now=time.time(), suspects=self._suspects, grace=self.grace
        )
        self._suspects = decided.suspects
        made = []
        for repair in decided.repairs:
            if await self.state.repair(
                repair.worker_id,
                repair.instance_id,
                free_worker=repair.free_worker,
                delete_record=repair.delete_record,
                still=partial(still_wrong, repair),
            ):
                made.append(repair)
                await self._announce(repair)
        return made

    async def _announce(self, r: Repair) -> None:
        log.warning(
            "repaired %s (worker %s, instance %s): %s",
            r.problem,
            r.worker_id,
            r.instance_id,
            r.detail,
        )
        await self.bus.emit(
            RecordRepairedEvent(
                problem=r.problem,
                worker_id=r.worker_id,
                instance_id=r.instance_id,
                model=r.model,
                freed_worker=r.free_worker,
                deleted_record=r.delete_record,
                detail=r.detail,
            )
        )
        if r.delete_record:
            await self.bus.emit(
                InstanceStoppedEvent(
                    instance_id=r.instance_id,
                    model=r.model,
                    worker_id=r.worker_id,
                    reason=STOP_REASONS[r.problem],
                )
            )
