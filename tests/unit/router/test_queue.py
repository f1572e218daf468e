"""The cold-start wait queue: bounded per model, FIFO, rejoining keeps one's place."""

from __future__ import annotations

import pytest

from libs.protocol.errors import OverloadedError
from services.router.queue import WaitQueue

pytestmark = pytest.mark.unit


def test_queue_is_fifo_per_model() -> None:
    q: WaitQueue[str] = WaitQueue(capacity=4)
    for item in ("a1", "a2", "a3"):
        q.join("a", item)
    q.join("b", "b1")
    assert (q.depth("a"), q.depth("b"), len(q)) == (3, 1, 4)
    assert q.take_all("a") == ["a1", "a2", "a3"]
    assert q.depth("a") == 0
    assert list(q.models()) == ["b"]


def test_full_queue_refuses_new_requests_with_overloaded() -> None:
    q: WaitQueue[str] = WaitQueue(capacity=2)
    q.join("m", "x")
    q.join("m", "y")
    with pytest.raises(OverloadedError, match="the limit is 2"):
        q.join("m", "z")
    q.join("other", "z")  # the bound is per model
    assert q.depth("m") == 2


def test_rejoining_keeps_its_place_and_is_never_refused() -> None:
    q: WaitQueue[str] = WaitQueue(capacity=2)
    first = q.join("m", "first")
    second = q.join("m", "second")
    assert q.take_all("m") == ["first", "second"]
    later = [q.join("m", "late1"), q.join("m", "late2")]
    # Both woken requests found nothing ready and wait again: ahead of later arrivals,
    # even though the queue is at its limit.
    q.join("m", "second", ticket=second)
    q.join("m", "first", ticket=first)
    assert q.take_all("m") == ["first", "second", "late1", "late2"]
    assert later == sorted(later)


def test_leave_removes_only_that_request() -> None:
    q: WaitQueue[str] = WaitQueue(capacity=3)
    a = q.join("m", "a")
    b = q.join("m", "b")
    assert q.leave("m", a)
    assert not q.leave("m", a)
    assert not q.leave("unknown", b)
    assert q.take_all("m") == ["b"]
    assert q.take_all("m") == []
    assert list(q.models()) == []


def test_refusal_leaves_no_empty_entry_behind() -> None:
    q: WaitQueue[str] = WaitQueue(capacity=1)
    q.join("m", "a")
    q.take_all("m")
    assert list(q.models()) == []


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        WaitQueue(capacity=0)
