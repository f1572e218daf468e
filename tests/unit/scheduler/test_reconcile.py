"""Reconciliation decisions on crafted snapshots of worker and instance records."""

from __future__ import annotations

from typing import Any

import pytest

from libs.protocol.state import InstanceRecord, WorkerRecord
from services.scheduler.reconcile import Grace, Repair, reconcile, still_wrong

pytestmark = pytest.mark.unit

NOW = 1_000_000.0
GRACE = Grace(reservation_s=30.0, record_s=10.0, ending_s=60.0)
OLD = NOW - 3600.0


def worker(wid: str, holds: str = "", *, alive: bool = True, epoch: int = 1) -> WorkerRecord:
    return WorkerRecord(
        worker_id=wid, node_id="n0", device="cpu", instance_id=holds, alive=alive, epoch=epoch
    )


def instance(iid: str, wid: str, **kw: Any) -> InstanceRecord:
    fields: dict[str, Any] = {"status": "ready", "created_at": OLD, "worker_epoch": 1, **kw}
    return InstanceRecord(instance_id=iid, model="m", worker_id=wid, node_id="n0", **fields)


def decide(
    workers: list[WorkerRecord],
    instances: list[InstanceRecord],
    *,
    now: float = NOW,
    suspects: dict[tuple[str, str, str], float] | None = None,
) -> tuple[list[Repair], dict[tuple[str, str, str], float]]:
    out = reconcile(workers, instances, now=now, suspects=suspects or {}, grace=GRACE)
    return out.repairs, out.suspects


def summary(repairs: list[Repair]) -> list[tuple[str, str, str, bool, bool]]:
    return [
        (r.problem, r.worker_id, r.instance_id, r.free_worker, r.delete_record) for r in repairs
    ]


def test_consistent_records_need_no_repair() -> None:
    workers = [worker("w0", "i0"), worker("w1", "i1"), worker("w2")]
    instances = [
        instance("i0", "w0"),
        instance("i1", "w1", status="loading", created_at=NOW),
    ]
    assert decide(workers, instances) == ([], {})


def test_reconcile_frees_a_worker_reserved_by_an_instance_that_no_longer_exists() -> None:
    workers = [worker("w0", "i-gone")]
    # First seen now: a placement may be about to write the record.
    repairs, suspects = decide(workers, [])
    assert repairs == []
    assert suspects == {("unrecorded", "w0", "i-gone"): NOW}
    # Still so after the grace period: freed (the record is not deleted: there is none).
    later = NOW + GRACE.reservation_s
    repairs, suspects = decide(workers, [], now=later, suspects=suspects)
    assert summary(repairs) == [("unrecorded", "w0", "i-gone", True, False)]
    assert "no record" in repairs[0].detail
    assert suspects == {("unrecorded", "w0", "i-gone"): NOW}


def test_a_suspect_that_resolves_itself_is_forgotten() -> None:
    _, suspects = decide([worker("w0", "i0")], [])
    # The placement wrote its record: nothing to repair, and nothing left to watch.
    repairs, suspects = decide(
        [worker("w0", "i0")], [instance("i0", "w0", created_at=NOW)], suspects=suspects
    )
    assert (repairs, suspects) == ([], {})


def test_a_reservation_for_an_instance_recorded_on_another_worker_is_freed() -> None:
    workers = [worker("w0", "i1"), worker("w1", "i1")]
    instances = [instance("i1", "w1")]
    _, suspects = decide(workers, instances)
    repairs, _ = decide(workers, instances, now=NOW + 31, suspects=suspects)
    assert summary(repairs) == [("unrecorded", "w0", "i1", True, False)]
    assert "recorded on w1" in repairs[0].detail


def test_reconcile_forgets_an_instance_whose_worker_holds_another() -> None:
    workers = [worker("w0", "i-new")]
    instances = [instance("i-old", "w0"), instance("i-new", "w0")]
    repairs, _ = decide(workers, instances)
    assert summary(repairs) == [("not_held", "w0", "i-old", False, True)]
    assert "holds 'i-new'" in repairs[0].detail


def test_an_instance_whose_free_worker_does_not_hold_it_is_forgotten() -> None:
    repairs, _ = decide([worker("w0")], [instance("i0", "w0")])
    assert summary(repairs) == [("not_held", "w0", "i0", False, True)]
    assert "holds nothing" in repairs[0].detail


def test_a_record_younger_than_its_grace_is_left_alone() -> None:
    """A snapshot taken during a placement can show the record before the reservation."""
    young = instance("i0", "w0", status="loading", created_at=NOW - 9.0)
    assert decide([worker("w0")], [young]) == ([], {})
    repairs, _ = decide([worker("w0")], [young], now=NOW + 1.0)
    assert summary(repairs) == [("not_held", "w0", "i0", False, True)]


def test_instances_of_dead_gone_and_restarted_workers_are_forgotten_at_once() -> None:
    workers = [worker("w-dead", "i-dead", alive=False), worker("w-restarted", epoch=2)]
    instances = [
        instance("i-dead", "w-dead", created_at=NOW),
        instance("i-gone", "w-gone", created_at=NOW),
        instance("i-old", "w-restarted", created_at=NOW, worker_epoch=1),
    ]
    repairs, _ = decide(workers, instances)
    assert summary(repairs) == [
        # The dead worker still holds it: retired (record deleted, worker freed) at once.
        ("worker_dead", "w-dead", "i-dead", True, True),
        ("worker_gone", "w-gone", "i-gone", False, True),
        ("worker_restarted", "w-restarted", "i-old", False, True),
    ]


def test_a_record_of_unknown_epoch_is_judged_by_its_reservation_only() -> None:
    workers = [worker("w0", "i0", epoch=7)]
    assert decide(workers, [instance("i0", "w0", worker_epoch=0)]) == ([], {})


def test_an_instance_stuck_ending_is_retired_after_its_grace() -> None:
    workers = [worker("w0", "i0")]
    instances = [instance("i0", "w0", status="failed", error="boom")]
    repairs, suspects = decide(workers, instances)
    assert repairs == []
    assert suspects == {("stuck_ending", "w0", "i0"): NOW}
    repairs, _ = decide(workers, instances, now=NOW + 59, suspects=suspects)
    assert repairs == []
    repairs, _ = decide(workers, instances, now=NOW + 60, suspects=suspects)
    assert summary(repairs) == [("stuck_ending", "w0", "i0", True, True)]


def test_still_wrong_rechecks_a_repair_against_fresh_records() -> None:
    (unrecorded,) = reconcile(
        [worker("w0", "i0")], [], now=NOW, suspects={}, grace=Grace(reservation_s=0)
    ).repairs
    assert still_wrong(unrecorded, worker("w0", "i0"), None)
    # The placement wrote its record meanwhile, or the worker was freed: leave it.
    assert not still_wrong(unrecorded, worker("w0", "i0"), instance("i0", "w0"))
    assert not still_wrong(unrecorded, worker("w0"), None)

    (not_held,) = decide([worker("w0")], [instance("i0", "w0")])[0]
    assert still_wrong(not_held, worker("w0"), instance("i0", "w0"))
    assert not still_wrong(not_held, worker("w0", "i0"), instance("i0", "w0"))  # reserved now
    assert not still_wrong(not_held, worker("w0"), None)  # already retired
    # Its worker died since: another problem, decided (and announced) by the next pass.
    assert not still_wrong(not_held, worker("w0", alive=False), instance("i0", "w0"))
