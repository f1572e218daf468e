"""Calibration of startup estimates from crafted load samples."""

from __future__ import annotations

import random

import pytest

from services.scheduler.calibration import (
    Fit,
    LoadSample,
    fit,
    fixed_seconds,
    node_samples,
    per_node,
    relative_error,
    sample_of_load,
    samples_for,
)
from services.scheduler.placement import NodeView, WorkerView, estimate, load_seconds, rank

pytestmark = pytest.mark.unit

GB = 1_000_000_000
MB = 1_000_000


def test_sizes_that_differ_give_overhead_and_bandwidth() -> None:
    # 0.2 s per load plus 1 GB/s.
    samples = [LoadSample(b, 0.2 + b / GB) for b in (100 * MB, 400 * MB, 1 * GB, 2 * GB)]
    f = fit(samples, base_s_per_byte=1 / (8 * GB))
    assert f is not None
    assert f.overhead_s == pytest.approx(0.2)
    assert f.bytes_per_s == pytest.approx(GB)
    assert f.seconds(3 * GB, base_s_per_byte=1.0) == pytest.approx(3.2)


def test_one_wild_load_moves_the_fit_little() -> None:
    samples = [LoadSample(b, 0.2 + b / GB) for b in (100 * MB, 400 * MB, 1 * GB, 2 * GB)]
    samples.append(LoadSample(1 * GB, 30.0))  # a load that waited behind a busy disk
    f = fit(samples, base_s_per_byte=0.0)
    assert f is not None
    assert f.seconds(1 * GB, 0.0) == pytest.approx(1.2, rel=0.15)


def test_one_size_only_keeps_the_measured_bandwidth_and_learns_the_overhead() -> None:
    # Storage measured 1 GB/s; the loads took 0.5 s more than that says.
    samples = [LoadSample(GB, 1.5), LoadSample(GB, 1.4), LoadSample(GB, 1.6)]
    f = fit(samples, base_s_per_byte=1 / GB)
    assert f == Fit(pytest.approx(0.5), None, 3)  # type: ignore[arg-type]
    assert f is not None
    assert f.seconds(2 * GB, 1 / GB) == pytest.approx(2.5)


def test_loads_faster_than_the_measured_bandwidth_replace_it() -> None:
    samples = [LoadSample(GB, 0.25), LoadSample(GB, 0.25)]
    f = fit(samples, base_s_per_byte=1 / GB)  # storage said 1 GB/s; loads did 4 GB/s
    assert f is not None
    assert f.overhead_s == 0.0
    assert f.bytes_per_s == pytest.approx(4 * GB)


def test_no_usable_sample_is_no_fit() -> None:
    assert fit([], 1.0) is None
    assert fit([LoadSample(0, 1.0), LoadSample(GB, 0.0), LoadSample(GB, float("nan"))], 1.0) is None


def test_the_fixed_part_is_the_median() -> None:
    samples = [LoadSample(GB, 1.0, f) for f in (0.3, 0.4, 9.0)]
    assert fixed_seconds(samples) == pytest.approx(0.4)
    assert fixed_seconds([]) == 0.0


def test_a_node_without_samples_borrows_the_clusters() -> None:
    a, b = LoadSample(GB, 1.0), LoadSample(GB, 2.0)
    recorded = {("n1", "ssd"): [a], ("n2", "ssd"): [b], ("n2", "dram"): [b]}
    assert samples_for(recorded, "n1", "ssd") == [a]
    assert samples_for(recorded, "n3", "ssd") == [a, b]
    assert samples_for(recorded, "n1", "dram") == [b]
    assert samples_for(recorded, "n1", "registry") == []
    assert node_samples(recorded, "n1") == [a]
    assert sorted(node_samples(recorded, "n3")) == sorted([a, b, b])


def test_a_load_report_becomes_a_sample_without_the_one_off_start_up() -> None:
    s = sample_of_load(
        GB, seconds=6.0, one_off_s=4.0, phases={"ensure": 0.5, "startup": 4.0, "read": 1.0}
    )
    assert s == LoadSample(GB, 1.5, pytest.approx(0.5))  # type: ignore[arg-type]
    assert sample_of_load(0, 1.0, 0.0, {"read": 1.0}) is None
    assert sample_of_load(GB, 1.0, 0.0, {}) is None


def test_relative_error_is_positive_when_pessimistic() -> None:
    assert relative_error(3.0, 2.0) == pytest.approx(0.5)
    assert relative_error(1.0, 2.0) == pytest.approx(-0.5)
    assert relative_error(1.0, 0.0) > 0


def test_estimate_prefers_calibrated_over_measured_over_prior() -> None:
    w = WorkerView("w", "n", True)
    prior = estimate(w, NodeView("n", ssd={"m": GB}), "m", GB)
    assert prior.seconds == pytest.approx(1 / 1.5)  # the 1.5 GB/s prior
    measured = NodeView("n", ssd={"m": GB}, bandwidth={"ssd": 2 * GB})
    assert estimate(w, measured, "m", GB).seconds == pytest.approx(0.5)
    loads = [LoadSample(b, 0.1 + b / (0.5 * GB)) for b in (GB // 4, GB, 2 * GB)]
    calibrated = NodeView(
        "n", ssd={"m": GB}, bandwidth={"ssd": 2 * GB}, loads={"ssd": loads}, fixed_s=0.3
    )
    assert estimate(w, calibrated, "m", GB).seconds == pytest.approx(0.3 + 0.1 + 2.0)


def test_calibration_can_overturn_storage_measurements() -> None:
    """Storage says node a's DRAM tier is fast, but real loads from it were slow (say the
    node's memory is oversubscribed): node b's SSD wins."""
    slow = [LoadSample(GB, 4.0), LoadSample(2 * GB, 8.0)]
    nodes = [
        NodeView("a", dram={"m": GB}, bandwidth={"dram": 8 * GB}, loads={"dram": slow}),
        NodeView("b", ssd={"m": GB}, bandwidth={"ssd": 2 * GB}),
    ]
    ranked = rank("m", [WorkerView("wa", "a", True), WorkerView("wb", "b", True)], nodes)
    assert [e.worker_id for e in ranked] == ["wb", "wa"]


def test_calibrating_one_tier_never_makes_the_uncalibrated_ones_look_cheap() -> None:
    """Only DRAM loads were seen (each with 50 ms of storage round trip and file opening):
    a node holding the model in DRAM still beats one that must fetch it from the registry."""
    dram = {"dram": [LoadSample(2 * MB, 0.05, 0.3)]}
    nodes = [
        NodeView("a", loads=dram, fixed_s=0.3),
        NodeView("b", dram={"m": 2 * MB}, loads=dram, fixed_s=0.3),
    ]
    ranked = rank("m", [WorkerView("wa", "a", True), WorkerView("wb", "b", True)], nodes)
    assert [(e.worker_id, e.tier) for e in ranked] == [("wb", "dram"), ("wa", "registry")]
    ssd = load_seconds(nodes[0], "ssd", 2 * MB)
    assert ssd == pytest.approx(0.05 + 2 * MB / 1.5e9, rel=0.05)  # the overhead, borrowed


def test_a_registry_load_is_never_estimated_below_the_ssd_load_it_ends_with() -> None:
    node = NodeView(
        "n",
        loads={
            "ssd": [LoadSample(GB, 2.0)],
            "registry": [LoadSample(GB, 1.0)],  # an odd, fast registry load
        },
    )
    assert load_seconds(node, "registry", GB) >= load_seconds(node, "ssd", GB)
    uncalibrated = NodeView("n", loads={"ssd": [LoadSample(GB, 2.0)]})
    assert load_seconds(uncalibrated, "registry", GB) == pytest.approx(2.0 + 2.0)  # + 0.5 GB/s


def test_per_node_is_samples_for_and_node_samples_of_each_node() -> None:
    rng = random.Random(7)
    tiers = ("dram", "ssd", "registry")
    recorded = {
        (f"n{n}", t): [
            LoadSample(rng.randrange(1, 10**9), rng.random(), rng.random())
            for _ in range(rng.randrange(1, 5))
        ]
        for n in range(6)
        for t in tiers
        if rng.random() < 0.6
    }
    nodes = [f"n{n}" for n in range(8)]  # n6, n7: no samples of their own
    got = per_node(recorded, nodes, tiers)
    for n in nodes:
        samples, fixed = got[n]
        assert samples == {t: samples_for(recorded, n, t) for t in tiers}
        assert fixed == fixed_seconds(node_samples(recorded, n))
