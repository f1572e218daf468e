"""Placement decisions on crafted snapshots."""

from __future__ import annotations

import pytest

from services.scheduler.placement import (
    NodeView,
    WorkerView,
    checkpoint_bytes,
    estimate,
    rank,
    round_robin,
)

pytestmark = pytest.mark.unit

GB = 1_000_000_000


def _nodes() -> list[NodeView]:
    return [
        NodeView("n-registry"),
        NodeView("n-ssd", ssd={"m": 4 * GB}),
        NodeView("n-dram", dram={"m": 4 * GB}, ssd={"m": 4 * GB}),
    ]


def _workers(free: bool = True) -> list[WorkerView]:
    return [WorkerView(f"w-{n}", n, free) for n in ("n-registry", "n-ssd", "n-dram")]


def test_scheduler_prefers_dram_over_ssd_over_registry() -> None:
    ranked = rank("m", _workers(), _nodes())
    assert [(e.node_id, e.tier) for e in ranked] == [
        ("n-dram", "dram"),
        ("n-ssd", "ssd"),
        ("n-registry", "registry"),
    ]


def test_estimate_uses_measured_bandwidth_over_priors() -> None:
    node = NodeView("n", ssd={"m": 4 * GB}, bandwidth={"ssd": 2 * GB})
    e = estimate(WorkerView("w", "n", True), node, "m", 4 * GB)
    assert e.tier == "ssd"
    assert e.seconds == pytest.approx(2.0)


def test_registry_fetch_pays_fetch_and_ssd_read() -> None:
    node = NodeView("n", bandwidth={"registry": 1 * GB, "ssd": 4 * GB})
    e = estimate(WorkerView("w", "n", True), node, "m", 4 * GB)
    assert e.tier == "registry"
    assert e.seconds == pytest.approx(4.0 + 1.0)


def test_slow_measured_dram_can_lose_to_fast_ssd() -> None:
    nodes = [
        NodeView("a", dram={"m": GB}, bandwidth={"dram": 0.1 * GB}),
        NodeView("b", ssd={"m": GB}, bandwidth={"ssd": 2 * GB}),
    ]
    ranked = rank("m", [WorkerView("wa", "a", True), WorkerView("wb", "b", True)], nodes)
    assert ranked[0].worker_id == "wb"


def test_queue_wait_is_added() -> None:
    nodes = [NodeView("a", dram={"m": GB}), NodeView("b", ssd={"m": GB})]
    workers = [WorkerView("wa", "a", True, queue_s=60.0), WorkerView("wb", "b", True)]
    assert rank("m", workers, nodes)[0].worker_id == "wb"


def test_busy_workers_are_not_candidates() -> None:
    workers = [*_workers(free=False), WorkerView("w-free", "n-registry", True)]
    ranked = rank("m", workers, _nodes())
    assert [e.worker_id for e in ranked] == ["w-free"]
    assert rank("m", _workers(free=False), _nodes()) == []


def test_ties_spread_over_nodes_then_worker_id() -> None:
    nodes = [NodeView("a"), NodeView("b")]
    workers = [
        WorkerView("a0", "a", True),
        WorkerView("b0", "b", True),
        WorkerView("b1", "b", True),
    ]
    assert [e.worker_id for e in rank("m", workers, nodes)] == ["b0", "b1", "a0"]


def test_checkpoint_size_comes_from_any_node_or_default() -> None:
    assert checkpoint_bytes("m", _nodes(), default=7) == 4 * GB
    assert checkpoint_bytes("other", _nodes(), default=7) == 7


def test_unknown_node_is_treated_as_registry_only() -> None:
    ranked = rank("m", [WorkerView("w", "ghost", True)], [])
    assert ranked[0].tier == "registry"


def test_round_robin_rotates_over_free_workers_blind_to_locality() -> None:
    workers = [WorkerView(f"w{i}", f"n{i}", True) for i in range(3)]
    nodes = [NodeView("n2", dram={"m": GB})]  # locality the baseline ignores
    firsts = [round_robin("m", workers, nodes, turn)[0].worker_id for turn in range(1, 7)]
    assert firsts == ["w1", "w2", "w0", "w1", "w2", "w0"]
    order = round_robin("m", workers, nodes, 1)
    assert [e.worker_id for e in order] == ["w1", "w2", "w0"]
    assert order[1].tier == "dram"  # estimates are still computed, for the record


def test_round_robin_skips_busy_workers() -> None:
    workers = [
        WorkerView("w0", "n", True),
        WorkerView("w1", "n", False),
        WorkerView("w2", "n", True),
    ]
    assert [round_robin("m", workers, [], t)[0].worker_id for t in range(4)] == [
        "w0",
        "w2",
        "w0",
        "w2",
    ]
    assert round_robin("m", [WorkerView("w", "n", False)], [], 5) == []


def test_a_fixed_load_cost_applies_to_every_tier_alike() -> None:
    nodes = [
        NodeView("a", dram={"m": GB}, fixed_s=0.5),
        NodeView("b", ssd={"m": GB}, fixed_s=0.5),
    ]
    ranked = rank("m", [WorkerView("wa", "a", True), WorkerView("wb", "b", True)], nodes)
    assert [(e.worker_id, e.tier) for e in ranked] == [("wa", "dram"), ("wb", "ssd")]
    assert ranked[0].seconds == pytest.approx(0.5 + 1 / 8)
