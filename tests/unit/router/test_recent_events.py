"""`recent_events`: the bounded ring of events in words, load phases, tokens per second."""

from __future__ import annotations

import pytest

from libs.protocol.events import (
    EVENT_TYPES,
    DeploymentEvent,
    InstanceReadyEvent,
    LoadPhaseEvent,
    MigrationCommittedEvent,
    RequestCompletedEvent,
    ScaledEvent,
    ServiceStartedEvent,
)
from services.router.recent_events import (
    RING_TYPES,
    EventFollower,
    LoadPhases,
    RecentEvents,
    Throughput,
    summarize,
)

pytestmark = pytest.mark.unit


def _ready(iid: str = "i1", ts: float = 10.0) -> InstanceReadyEvent:
    return InstanceReadyEvent(
        instance_id=iid,
        model="demo",
        worker_id="w0",
        node_id="n1",
        source_tier="ssd",
        load_s=1.5,
        ts=ts,
    )


def _done(model: str, iid: str, tokens: int, ts: float) -> RequestCompletedEvent:
    return RequestCompletedEvent(
        request_id=f"r{ts}",
        model=model,
        instance_id=iid,
        status="ok",
        completion_tokens=tokens,
        ts=ts,
    )


def test_ring_keeps_the_newest_events_in_words_newest_first() -> None:
    ring = RecentEvents(size=3)
    for k in range(5):
        ring.add(DeploymentEvent(name=f"m{k}", action="created", ts=float(k)))
    lines = ring.newest_first()
    assert [line.summary for line in lines] == [
        "deployment m4 created",
        "deployment m3 created",
        "deployment m2 created",
    ]
    assert [line.time for line in ring.newest_first(limit=1)] == [4.0]
    assert lines[0].kind == "deployment.changed"


def test_ring_skips_kinds_it_does_not_keep() -> None:
    ring = RecentEvents()
    ring.add(ServiceStartedEvent(service="router", version="1"))
    ring.add(_done("demo", "i1", 5, 1.0))
    assert ring.newest_first() == []


def test_every_kept_kind_has_a_summary() -> None:
    assert summarize(_ready()) == "demo: instance i1 ready on w0 (from ssd in 1.50 s)"
    scaled = ScaledEvent(model="demo", from_instances=1, to_instances=3, reason="demand")
    assert summarize(scaled) == "demo: scaled 1 -> 3 instances (demand)"
    committed = MigrationCommittedEvent(
        migration_id="m",
        request_id="r1",
        source_instance_id="i1",
        source_worker_id="w0",
        instance_id="i2",
        worker_id="w1",
        inbox="_INBOX.x",
        start_seq=4,
        rounds=2,
        tokens_recomputed=30,
        pause_s=0.012,
    )
    assert summarize(committed) == "request r1 migrated w0 -> w1, paused 12 ms"
    # Every kept type is a registered event kind (so the router can subscribe to it).
    assert all(cls in EVENT_TYPES.values() for cls in RING_TYPES)


def test_load_phase_is_followed_until_the_instance_is_ready() -> None:
    phases = LoadPhases()
    for phase in ("ensure", "read"):
        phases.add(
            LoadPhaseEvent(instance_id="i1", model="demo", worker_id="w0", phase=phase, seconds=0.1)
        )
    assert phases.phase("i1") == "read"
    assert phases.phase("other") == ""
    phases.add(_ready("i1"))
    assert phases.phase("i1") == ""


def test_load_phases_are_bounded() -> None:
    phases = LoadPhases(size=2)
    for k in range(3):
        phases.add(
            LoadPhaseEvent(instance_id=f"i{k}", model="m", worker_id="w", phase="read", seconds=0)
        )
    assert [phases.phase(f"i{k}") for k in range(3)] == ["", "read", "read"]


def test_tokens_per_second_is_over_the_window_per_instance_and_model() -> None:
    rate = Throughput(window_s=10.0)
    rate.add(_done("demo", "i1", 50, ts=100.0))
    rate.add(_done("demo", "i2", 30, ts=105.0))
    rate.add(_done("demo", "i1", 20, ts=108.0))
    assert rate.requests == {"demo": 3}
    assert rate.instance_tokens_per_s("i1", now=109.0) == 7.0
    assert rate.model_tokens_per_s("demo", now=109.0) == 10.0
    # The first request fell out of the window; the count of requests stays.
    assert rate.model_tokens_per_s("demo", now=112.0) == 5.0
    assert rate.instance_tokens_per_s("unknown", now=112.0) == 0.0
    assert rate.requests == {"demo": 3}


def test_a_request_that_never_reached_an_instance_counts_for_its_model_only() -> None:
    rate = Throughput(window_s=10.0)
    rate.add(_done("demo", "", 0, ts=1.0))
    assert rate.requests == {"demo": 1}
    assert rate.instance_tokens_per_s("", now=2.0) == 0.0


def test_follower_feeds_all_three_and_subscribes_to_their_kinds() -> None:
    follower = EventFollower()
    follower.add(
        LoadPhaseEvent(instance_id="i1", model="demo", worker_id="w0", phase="build", seconds=1)
    )
    follower.add(_done("demo", "i1", 10, ts=5.0))
    follower.add(_ready("i1", ts=6.0))
    assert follower.phases.phase("i1") == ""
    assert follower.throughput.requests == {"demo": 1}
    assert [e.kind for e in follower.recent.newest_first()] == ["instance.ready"]
    kinds = list(follower.kinds())
    assert {"load.phase", "request.completed", "instance.ready", "storage.evicted"} <= set(kinds)
    assert all(k in EVENT_TYPES for k in kinds)
