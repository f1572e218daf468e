"""Load times from the tiers (bandwidth, FIFO links) and the LRU interplay of the tiers."""

from __future__ import annotations

import pytest

from benchmarks.simulator import storage
from benchmarks.simulator.cluster import GB, Channel, Hardware, Node, build_cluster
from benchmarks.simulator.systems import SYSTEMS

HW = Hardware(
    gpus=2,
    dram_bytes=int(30 * GB),
    ssd_bytes=int(40 * GB),
    dram_bw=20 * GB,
    ssd_bw=5 * GB,
    registry_bw=1 * GB,
    fixed_s=1.0,
)


class Events:
    def __init__(self) -> None:
        self.log: list[tuple[str, str, str]] = []

    def added(self, node: Node, tier: str, model: str) -> None:
        self.log.append(("added", tier, model))

    def evicted(self, node: Node, tier: str, model: str) -> None:
        self.log.append(("evicted", tier, model))


def node(system: str = "sllm") -> Node:
    s = SYSTEMS[system]
    return build_cluster(1, HW, dram_tier=s.dram_tier, ssd_cache=s.ssd_cache)[0]


def test_channel_moves_one_transfer_at_a_time_in_order() -> None:
    ch = Channel()
    assert ch.transfer(0.0, 10, 5.0) == 2.0
    assert ch.transfer(1.0, 10, 5.0) == 4.0  # waits for the first
    assert ch.transfer(10.0, 5, 5.0) == 11.0  # idle link: starts at once
    assert ch.busy_s == 5.0


def test_registry_load_is_fetch_then_promotion_then_dram_read() -> None:
    n, ev = node(), Events()
    tl = storage.load(n, "m", int(10 * GB), 0.0, SYSTEMS["sllm"], (), ev)
    assert tl.source == "registry"
    assert tl.data_s == pytest.approx(10 / 1 + 10 / 5 + 10 / 20)
    assert tl.fixed_s == 1.0
    assert tl.seconds == pytest.approx(13.5)
    assert ("added", "ssd", "m") in ev.log
    assert ("added", "dram", "m") in ev.log
    # Not visible to the scheduler until written.
    assert not n.holds("ssd", "m", 5.0)
    assert n.holds("ssd", "m", 10.0)
    assert not n.holds("dram", "m", 11.9)
    assert n.holds("dram", "m", 12.0)


def test_dram_hit_reads_at_dram_bandwidth_and_waits_for_a_copy_in_progress() -> None:
    n, ev = node(), Events()
    storage.load(n, "m", int(10 * GB), 0.0, SYSTEMS["sllm"], (), ev)
    late = storage.load(n, "m", int(10 * GB), 20.0, SYSTEMS["sllm"], (), ev)
    assert late.source == "dram"
    assert late.data_s == pytest.approx(0.5)
    early = storage.load(n, "m", int(10 * GB), 11.0, SYSTEMS["sllm"], (), ev)
    assert early.source == "dram"
    assert early.data_s == pytest.approx(1.0 + 0.5)  # the promotion ends at 12.0


def test_two_fetches_on_one_node_share_its_network_link() -> None:
    n, ev = node(), Events()
    a = storage.load(n, "a", int(5 * GB), 0.0, SYSTEMS["sllm"], (), ev)
    b = storage.load(n, "b", int(5 * GB), 0.0, SYSTEMS["sllm"], (), ev)
    assert a.data_s == pytest.approx(5 + 1 + 0.25)
    # b's fetch waits for a's (5 s), its promotion for a's promotion on the disk.
    assert b.data_s == pytest.approx(10 + 1 + 0.25)


def test_dram_lru_evicts_the_least_recently_used_copy() -> None:
    n, ev = node(), Events()
    for i, m in enumerate(("a", "b", "c")):
        storage.load(n, m, int(10 * GB), 100.0 * i, SYSTEMS["sllm"], (), ev)
    storage.load(n, "a", int(10 * GB), 300.0, SYSTEMS["sllm"], (), ev)  # a is newest now
    storage.load(n, "d", int(10 * GB), 400.0, SYSTEMS["sllm"], (), ev)
    assert n.dram is not None
    assert sorted(n.dram.entries) == ["a", "c", "d"]
    assert ("evicted", "dram", "b") in ev.log
    # The SSD tier (40 GB) still holds all four; b is now its least recently used.
    assert n.ssd is not None
    assert sorted(n.ssd.entries) == ["a", "b", "c", "d"]
    assert min(n.ssd.entries.values(), key=lambda e: e.last_used).model == "b"


def test_copies_of_models_in_use_are_never_evicted() -> None:
    n, ev = node(), Events()
    storage.load(n, "a", int(10 * GB), 0.0, SYSTEMS["sllm"], (), ev)
    storage.load(n, "b", int(10 * GB), 100.0, SYSTEMS["sllm"], (), ev)
    storage.load(n, "c", int(10 * GB), 200.0, SYSTEMS["sllm"], (), ev)
    tl = storage.load(n, "d", int(10 * GB), 300.0, SYSTEMS["sllm"], {"a", "b", "c"}, ev)
    # DRAM has no room (every copy pinned): d is read from the SSD, not promoted.
    assert n.dram is not None
    assert "d" not in n.dram.entries
    assert tl.data_s == pytest.approx(10 / 1 + 10 / 5)


def test_an_ssd_eviction_takes_the_dram_copy_too() -> None:
    n, ev = node(), Events()
    storage.load(n, "a", int(20 * GB), 0.0, SYSTEMS["sllm"], (), ev)
    storage.load(n, "b", int(20 * GB), 100.0, SYSTEMS["sllm"], (), ev)  # DRAM: a out
    storage.load(n, "c", int(20 * GB), 200.0, SYSTEMS["sllm"], (), ev)  # SSD: a out
    assert ("evicted", "ssd", "a") in ev.log
    assert n.ssd is not None
    assert sorted(n.ssd.entries) == ["b", "c"]


def test_baselines_fetch_every_time_and_load_at_their_loaders_speed() -> None:
    n, ev = node("ray_serve"), Events()
    eff = SYSTEMS["ray_serve"].loader_efficiency
    for t in (0.0, 100.0):
        tl = storage.load(n, "m", int(10 * GB), t, SYSTEMS["ray_serve"], (), ev)
        assert tl.source == "registry"
        assert tl.data_s == pytest.approx(10 / 1 + 10 / (5 * eff))
    assert ev.log == []
    kserve = storage.load(node("kserve"), "m", int(10 * GB), 0.0, SYSTEMS["kserve"], (), ev)
    assert kserve.fixed_s == pytest.approx(1.0 + SYSTEMS["kserve"].extra_start_s)


def test_ssd_cache_without_dram_tier_reads_the_cached_copy_from_disk() -> None:
    n, ev = node("ray_serve_cache"), Events()
    system = SYSTEMS["ray_serve_cache"]
    storage.load(n, "m", int(10 * GB), 0.0, system, (), ev)
    again = storage.load(n, "m", int(10 * GB), 100.0, system, (), ev)
    assert again.source == "ssd"
    assert again.data_s == pytest.approx(10 / (5 * system.loader_efficiency))


def test_prefetch_fills_ssd_and_dram_until_dram_is_full() -> None:
    n, ev = node(), Events()
    assert storage.prefetch(n, "a", int(20 * GB), ev)
    assert not storage.prefetch(n, "b", int(40 * GB), ev)  # larger than the DRAM tier
    assert n.holds("dram", "a", 0.0)
    assert n.holds("ssd", "a", 0.0)
