"""LRU eviction decisions, capacity accounting, bandwidth estimates and progress throttling."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.storage.bandwidth import BandwidthEstimator, ProgressThrottle
from services.storage.lru import TierCatalog, TierEntry, plan_eviction, refusal_reason

pytestmark = pytest.mark.unit


def _entries(*specs: tuple[str, int, int]) -> dict[str, TierEntry]:
    return {m: TierEntry(m, Path("/t") / m, b, "file:///x", used) for m, b, used in specs}


def test_nothing_is_evicted_when_it_fits() -> None:
    e = _entries(("a", 40, 1), ("b", 40, 2))
    assert plan_eviction(e, capacity=100, reserved=0, need=20) == []


def test_least_recently_used_go_first_and_only_as_many_as_needed() -> None:
    e = _entries(("a", 30, 3), ("b", 30, 1), ("c", 30, 2))
    assert plan_eviction(e, capacity=100, reserved=0, need=40) == ["b"]
    assert plan_eviction(e, capacity=100, reserved=0, need=70) == ["b", "c"]


def test_pinned_checkpoints_are_never_victims() -> None:
    e = _entries(("a", 30, 3), ("b", 30, 1), ("c", 30, 2))
    assert plan_eviction(e, capacity=100, reserved=0, need=40, pinned={"b"}) == ["c"]
    assert plan_eviction(e, capacity=100, reserved=0, need=70, pinned={"b", "c"}) is None


def test_an_in_use_lru_copy_is_skipped_and_the_next_oldest_goes() -> None:
    """The least recently used copy serves a live instance: the eviction passes it over and
    takes the next ones, in LRU order."""
    e = _entries(("in-use", 30, 1), ("b", 30, 2), ("c", 30, 3))
    assert plan_eviction(e, capacity=100, reserved=0, need=60, pinned={"in-use"}) == ["b", "c"]


def test_refusal_says_whether_the_copy_is_too_large_or_the_room_is_pinned() -> None:
    e = _entries(("a", 60, 1))
    assert plan_eviction(e, capacity=100, reserved=0, need=50, pinned={"a"}) is None
    assert refusal_reason(100, 50) == "pinned"
    assert refusal_reason(100, 101) == "too_large"


def test_reservations_count_as_used() -> None:
    e = _entries(("a", 30, 1))
    assert plan_eviction(e, capacity=100, reserved=50, need=10) == []
    assert plan_eviction(e, capacity=100, reserved=50, need=30) == ["a"]
    assert plan_eviction(e, capacity=100, reserved=80, need=30) is None


def test_a_checkpoint_larger_than_the_tier_evicts_nothing() -> None:
    e = _entries(("a", 30, 1))
    assert plan_eviction(e, capacity=100, reserved=0, need=101) is None


def test_unlimited_capacity_never_evicts() -> None:
    e = _entries(("a", 1 << 40, 1))
    assert plan_eviction(e, capacity=None, reserved=0, need=1 << 40) == []


def test_catalog_touch_makes_an_entry_most_recent() -> None:
    cat = TierCatalog("dram", Path("/t"), capacity=100)
    for m in ("a", "b", "c"):
        cat.add(TierEntry(m, Path("/t") / m, 30, "u"))
    assert cat.plan(20) == ["a"]
    cat.touch("a")
    assert cat.plan(20) == ["b"]
    cat.reserve(10)
    assert cat.used == 100
    assert cat.plan(50) == ["b", "c"]
    cat.release(10)
    assert cat.pop("b") is not None
    assert cat.plan(20) == []


def test_bandwidth_median_shrugs_off_one_outlier() -> None:
    est = BandwidthEstimator(window=5, min_bytes=1)
    for _ in range(4):
        est.add(1000, 1.0)
    est.add(1000, 0.001)  # one absurdly fast sample (a page-cache hit)
    assert est.value == pytest.approx(1000.0)


def test_bandwidth_follows_a_lasting_change_within_the_window() -> None:
    est = BandwidthEstimator(window=4, min_bytes=1)
    for _ in range(4):
        est.add(1000, 1.0)
    for _ in range(3):
        est.add(4000, 1.0)
    assert est.value == pytest.approx(4000.0)


def test_small_transfers_never_count() -> None:
    """A 2 MB fetch that paid a one-off import measured 0.65 MB/s and made the scheduler
    estimate hours: small samples must not become the estimate."""
    est = BandwidthEstimator(min_bytes=1000)
    assert not est.add(10, 1.0)
    assert est.value is None
    assert est.add(5000, 1.0)
    assert not est.add(10, 0.001)
    assert est.value == pytest.approx(5000.0)
    assert not est.add(0, 1.0)
    assert not est.add(5000, 0.0)


def test_seed_is_a_starting_point_only() -> None:
    est = BandwidthEstimator(window=3, min_bytes=1)
    est.seed(100.0)
    assert est.value == pytest.approx(100.0)
    est.seed(5.0)  # ignored: there is already an estimate
    assert est.value == pytest.approx(100.0)
    for _ in range(3):
        est.add(300, 1.0)
    assert est.value == pytest.approx(300.0)


def test_progress_reports_every_step_or_interval_and_the_end() -> None:
    th = ProgressThrottle(total=1000, interval=0.5, step=0.1)
    assert th.due(10, now=0.0)  # first bytes
    assert not th.due(50, now=0.1)  # neither 10% more nor 0.5 s later
    assert th.due(120, now=0.2)  # 10% more
    assert th.due(130, now=0.8)  # 0.5 s later
    assert not th.due(130, now=5.0)  # nothing new
    assert th.due(1000, now=0.81)  # the end is always reported
