"""Reconciliation: which worker reservations and instance records in the cluster state contradict
each other, and what repairs them (a pure decision on a snapshot, like the other policies).

The normal paths keep the records consistent (a worker retires its instance atomically, the
scheduler forgets the instances of a dead worker); this is the last line of defence against
whatever slipped through: a crash between two writes, a lost unload, a bug. A record that may
be legitimately in between (a placement reserves the worker, then writes the record) is only
repaired once it has looked wrong for a grace period: its own timestamp where it has one,
else since a pass first saw it (``suspects``, carried from one pass to the next).
`still_wrong` re-checks a repair on the records as they are when it is applied (atomically,
see `ClusterState.repair`), so that a repair decided on a stale snapshot never undoes news.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from libs.protocol.state import InstanceRecord, WorkerRecord

# What was wrong:
# - worker_gone: the instance's worker is not registered (any more);
# - worker_dead: its worker's heartbeat lapsed;
# - worker_restarted: its worker registered again since it was placed (and came back free);
# - not_held: its worker, alive, holds another instance or none;
# - stuck_ending: it failed or is stopping, and its worker still holds it long after a
#   teardown would have retired it (the worker could not reach the store in time);
# - unrecorded: a worker is reserved for an instance that has no record, or whose record
#   names another worker.
Problem = Literal[
    "worker_gone", "worker_dead", "worker_restarted", "not_held", "stuck_ending", "unrecorded"
]
ENDING = frozenset({"failed", "stopping"})


@dataclass(frozen=True)
class Grace:
    """How long a suspicious record may stay so before it is repaired (seconds)."""

    # A reservation without its record: the placement writes the record right after it
    # reserves, and a scheduler that died in between leaves it so for good.
    reservation_s: float = 30.0
    # A record whose worker does not hold it, counted from its `created_at`: a snapshot
    # read while a placement is under way can see the record but not yet the reservation.
    record_s: float = 10.0
    # A failed or stopping instance its worker still holds: a teardown takes seconds (the
    # engine's grace to stop, the drain, the retire with retries).
    ending_s: float = 60.0


@dataclass(frozen=True)
class Repair:
    """One repair: free ``worker_id`` (if it still holds ``instance_id``) and/or delete the
    instance's record."""

    problem: Problem
    worker_id: str
    instance_id: str
    model: str  # the record's model ("" when there is no record)
    free_worker: bool
    delete_record: bool
    detail: str


# A suspect: (problem, worker id, instance id) -> when a pass first saw it (wall time).
Suspects = dict[tuple[str, str, str], float]


@dataclass(frozen=True)
class Reconciliation:
    repairs: list[Repair]
    suspects: Suspects = field(default_factory=dict)  # give these to the next pass


def reconcile(
    workers: Sequence[WorkerRecord],
    instances: Sequence[InstanceRecord],
    *,
    now: float,
    suspects: Mapping[tuple[str, str, str], float],
    grace: Grace,
) -> Reconciliation:
    """The repairs the snapshot calls for (``now``: wall time, as records' timestamps)."""
    by_worker = {w.worker_id: w for w in workers}
    by_id = {i.instance_id: i for i in instances}
    repairs: list[Repair] = []
    seen: Suspects = {}

    def overdue(key: tuple[str, str, str], limit: float) -> bool:
        first = seen[key] = suspects.get(key, now)
        return now - first >= limit

    for rec in instances:
        w = by_worker.get(rec.worker_id)
        problem, detail = _record_problem(rec, w)
        if problem is None:
            continue
        if problem == "not_held" and now - rec.created_at < grace.record_s:
            continue
        key = (problem, rec.worker_id, rec.instance_id)
        if problem == "stuck_ending" and not overdue(key, grace.ending_s):
            continue
        holds = w is not None and w.instance_id == rec.instance_id
        repairs.append(
            Repair(problem, rec.worker_id, rec.instance_id, rec.model, holds, True, detail)
        )

    for w in workers:
        iid = w.instance_id
        if not iid:
            continue
        held = by_id.get(iid)
        if held is not None and held.worker_id == w.worker_id:
            continue
        key = ("unrecorded", w.worker_id, iid)
        if not overdue(key, grace.reservation_s):
            continue
        detail = (
            f"reserved for {iid}, which has no record"
            if held is None
            else f"reserved for {iid}, which is recorded on {held.worker_id}"
        )
        repairs.append(Repair("unrecorded", w.worker_id, iid, "", True, False, detail))
    return Reconciliation(repairs, seen)


def _record_problem(rec: InstanceRecord, w: WorkerRecord | None) -> tuple[Problem | None, str]:
    """What is wrong with an instance record given its worker's record (None: nothing)."""
    if w is None:
        return "worker_gone", f"its worker {rec.worker_id} is not registered"
    if not w.alive:
        return "worker_dead", f"its worker {rec.worker_id} stopped heartbeating"
    if rec.worker_epoch and rec.worker_epoch != w.epoch:
        return "worker_restarted", (
            f"its worker {rec.worker_id} registered again (epoch {rec.worker_epoch} -> {w.epoch})"
        )
    if w.instance_id != rec.instance_id:
        held = repr(w.instance_id) if w.instance_id else "nothing"
        return "not_held", f"its worker {rec.worker_id} holds {held}"
    if rec.status in ENDING:
        return "stuck_ending", f"still {rec.status} on {rec.worker_id}"
    return None, ""


def still_wrong(repair: Repair, worker: WorkerRecord | None, record: InstanceRecord | None) -> bool:
    """Whether ``repair`` is still called for by the records as they are now (the grace
    periods aside: they were served when it was decided)."""
    if repair.problem == "unrecorded":
        held = worker is not None and worker.instance_id == repair.instance_id
        return held and (record is None or record.worker_id != repair.worker_id)
    if record is None or record.worker_id != repair.worker_id:
        return False  # retired, or not the record it was decided on
    problem, _ = _record_problem(record, worker)
    return problem == repair.problem
