"""The autoscaling policy and the scheduler's demand/activity books, on crafted snapshots."""

from __future__ import annotations

import math

import pytest

from libs.protocol.messages import DemandReport, ModelDemand
from services.scheduler.autoscaler import (
    InstanceView,
    ModelView,
    Scaling,
    Snapshot,
    Start,
    Stop,
    desired_instances,
    may_take_worker,
    plan,
    remaining_load_s,
    start_beside_loading,
)
from services.scheduler.demand import ActivityBook, DemandBook

pytestmark = pytest.mark.unit

NOW = 1000.0


def ready(iid: str, *, idle_since: float = 0.0, keep: float = 0.0, **kw: bool) -> InstanceView:
    return InstanceView(iid, "ready", idle_since=idle_since, keep_until=keep, **kw)


def model(name: str, *instances: InstanceView, **kw: object) -> ModelView:
    scaling = kw.pop("scaling", Scaling(min_instances=0, max_instances=3, target_concurrency=2))
    return ModelView(name, scaling, instances=instances, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("demand", "lo", "hi", "target", "want"),
    [
        (0, 0, 3, 2, 0),  # scale to zero
        (0, 1, 3, 2, 1),  # never below min
        (1, 0, 3, 2, 1),
        (4, 0, 3, 2, 2),
        (5, 0, 3, 2, 3),
        (100, 0, 3, 2, 3),  # capped at max
    ],
)
def test_desired_is_ceil_of_demand_over_target_within_min_and_max(
    demand: int, lo: int, hi: int, target: int, want: int
) -> None:
    scaling = Scaling(min_instances=lo, max_instances=hi, target_concurrency=target)
    assert desired_instances(demand, scaling) == want


def test_burst_scales_a_cold_model_up_to_max_with_free_workers() -> None:
    snap = Snapshot(NOW, [model("a", demand=9, queued=9, waiting_since=NOW - 1)], free_workers=5)
    out = plan(snap)
    assert out.desired == {"a": 3}
    assert out.starts == [Start("a", 1, "demand"), Start("a", 2, "demand"), Start("a", 3, "demand")]
    assert out.stops == []
    assert out.starved == {}


def test_loading_instances_count_towards_desired() -> None:
    loading = InstanceView("i1", "loading")
    snap = Snapshot(NOW, [model("a", loading, demand=3, queued=3)], free_workers=5)
    assert plan(snap).starts == [Start("a", 2, "demand")]


def test_min_instances_are_started_without_demand() -> None:
    scaling = Scaling(min_instances=2, max_instances=3)
    out = plan(Snapshot(NOW, [model("a", scaling=scaling)], free_workers=5))
    assert out.starts == [Start("a", 1, "min_instances"), Start("a", 2, "min_instances")]


def test_idle_instance_stops_after_keep_alive_and_not_before() -> None:
    inst = ready("i1", idle_since=NOW - 10, keep=NOW + 5)
    early = plan(Snapshot(NOW, [model("a", inst)], free_workers=0))
    assert early.stops == []
    assert early.wake_at == NOW + 5
    late = plan(Snapshot(NOW + 5, [model("a", inst)], free_workers=0))
    assert late.stops == [Stop("a", "i1", "idle")]
    assert late.wake_at is None


def test_never_below_min_nor_busy_nor_loading_nor_kept_indefinitely() -> None:
    scaling = Scaling(min_instances=1, max_instances=3)
    old = ready("i1", idle_since=0.0)
    busy = ready("i2", busy=True)
    forever = ready("i3", keep=math.inf)
    loading = InstanceView("i4", "loading")
    out = plan(Snapshot(NOW, [model("a", old, busy, forever, loading, scaling=scaling)], 0))
    # Desired 1, live 4: only the idle, expired one may go; the rest are busy, kept or loading.
    assert out.stops == [Stop("a", "i1", "idle")]
    assert out.wake_at is None  # nothing else can expire by itself
    alone = plan(Snapshot(NOW, [model("a", old, scaling=scaling)], 0))
    assert alone.stops == []  # the minimum stays


def test_surplus_stops_the_instance_whose_keep_alive_ended_first() -> None:
    a = ready("i1", idle_since=NOW - 50, keep=NOW - 1)
    b = ready("i2", idle_since=NOW - 90, keep=NOW - 20)
    c = ready("i3", busy=True)
    # Demand 3 with target 2: desired 2 of 3 live; one stops: the one expired longest.
    out = plan(Snapshot(NOW, [model("a", a, b, c, demand=3)], free_workers=0))
    assert out.stops == [Stop("a", "i2", "idle")]


def test_stops_already_under_way_are_not_repeated_and_count_as_gone() -> None:
    going = ready("i1", stopping=True)
    other = ready("i2", idle_since=NOW - 100, keep=NOW - 1)
    out = plan(Snapshot(NOW, [model("a", going, other)], free_workers=0))
    assert out.stops == [Stop("a", "i2", "idle")]


def test_scarce_workers_go_to_cold_models_oldest_wait_first() -> None:
    warm = model("warm", ready("w1", busy=True), demand=6, waiting_since=NOW - 30)
    young = model("young", demand=1, queued=1, waiting_since=NOW - 1)
    old = model("old", demand=1, queued=1, waiting_since=NOW - 5)
    out = plan(Snapshot(NOW, [warm, young, old], free_workers=2))
    assert out.starts == [Start("old", 1, "demand"), Start("young", 1, "demand")]
    one = plan(Snapshot(NOW, [warm, young, old], free_workers=1))
    assert one.starts == [Start("old", 1, "demand")]
    assert one.starved == {"young": NOW - 1}


def test_growth_is_shared_round_robin_by_wait() -> None:
    a = model("a", ready("a1", busy=True), demand=6, waiting_since=NOW - 2)
    b = model("b", ready("b1", busy=True), demand=6, waiting_since=NOW - 9)
    out = plan(Snapshot(NOW, [a, b], free_workers=3))
    assert out.starts == [Start("b", 2, "demand"), Start("a", 2, "demand"), Start("b", 3, "demand")]


def test_cold_model_preempts_the_longest_idle_unneeded_instance() -> None:
    cold = model("cold", demand=2, queued=2, waiting_since=NOW - 3)
    recent = model("recent", ready("r1", idle_since=NOW - 5, keep=NOW + 100))
    oldest = model("oldest", ready("o1", idle_since=NOW - 60, keep=NOW + 100))
    busy = model("busy", ready("b1", busy=True))
    needed = model("needed", ready("n1", idle_since=0.0), demand=1)  # desired 1: needed
    out = plan(Snapshot(NOW, [cold, recent, oldest, busy, needed], free_workers=0))
    assert out.stops == [Stop("oldest", "o1", "preempted", for_model="cold")]
    assert out.starved == {"cold": NOW - 3}
    assert out.starts == []


def test_no_preemption_of_busy_instances_or_below_min() -> None:
    cold = model("cold", demand=1, queued=1, waiting_since=NOW - 3)
    busy = model("busy", ready("b1", busy=True))
    floor = model("floor", ready("f1"), scaling=Scaling(min_instances=1, max_instances=1))
    out = plan(Snapshot(NOW, [cold, busy, floor], free_workers=0))
    assert out.stops == []
    assert out.starved == {"cold": NOW - 3}


def test_a_worker_being_freed_serves_the_oldest_waiter_before_more_preemption() -> None:
    going = model("going", ready("g1", stopping=True))
    idle = model("idle", ready("x1", idle_since=NOW - 9, keep=NOW + 100))
    first = model("first", demand=1, queued=1, waiting_since=NOW - 8)
    second = model("second", demand=1, queued=1, waiting_since=NOW - 4)
    out = plan(Snapshot(NOW, [going, idle, first, second], free_workers=0))
    # "first" gets the worker being freed; "second" preempts the idle instance.
    assert out.stops == [Stop("idle", "x1", "preempted", for_model="second")]


def test_min_instances_without_demand_never_preempt() -> None:
    floor = model("floor", scaling=Scaling(min_instances=1, max_instances=1))
    idle = model("idle", ready("x1"))
    out = plan(Snapshot(NOW, [floor, idle], free_workers=0))
    assert out.stops == [Stop("idle", "x1", "idle")]  # its own keep-alive (0) ended, that's all
    assert out.starved == {}


def test_waiting_for_a_load_under_way_beats_a_slower_new_start() -> None:
    assert remaining_load_s(10.0, started_at=100.0, now=104.0) == 6.0
    assert remaining_load_s(10.0, started_at=100.0, now=200.0) == 0.0
    assert not start_beside_loading([6.0], best_new_s=8.0)  # wait for the load under way
    assert start_beside_loading([6.0], best_new_s=1.0)  # a DRAM hit elsewhere is faster
    assert not start_beside_loading([6.0], best_new_s=None)  # no free worker
    assert start_beside_loading([], best_new_s=30.0)


def test_direct_placement_yields_to_models_that_waited_longer() -> None:
    starved = {"old": 10.0, "older": 5.0}
    assert not may_take_worker("new", 20.0, starved, free_workers=2)
    assert may_take_worker("new", 20.0, starved, free_workers=3)
    assert may_take_worker("old", 10.0, starved, free_workers=2)  # only "older" is ahead
    assert not may_take_worker("unknown", None, starved, free_workers=1)
    assert may_take_worker("x", None, {}, free_workers=1)


def _report(router: str, ttl: float = 5.0, **models: tuple[int, int, float]) -> DemandReport:
    return DemandReport(
        router_id=router,
        ttl_s=ttl,
        models={
            m: ModelDemand(requests=r, queued=q, oldest_wait_s=w) for m, (r, q, w) in models.items()
        },
    )


def test_demand_book_sums_routers_and_forgets_a_silent_one() -> None:
    book = DemandBook()
    assert book.apply(_report("r1", a=(3, 1, 2.0)), now=100.0) == {"a"}
    assert book.apply(_report("r2", ttl=1.0, a=(2, 2, 5.0), b=(1, 0, 0.0)), now=101.0) == {
        "a",
        "b",
    }
    a = book.get("a")
    assert (a.requests, a.queued, a.waiting_since) == (5, 3, 96.0)
    assert book.apply(_report("r1", a=(3, 1, 2.0)), now=100.5) == set()  # no change
    assert book.next_expiry() == 102.0
    assert book.expire(now=102.0) == {"a", "b"}
    assert book.get("a").requests == 3
    assert book.get("b").requests == 0
    assert book.apply(_report("r1"), now=103.0) == {"a"}  # an empty report: nothing left
    assert book.totals() == {}


def test_activity_book_orders_news_by_request_count() -> None:
    book = ActivityBook()
    assert book.idle("i1", requests=3, at=50.0, keep_until=80.0)
    # A busy refusal that knows no more requests than the idle news is older news.
    book.refused("i1", requests=3, in_flight=1, retry_after_s=None, now=60.0)
    assert not book.get("i1").busy  # type: ignore[union-attr]
    book.refused("i1", requests=4, in_flight=1, retry_after_s=None, now=61.0)
    assert book.get("i1").busy  # type: ignore[union-attr]
    assert not book.idle("i1", requests=2, at=62.0, keep_until=None)  # stale
    assert book.idle("i1", requests=4, at=63.0, keep_until=None)
    assert book.get("i1").keep_until == math.inf  # type: ignore[union-attr]
    book.refused("i1", requests=4, in_flight=0, retry_after_s=7.0, now=70.0)
    act = book.get("i1")
    assert act is not None
    assert act.retry_at == 77.0
    assert act.idle_since == 63.0
    book.keep_only(set())
    assert book.get("i1") is None
