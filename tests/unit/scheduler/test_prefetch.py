"""Which nodes a newly deployed model is prefetched to, on crafted cluster states."""

from __future__ import annotations

import pytest

from services.scheduler.prefetch import NodeState, prefetch_targets

pytestmark = pytest.mark.unit

GB = 1_000_000_000


def _node(node_id: str, **kw: object) -> NodeState:
    base: dict[str, object] = {
        "workers": 1,
        "free_workers": 1,
        "dram_capacity": 8 * GB,
        "dram_used": 0,
    }
    return NodeState(node_id=node_id, **{**base, **kw})  # type: ignore[arg-type]


def test_zero_replicas_prefetch_nothing() -> None:
    assert prefetch_targets("m", GB, [_node("a")], 0) == []


def test_nodes_already_holding_it_in_dram_count() -> None:
    nodes = [_node("a", holds_dram=True), _node("b"), _node("c")]
    assert prefetch_targets("m", GB, nodes, 1) == []
    assert len(prefetch_targets("m", GB, nodes, 2)) == 1
    assert "a" not in prefetch_targets("m", GB, nodes, 3)


def test_a_node_with_a_free_worker_beats_a_busy_one() -> None:
    nodes = [_node("busy", free_workers=0, holds_ssd=True), _node("free")]
    assert prefetch_targets("m", GB, nodes, 1) == ["free"]


def test_room_without_eviction_then_an_ssd_copy_decide() -> None:
    full = _node("full", dram_used=8 * GB, holds_ssd=True)
    roomy = _node("roomy")
    on_ssd = _node("on-ssd", holds_ssd=True)
    assert prefetch_targets("m", GB, [full, roomy, on_ssd], 1) == ["on-ssd"]
    assert prefetch_targets("m", GB, [full, roomy], 1) == ["roomy"]
    assert prefetch_targets("m", GB, [full], 1) == ["full"]  # LRU makes room there


def test_nodes_without_workers_or_too_small_a_tier_are_never_chosen() -> None:
    nodes = [_node("no-workers", workers=0, free_workers=0), _node("tiny", dram_capacity=GB // 2)]
    assert prefetch_targets("m", GB, nodes, 2) == []


def test_more_free_workers_then_more_free_dram() -> None:
    nodes = [
        _node("one"),
        _node("two", workers=2, free_workers=2),
        _node("fuller", dram_used=4 * GB),
    ]
    assert prefetch_targets("m", GB, nodes, 3) == ["two", "one", "fuller"]


def test_equal_nodes_spread_models_deterministically() -> None:
    nodes = [_node(f"n{i}") for i in range(8)]
    picks = {prefetch_targets(f"model-{k}", GB, nodes, 1)[0] for k in range(32)}
    assert len(picks) > 1  # not every model on the same node
    assert prefetch_targets("x", GB, nodes, 1) == prefetch_targets("x", GB, nodes[::-1], 1)


def test_an_unknown_size_rules_out_no_node() -> None:
    assert prefetch_targets("m", 0, [_node("a", dram_capacity=1)], 1) == ["a"]
