"""Whole simulations on tiny clusters: queueing, keep-alive expiry, locality, determinism."""

from __future__ import annotations

import math

import pytest

from benchmarks.simulator import Arrival, Scenario, simulate
from benchmarks.simulator.cluster import GB, Hardware
from benchmarks.simulator.llms import BY_LABEL, SimModel
from benchmarks.simulator.serving import Request, service_times
from benchmarks.simulator.workloads import gamma_zipf
from services.scheduler.autoscaler import Scaling

HW = Hardware(
    gpus=1,
    dram_bytes=int(100 * GB),
    ssd_bytes=int(400 * GB),
    dram_bw=20 * GB,
    ssd_bw=5 * GB,
    registry_bw=1 * GB,
    fixed_s=1.0,
)
SMALL = SimModel("small", BY_LABEL["3b"])
SCALING = Scaling(min_instances=0, max_instances=1, target_concurrency=8, keep_alive_s=30.0)


def scenario(arrivals: list[Arrival], system: str = "sllm", **kw: object) -> Scenario:
    base: dict[str, object] = dict(
        nodes=1, hardware=HW, models=[SMALL], arrivals=arrivals, system=system, scaling=SCALING
    )
    base.update(kw)
    return Scenario(**base)  # type: ignore[arg-type]


def test_service_time_is_prefill_then_one_decode_step_per_further_token() -> None:
    req = Request(0, SMALL, 0.0, prompt_tokens=100, output_tokens=11)
    first, last = service_times(req, 5.0)
    c = SMALL.cls
    assert first == pytest.approx(5.0 + 100 * c.prefill_s_per_token)
    assert last == pytest.approx(first + 10 * c.decode_s_per_token)


def test_a_cold_request_waits_for_the_load_and_the_prefill() -> None:
    res = simulate(scenario([Arrival(10.0, "small", 100, 10)], system="ray_serve"))
    (cold,) = res.cold_starts
    assert cold.source_tier == "registry"
    assert cold.at == 10.0
    (req,) = res.requests
    prefill = 100 * SMALL.cls.prefill_s_per_token
    assert req.ttft == pytest.approx(cold.actual_s + prefill)
    assert req.cold


def test_requests_beyond_the_slots_queue_at_the_instance() -> None:
    arrivals = [Arrival(0.0, "small", 100, 50) for _ in range(3)]
    res = simulate(scenario(arrivals, slots=1))
    ttfts = sorted(r.ttft for r in res.requests)
    _, service = service_times(Request(0, SMALL, 0.0, 100, 50), 0.0)
    # The second waits for the first's whole generation, the third for both.
    assert ttfts[1] - ttfts[0] == pytest.approx(service)
    assert ttfts[2] - ttfts[1] == pytest.approx(service)


def test_an_idle_instance_stops_after_its_keep_alive_and_the_next_start_hits_dram() -> None:
    res = simulate(scenario([Arrival(0.0, "small", 10, 1), Arrival(100.0, "small", 10, 1)]))
    first, second = res.cold_starts
    assert first.source_tier == "dram"  # prefetched on deploy
    assert second.source_tier == "dram"
    assert second.actual_s == pytest.approx(SMALL.bytes / HW.dram_bw + HW.fixed_s)
    # GPU time: load + service, then 30 s of keep-alive, twice (the run ends with the last
    # request, so the second keep-alive is cut off).
    done_first = res.requests[0].done_at
    assert res.gpu_seconds == pytest.approx((done_first + 30.0) + (res.requests[1].done_at - 100.0))


def test_a_request_within_the_keep_alive_is_warm() -> None:
    res = simulate(scenario([Arrival(0.0, "small", 10, 1), Arrival(20.0, "small", 10, 1)]))
    assert len(res.cold_starts) == 1
    warm = res.requests[1]
    assert not warm.cold
    assert warm.ttft == pytest.approx(10 * SMALL.cls.prefill_s_per_token)


def test_startup_time_placement_prefers_the_node_holding_the_model() -> None:
    big = SimModel("big", BY_LABEL["13b"])
    models = [SMALL, big]
    # Round one: both models start (sllm prefetched each to one node's DRAM); big stops after
    # its keep-alive; round two: its cold start goes back to a node holding it.
    arrivals = [Arrival(0.0, "big", 10, 1), Arrival(200.0, "big", 10, 1)]
    for system in ("sllm", "ray_serve_cache"):
        res = simulate(scenario(arrivals, system=system, nodes=4, models=models))
        first, second = res.cold_starts
        if system == "sllm":
            assert second.node_id == first.node_id
            assert second.source_tier == second.estimated_tier == "dram"
        else:
            assert second.node_id != first.node_id  # round-robin moved on
            assert second.source_tier == "registry"


def test_estimates_are_calibrated_by_finished_loads() -> None:
    arrivals = [Arrival(200.0 * k, "small", 10, 1) for k in range(4)]
    res = simulate(scenario(arrivals))
    errors = [abs(c.estimated_s - c.actual_s) for c in res.cold_starts]
    assert errors[0] > 0.5  # before any load: priors and no fixed part
    assert errors[-1] < 1e-6  # after: the simulated loads fit a line exactly


def test_same_scenario_same_result() -> None:
    models = [SimModel(f"m{i}", BY_LABEL["3b" if i % 2 else "7b"]) for i in range(8)]
    arrivals = gamma_zipf(models, duration_s=600, rate=1.0, seed=3)
    sc = scenario(arrivals, nodes=2, models=models, hardware=Hardware(gpus=2))
    one, two = simulate(sc), simulate(sc)
    assert one.cold_starts == two.cold_starts
    assert one.requests == two.requests
    assert not any(math.isnan(r.ttft) for r in one.requests)
    assert len(one.requests) == len(arrivals)
