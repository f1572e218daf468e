"""Failover decisions: which errors resume a generation, which silent instances to check, and
what a liveness check's answers mean."""

from __future__ import annotations

import pytest

from libs.protocol.errors import (
    BadReplyError,
    BadRequestError,
    BusTimeoutError,
    InternalError,
    NotFoundError,
    UnavailableError,
)
from libs.protocol.state import WorkerRecord
from services.router.failover import Probe, gone_reason, latest, may_fail_over, resumable, silent

pytestmark = pytest.mark.unit


def worker(instance_id: str = "i-1", *, alive: bool = True) -> WorkerRecord:
    return WorkerRecord(
        worker_id="w0", node_id="n0", device="cpu", instance_id=instance_id, alive=alive
    )


def test_only_errors_meaning_the_producer_is_gone_resume() -> None:
    assert resumable(UnavailableError("instance i-1 ended: worker died"))
    assert resumable(BusTimeoutError("no frame within 60s"))
    # The request itself or the worker's code is at fault: trying elsewhere would not help.
    for exc in (
        BadRequestError("too long"),
        InternalError("device lost"),
        NotFoundError("no model"),
        BadReplyError("garbage"),
        ValueError("x"),
    ):
        assert not resumable(exc)


def test_failover_is_bounded_and_needs_an_unfinished_started_generation() -> None:
    assert may_fail_over(done=0, limit=2, finished=False, started=True)
    assert may_fail_over(done=1, limit=2, finished=False, started=True)
    assert not may_fail_over(done=2, limit=2, finished=False, started=True)
    assert not may_fail_over(done=0, limit=0, finished=False, started=True)  # off
    assert not may_fail_over(done=0, limit=2, finished=True, started=True)
    assert not may_fail_over(done=0, limit=2, finished=False, started=False)


def test_silent_names_instances_quiet_for_the_interval_not_checked_lately() -> None:
    last_frame = {"a": 10.0, "b": 9.4, "c": 7.0}
    # At 10.5 with a 1 s interval: b and c are silent; c was checked 0.5 s ago.
    assert silent(last_frame, 10.5, 1.0, {"c": 10.0}) == ["b"]
    assert silent(last_frame, 10.5, 1.0, {"c": 9.5}) == ["b", "c"]
    assert silent(last_frame, 10.5, 1.0, {}) == ["b", "c"]
    assert silent(last_frame, 10.5, 0.0, {}) == []  # off
    assert silent({}, 10.5, 1.0, {}) == []


def test_latest_keeps_the_newest_time_per_key() -> None:
    assert latest([("a", 1.0), ("b", 2.0), ("a", 3.0), ("a", 2.0)]) == {"a": 3.0, "b": 2.0}
    assert latest([]) == {}


def test_no_responders_is_definitive() -> None:
    why = gone_reason("no_responders", worker(), "i-1")
    assert why is not None
    assert "no responders" in why


@pytest.mark.parametrize("probe", ["answered", "timeout", "error"])
def test_the_workers_record_decides_otherwise(probe: Probe) -> None:
    assert gone_reason(probe, worker("i-1"), "i-1") is None
    gone = [
        gone_reason(probe, None, "i-1"),
        gone_reason(probe, worker("i-1", alive=False), "i-1"),
        gone_reason(probe, worker(""), "i-1"),  # restarted: free
        gone_reason(probe, worker("i-2"), "i-1"),  # given away
    ]
    assert all(why for why in gone), gone
    assert "restarted" in str(gone[2])
