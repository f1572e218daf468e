"""The migrate / wait / elsewhere choice for a cold model (pure), on crafted snapshots."""

from __future__ import annotations

import pytest

from services.scheduler.migration_policy import (
    BusyWorker,
    Costs,
    FreeWorker,
    Running,
    choose,
    kv_cache_bytes,
    options,
    plan_migration,
)

# A small model on a CPU: recomputing a token is ~20x cheaper than decoding one.
COSTS = Costs(prefill_s_per_token=0.001, decode_s_per_token=0.02)


def _busy(*running: Running, startup_s: float = 0.2, model: str = "a") -> BusyWorker:
    return BusyWorker("w-busy", model, tuple(running), startup_s)


def test_rounds_shrink_the_gap_until_it_is_small() -> None:
    plan = plan_migration([Running("r", 2000, 500)], COSTS)
    # First pass: 2000 tokens x 1 ms + overhead = 2.02 s, the source made 101 tokens meanwhile;
    # each round recomputes the gap at 20x decode speed, so the gap collapses in a few rounds.
    assert plan.recompute_s == pytest.approx(2.02)
    assert 1 <= plan.rounds <= 3
    assert plan.final_gap_tokens <= COSTS.target_gap_tokens
    assert plan.pause_s < 0.1
    assert plan.migrate_s > plan.recompute_s


def test_longer_contexts_take_longer_but_pause_about_the_same() -> None:
    short = plan_migration([Running("r", 100, 500)], COSTS)
    long = plan_migration([Running("r", 8000, 500)], COSTS)
    assert long.migrate_s > 10 * short.migrate_s
    assert long.pause_s == pytest.approx(short.pause_s, abs=0.01)


def test_round_limit_stops_a_gap_that_does_not_shrink() -> None:
    slow = Costs(prefill_s_per_token=0.05, decode_s_per_token=0.02, max_rounds=3)
    plan = plan_migration([Running("r", 100, 10_000)], slow)  # recompute slower than decode
    assert plan.rounds == 3
    assert plan.final_gap_tokens > slow.target_gap_tokens


def test_migrating_frees_the_worker_that_holds_the_cold_model_in_dram() -> None:
    """The cold model is in DRAM on the busy worker's node (0.2 s) but only in the registry
    elsewhere (12 s); the running model loads fast on the free worker (0.1 s)."""
    busy = _busy(Running("r1", 300, 400))
    free = [FreeWorker("w-free", {"cold": 12.0, "a": 0.1})]
    best = choose([busy], free, "cold", {"a": COSTS})
    assert best is not None
    assert (best.kind, best.worker_id, best.destination, best.moved) == (
        "migrate",
        "w-busy",
        "w-free",
        ("r1",),
    )
    assert best.startup_s < 12.0
    assert best.pause_s <= COSTS.max_pause_s
    kinds = [o.kind for o in options([busy], free, "cold", {"a": COSTS})]
    assert kinds == ["migrate", "wait", "elsewhere"]  # wait: 400 tokens x 20 ms = 8 s + 0.2 s


def test_a_nearly_finished_generation_is_waited_for() -> None:
    busy = _busy(Running("r1", 300, 3))  # frees in 60 ms
    free = [FreeWorker("w-free", {"cold": 12.0, "a": 0.1})]
    best = choose([busy], free, "cold", {"a": COSTS})
    assert best is not None
    assert (best.kind, best.worker_id) == ("wait", "w-busy")


def test_a_free_worker_with_a_fast_copy_wins_without_disturbing_anyone() -> None:
    busy = _busy(Running("r1", 300, 400))
    free = [FreeWorker("w-free", {"cold": 0.15, "a": 0.1})]
    best = choose([busy], free, "cold", {"a": COSTS})
    assert best is not None
    assert (best.kind, best.worker_id) == ("elsewhere", "w-free")


def test_harm_bounds_rule_migration_out() -> None:
    busy = _busy(Running("r1", 300, 400), Running("r2", 300, 400))
    free = [FreeWorker("w-free", {"cold": 12.0, "a": 0.1})]
    strict_pause = Costs(prefill_s_per_token=0.001, decode_s_per_token=0.02, max_pause_s=0.001)
    few_moves = Costs(prefill_s_per_token=0.001, decode_s_per_token=0.02, max_moved=1)
    for costs in (strict_pause, few_moves):
        kinds = {o.kind for o in options([busy], free, "cold", {"a": costs})}
        assert "migrate" not in kinds


def test_no_destination_or_no_costs_means_no_migration() -> None:
    busy = _busy(Running("r1", 300, 400))
    nowhere = [FreeWorker("w-free", {"cold": 12.0})]  # cannot load "a"
    assert {o.kind for o in options([busy], nowhere, "cold", {"a": COSTS})} == {"wait", "elsewhere"}
    anywhere = [FreeWorker("w-free", {"cold": 12.0, "a": 0.1})]
    assert {o.kind for o in options([busy], anywhere, "cold", {})} == {"elsewhere"}
    assert choose([], [], "cold", {}) is None


def test_kv_cache_bytes_of_llama_3_8b() -> None:
    # 32 layers, 8 KV heads of 128, bf16: 128 KiB per token; 4096 tokens: 512 MiB.
    per_token = kv_cache_bytes(1, layers=32, kv_heads=8, head_dim=128, dtype_bytes=2)
    assert per_token == 128 * 1024
    assert kv_cache_bytes(4096, layers=32, kv_heads=8, head_dim=128, dtype_bytes=2) == 512 << 20
